"""Open a tokenized corpus by prefix, in either PaddleNLP layout.

- ``PREFIX.bin`` + ``PREFIX.idx``: the Megatron/PaddleNLP mmap format.
- ``PREFIX_ids.npy`` + ``PREFIX_idx.npz`` (keys ``lens``, ``docs``): the legacy
  layout of PaddleNLP's early GPT data.

Both become a :class:`llmpre._core.Corpus`; everything above this module sees
one type. PaddleNLP checks the legacy layout first, and so do we.
"""

from __future__ import annotations

import os

import numpy as np

from llmpre import _core
from llmpre._core import DataError

__all__ = ["DataError", "open_corpus", "corpus_exists", "corpus_files", "require_tokens"]


def _legacy_files(prefix: str) -> tuple[str, str]:
    return prefix + "_ids.npy", prefix + "_idx.npz"


def corpus_files(prefix: str) -> list[str]:
    """The files that make up the corpus at ``prefix`` (legacy layout first)."""
    ids, idx = _legacy_files(prefix)
    if os.path.exists(ids) and os.path.exists(idx):
        return [ids, idx]
    return [prefix + ".bin", prefix + ".idx"]


def corpus_exists(prefix: str) -> bool:
    return all(os.path.exists(f) for f in corpus_files(prefix))


def _open_legacy(prefix: str) -> _core.Corpus:
    ids_path, idx_path = _legacy_files(prefix)
    try:
        ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy raises several types for bad files
        raise DataError(f"{ids_path}: not a readable .npy token array ({e})") from None
    try:
        with np.load(idx_path, allow_pickle=False) as z:
            missing = {"lens", "docs"} - set(z.files)
            if missing:
                raise DataError(
                    f"{idx_path}: missing key(s) {sorted(missing)}; a legacy index holds "
                    "'lens' (tokens per document) and 'docs' (document starts)"
                )
            lens = np.ascontiguousarray(z["lens"], dtype=np.int32)
            docs = np.ascontiguousarray(z["docs"], dtype=np.int64)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{idx_path}: not a readable .npz index ({e})") from None
    if ids.ndim != 1:
        raise DataError(f"{ids_path}: token array must be 1-D, got shape {ids.shape}")
    offsets = np.zeros(len(lens), dtype=np.int64)
    if len(lens) > 1:
        np.cumsum(lens[:-1], dtype=np.int64, out=offsets[1:])
    return _core.Corpus.from_arrays(
        np.ascontiguousarray(ids), lens, offsets, docs, f"{ids_path} + {idx_path}"
    )


def open_corpus(prefix: str) -> _core.Corpus:
    """Open the corpus at ``prefix`` or raise :class:`DataError` naming the files."""
    prefix = os.fspath(prefix)
    for suffix in (".bin", ".idx", "_ids.npy", "_idx.npz"):
        if prefix.endswith(suffix) and not corpus_exists(prefix):
            raise DataError(
                f"{prefix}: give the data PREFIX without '{suffix}' "
                f"(e.g. {prefix[: -len(suffix)]})"
            )
    ids, idx = _legacy_files(prefix)
    if os.path.exists(ids) and os.path.exists(idx):
        return _open_legacy(prefix)
    if not (os.path.exists(prefix + ".bin") and os.path.exists(prefix + ".idx")):
        have = [f for f in (prefix + ".bin", prefix + ".idx", ids, idx) if os.path.exists(f)]
        hint = f" (found only {', '.join(have)})" if have else ""
        raise DataError(
            f"{prefix}: no corpus here: need {prefix}.bin + {prefix}.idx or "
            f"{ids} + {idx}{hint}; check --data / input_dir"
        )
    return _core.Corpus.open_mmap(prefix)


def require_tokens(prefix: str, corpus: _core.Corpus) -> None:
    """Refuse a corpus with nothing to sample: 0 documents, or documents of 0 tokens.

    Without this, an empty corpus surfaces as an empty train split and the
    message blames the split."""
    if corpus.num_docs == 0:
        what = "has 0 documents"
    elif corpus.num_tokens == 0:
        what = f"has {corpus.num_docs} documents but 0 tokens"
    else:
        return
    files = " + ".join(corpus_files(os.fspath(prefix)))
    raise DataError(
        f"corpus {prefix} ({files}) {what}; nothing to train on or sample: re-run "
        "`llmpre data preprocess` on input that has text under --json-key, or point "
        "--data / input_dir at another corpus"
    )
