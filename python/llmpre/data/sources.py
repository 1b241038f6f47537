"""What ``--data`` / ``input_dir`` names: one corpus, or several with weights.

PaddleNLP's rules (``run_pretrain.get_train_data_file``), which llmpre keeps:

* a string with whitespace is a weighted list ``"w1 prefix1 w2 prefix2 ..."``
  used as given (the weights are normalised later; the prefixes are kept
  verbatim, since they are hashed into the cache file names);
* otherwise a directory stands for every corpus in it (files whose names hold
  ``.idx`` or ``_idx.npz``, that suffix removed); with more than one, each gets
  weight 1.0. PaddleNLP takes them in ``os.listdir`` order, which depends on
  the filesystem; llmpre sorts them by name so every node agrees;
* anything else is a single corpus prefix.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

from llmpre._core import DataError
from llmpre.data.corpus import corpus_exists, open_corpus

__all__ = ["DataSpec", "parse_data_spec"]


@dataclass(frozen=True)
class DataSpec:
    """Prefixes and, for a blend, their weights (as written, not normalised)."""

    prefixes: tuple[str, ...]
    weights: Optional[tuple[float, ...]] = None  # None: a single corpus, no blending

    @property
    def is_blend(self) -> bool:
        return self.weights is not None

    def describe(self) -> str:
        if not self.is_blend:
            return self.prefixes[0]
        return " ".join(f"{w:g} {p}" for w, p in zip(self.weights, self.prefixes))


def _directory_prefixes(directory: str) -> list[str]:
    names = set()
    for name in os.listdir(directory):
        if not os.path.isfile(os.path.join(directory, name)):
            continue
        for suffix in ("_idx.npz", ".idx"):
            if suffix in name:
                names.add(name.replace(suffix, ""))
                break
    return [os.path.join(directory, n) for n in sorted(names)]


def parse_data_spec(spec: str, what: str = "--data") -> DataSpec:
    """Parse a data argument; errors name ``what`` and say how to write it."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"{what}: empty; give a corpus prefix, a directory of corpora, or "
                        "'WEIGHT PREFIX WEIGHT PREFIX ...'")
    tokens = spec.split()
    if len(tokens) > 1:
        if len(tokens) % 2:
            raise DataError(f"{what} '{spec}': a weighted list needs WEIGHT PREFIX pairs, got "
                            f"{len(tokens)} words; write it like '0.3 data/a 0.7 data/b'")
        weights, prefixes = [], []
        for w, p in zip(tokens[0::2], tokens[1::2]):
            try:
                value = float(w)
            except ValueError:
                raise DataError(f"{what} '{spec}': '{w}' is not a weight (a number); write it "
                                "like '0.3 data/a 0.7 data/b'") from None
            if not math.isfinite(value) or value < 0:
                raise DataError(f"{what} '{spec}': weight {w} must be a finite number >= 0")
            weights.append(value)
            prefixes.append(p.strip())
        if sum(weights) <= 0:
            raise DataError(f"{what} '{spec}': the weights sum to 0; give at least one positive weight")
        return DataSpec(tuple(prefixes), tuple(weights))
    path = tokens[0]
    if os.path.isdir(path) and not corpus_exists(path):
        prefixes = _directory_prefixes(path)
        if not prefixes:
            raise DataError(f"{what} '{path}': the directory holds no .idx or _idx.npz corpus; give "
                            "a corpus prefix or a directory holding corpora")
        if len(prefixes) == 1:
            return DataSpec((prefixes[0],))
        return DataSpec(tuple(prefixes), tuple(1.0 for _ in prefixes))
    if not corpus_exists(path):
        open_corpus(path)  # raises the DataError that names the missing files
    return DataSpec((path,))
