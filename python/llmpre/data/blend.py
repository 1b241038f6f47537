"""Several corpora mixed by weight: PaddleNLP's ``BlendableDataset``.

For a weighted list ``w1 p1 w2 p2 ...`` and ``n`` samples requested per split
(PaddleNLP's current ``causal_dataset.build_train_valid_test_datasets``):

* weights are normalised (``w / sum(w)``), and corpus ``d`` is sampled as its
  own :class:`GPTDataset` with ``ceil(n * w_d * 1.005) + 20`` samples;
* the blend has exactly ``n`` samples; sample ``i`` is sample
  ``dataset_sample_index[i]`` of corpus ``dataset_index[i]``, chosen by the
  greedy max-error rule (``llmpre._core.build_blend_index``, int16 indices as
  ``fast_dataindex`` > 0.1.1 writes them);
* the two arrays are cached as ``<md5>_index.npy`` and
  ``<md5>_sample_index.npy`` (plus ``<md5>.dsc``), the md5 of PaddleNLP's
  description text (the children's descriptions, the normalised weights as
  numpy prints them, the size). PaddleNLP caches them only in ``data_cache``;
  llmpre uses the single-corpus lookup (``index-cache`` beside the first
  corpus, then ``data_cache``, written to the last), so with ``data_cache``
  set both tools share the files.
"""

from __future__ import annotations

import hashlib
import math
from typing import Optional, Sequence, Union

import numpy as np

from llmpre import _core
from llmpre._core import DataError
from llmpre.data.corpus import open_corpus
from llmpre.data.gpt_dataset import SPLIT_NAMES, GPTDataset, build_gpt_datasets
from llmpre.data.index_cache import BuildPolicy, IndexCache
from llmpre.data.sources import DataSpec, parse_data_spec

__all__ = ["BlendedDataset", "blend_sample_counts", "build_datasets", "normalized_weights"]

BLEND_SUFFIXES = {"desc": ".dsc", "index": "_index.npy", "sample_index": "_sample_index.npy"}


def normalized_weights(weights: Sequence[float]) -> list[float]:
    """PaddleNLP's ``get_datasets_weights_and_num_samples`` normalisation."""
    total = 0.0
    for w in weights:
        total += float(w)
    if not total > 0.0:
        raise DataError(f"blend weights {list(weights)} sum to {total}; give a positive weight")
    return [float(w) / total for w in weights]


def blend_sample_counts(weights: Sequence[float], num_samples: Sequence[int]) -> list[list[int]]:
    """Samples each corpus is asked for: ``ceil(n * w * 1.005) + 20`` per split."""
    return [[int(math.ceil(n * w * 1.005)) + 20 for n in num_samples] for w in weights]


def blend_desc(datasets: Sequence[GPTDataset], weights: np.ndarray, size: int) -> str:
    text = "Blendable dataset\n\nDatasets:\n"
    for ds in datasets:
        text += ds.desc + "\n\n"
    return text + f"Weights: {weights}\nSize: {size}\n"


