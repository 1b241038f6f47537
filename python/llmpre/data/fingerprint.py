"""A content hash of exactly what a sampler feeds the model.

Two pipelines that print the same fingerprint for the same arguments train on
the same token sequences in the same order.
"""

from __future__ import annotations

import hashlib

import numpy as np

from llmpre.data.blend import BlendedDataset, build_datasets
from llmpre.data.gpt_dataset import SPLIT_NAMES

CHUNK = 4096  # samples hashed per gather


def hash_samples(ds, count: int) -> str:
    """sha256 over samples ``0..count-1`` in dataset order, each as little-endian int64."""
    h = hashlib.sha256()
    for start in range(0, count, CHUNK):
        block = ds.gather(np.arange(start, min(count, start + CHUNK), dtype=np.int64))
        h.update(block.astype("<i8", copy=False).tobytes())
    return h.hexdigest()


def fingerprint(data: str, split: str, seq_length: int, seed: int, num_samples,
                data_cache: str | None = None, use_cache: bool = True) -> dict:
    """``data`` is a prefix, a directory of corpora or ``"w1 p1 w2 p2 ..."``."""
    datasets = build_datasets(data, split, num_samples, seq_length, seed,
                              data_cache=data_cache, use_cache=use_cache)
    out = {}
    for name in SPLIT_NAMES:
        ds = datasets[name]
        if ds is None:
            continue
        entry = {"num_epochs": ds.num_epochs}
        if not isinstance(ds, BlendedDataset):
            entry["separate_last_epoch"] = ds.separate_last_epoch
        entry["len"] = len(ds)
        entry["sha256_all"] = hash_samples(ds, len(ds))
        entry["sha256_requested"] = hash_samples(ds, min(ds.num_samples, len(ds)))
        if isinstance(ds, BlendedDataset):
            entry["weights"] = [float(w) for w in ds.weights]
            entry["datasets"] = [
                {"prefix": c.prefix, "num_samples": c.num_samples, "len": len(c),
                 "num_epochs": c.num_epochs, "separate_last_epoch": c.separate_last_epoch}
                for c in ds.datasets
            ]
            entry["samples_per_dataset"] = np.bincount(
                np.asarray(ds.dataset_index, dtype=np.int64), minlength=len(ds.datasets)).tolist()
        out[name] = entry
    return out