class BlendedDataset:
    """``size`` samples drawn from ``datasets`` in proportion to ``weights``."""

    def __init__(self, datasets: Sequence[GPTDataset], weights: Sequence[float], size: int,
                 cache: Optional[IndexCache] = None, use_cache: bool = True):
        if len(datasets) != len(weights) or not datasets:
            raise DataError(f"a blend needs one weight per dataset, got {len(datasets)} datasets "
                            f"and {len(weights)} weights")
        self.datasets = list(datasets)
        self.size = int(size)
        w = np.array(weights, dtype=np.float64)  # PaddleNLP normalises a second time here
        total = np.sum(w)
        if not total > 0.0:
            raise DataError(f"blend weights {list(weights)} sum to {total}")
        w /= total
        self.weights = w
        self.desc = blend_desc(self.datasets, w, self.size)
        self.desc_hash = hashlib.md5(self.desc.encode("utf-8")).hexdigest()
        self.name = self.datasets[0].name
        self.cache_files: Optional[dict[str, str]] = None
        self.loaded_from_cache = False

        def build() -> dict[str, np.ndarray]:
            b = _core.build_blend_index(w, self.size)
            return {"index": b["dataset_index"], "sample_index": b["dataset_sample_index"]}

        if not use_cache or self.size == 0:
            arrays = build()
        else:
            cache = cache or IndexCache()
            what = f"the {self.name} blend of {len(self.datasets)} corpora"
            self.cache_files, arrays = cache.obtain(self.datasets[0].prefix, self.desc_hash,
                                                    BLEND_SUFFIXES, self.desc, build, what)
        if arrays is None:
            arrays = self._load(self.cache_files)
            self.loaded_from_cache = True
        self.dataset_index = arrays["index"]
        self.dataset_sample_index = arrays["sample_index"]
        self._check()

    def _load(self, files: dict[str, str]) -> dict[str, np.ndarray]:
        try:
            index = np.load(files["index"], mmap_mode="r", allow_pickle=True)
            sample_index = np.load(files["sample_index"], mmap_mode="r", allow_pickle=True)
        except Exception as e:
            raise DataError(f"blend cache {files['desc']}: unreadable ({e}); delete the "
                            f"{self.desc_hash}* files and run again") from None
        if (index.shape != (self.size,) or sample_index.shape != (self.size,)
                or index.dtype not in (np.int16, np.uint8) or sample_index.dtype != np.int64):
            raise DataError(f"blend cache {files['desc']}: arrays {index.dtype}{index.shape} and "
                            f"{sample_index.dtype}{sample_index.shape} are not int16/uint8 and int64 "
                            f"of {self.size} samples; delete the {self.desc_hash}* files")
        return {"index": index, "sample_index": sample_index}

    def _check(self) -> None:
        """Every blended sample must exist in its corpus (PaddleNLP's bound check)."""
        if self.size == 0:
            return
        di = np.asarray(self.dataset_index)
        si = np.asarray(self.dataset_sample_index)
        if int(di.min()) < 0 or int(di.max()) >= len(self.datasets):
            raise DataError(f"blend index names dataset {int(di.max())} of {len(self.datasets)}; "
                            "the blend cache does not belong to this data, delete it")
        for d, ds in enumerate(self.datasets):
            mask = di == d
            if mask.any() and int(si[mask].max()) >= len(ds):
                raise DataError(f"the blend needs sample {int(si[mask].max())} of {ds.prefix} "
                                f"({ds.name}), which has {len(ds)}; the blend cache does not "
                                "belong to this data, delete it")

    @property
    def num_epochs(self) -> int:
        return max(ds.num_epochs for ds in self.datasets)

    @property
    def num_samples(self) -> int:
        return self.size

    def __len__(self) -> int:
        return self.size

    def gather(self, indices) -> np.ndarray:
        """Samples at ``indices`` as int64 ``[len(indices), seq_length + 1]``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            raise IndexError(f"sample index outside the blend of {self.size} samples")
        seq = self.datasets[0].seq_length
        out = np.empty((idx.size, seq + 1), dtype=np.int64)
        di = np.asarray(self.dataset_index[idx], dtype=np.int64)
        si = np.asarray(self.dataset_sample_index[idx], dtype=np.int64)
        for d in np.unique(di):
            mask = di == d
            out[mask] = self.datasets[int(d)].gather(si[mask])
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self)
        return self.gather([i])[0]

    def dataset_of(self, indices) -> np.ndarray:
        """Which corpus each sample comes from (PaddleNLP's ``dataset_idx``)."""
        return np.asarray(self.dataset_index[np.asarray(indices, dtype=np.int64)], dtype=np.int64)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "len": len(self),
            "num_samples": self.size,
            "weights": [float(x) for x in self.weights],
            "datasets": [ds.summary() | {"prefix": ds.prefix} for ds in self.datasets],
        }


Dataset = Union[GPTDataset, BlendedDataset]


def build_datasets(spec: Union[str, DataSpec], split: str, num_samples, seq_length: int,
                   seed: int, data_cache: Optional[str] = None, use_cache: bool = True,
                   share_folder: bool = False, policy: Optional[BuildPolicy] = None,
                   threads: int = 0, corpora: Optional[dict] = None) -> dict[str, Optional[Dataset]]:
    """train/valid/test datasets for a data argument: one corpus or a weighted blend.

    ``corpora`` maps prefixes to already opened corpora (they are opened here
    otherwise)."""
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    policy = policy or BuildPolicy(share_folder=share_folder)
    corpora = corpora or {}

    def corpus_for(prefix: str):
        return corpora.get(prefix) or open_corpus(prefix)

    if not spec.is_blend:
        prefix = spec.prefixes[0]
        return build_gpt_datasets(prefix, split, num_samples, seq_length, seed,
                                  data_cache=data_cache, use_cache=use_cache,
                                  corpus=corpus_for(prefix), policy=policy, threads=threads)
    num_samples = [int(n) for n in num_samples]
    if len(num_samples) != 3 or any(n < 0 for n in num_samples):
        raise DataError(f"num_samples must be three non-negative counts, got {num_samples}")
    weights = normalized_weights(spec.weights)
    counts = blend_sample_counts(weights, num_samples)
    per_corpus = [
        build_gpt_datasets(prefix, split, counts[d], seq_length, seed, data_cache=data_cache,
                           use_cache=use_cache, corpus=corpus_for(prefix), policy=policy,
                           threads=threads)
        for d, prefix in enumerate(spec.prefixes)
    ]
    cache = IndexCache(data_cache, policy)
    out: dict[str, Optional[Dataset]] = {}
    for i, name in enumerate(SPLIT_NAMES):
        parts = [p[name] for p in per_corpus]
        present = [p is not None for p in parts]
        if not any(present):
            out[name] = None
            continue
        if not all(present):
            empty = [spec.prefixes[d] for d, ok in enumerate(present) if not ok]
            raise DataError(f"split '{split}' leaves the {name} split empty in {', '.join(empty)} "
                            "but not in the other corpora, so they cannot be blended; use a split "
                            "that gives every corpus at least one item there")
        out[name] = BlendedDataset(parts, weights, num_samples[i], cache, use_cache=use_cache)
    return out
