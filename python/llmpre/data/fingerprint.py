"""A content hash of exactly what a sampler feeds the model.

Two pipelines that print the same fingerprint for the same arguments train on
the same token sequences in the same order.
"""

from __future__ import annotations

import hashlib

import numpy as np

from llmpre.data.gpt_dataset import SPLIT_NAMES, GPTDataset, build_gpt_datasets

CHUNK = 4096  # samples hashed per gather


def hash_samples(ds: GPTDataset, count: int) -> str:
    """sha256 over samples ``0..count-1`` in dataset order, each as little-endian int64."""
    h = hashlib.sha256()
    for start in range(0, count, CHUNK):
        block = ds.gather(np.arange(start, min(count, start + CHUNK), dtype=np.int64))
        h.update(block.astype("<i8", copy=False).tobytes())
    return h.hexdigest()


def fingerprint(prefix: str, split: str, seq_length: int, seed: int, num_samples,
                data_cache: str | None = None, use_cache: bool = True) -> dict:
    datasets = build_gpt_datasets(prefix, split, num_samples, seq_length, seed,
                                  data_cache=data_cache, use_cache=use_cache)
    out = {}
    for name in SPLIT_NAMES:
        ds = datasets[name]
        if ds is None:
            continue
        out[name] = {
            "num_epochs": ds.num_epochs,
            "separate_last_epoch": ds.separate_last_epoch,
            "len": len(ds),
            "sha256_all": hash_samples(ds, len(ds)),
            "sha256_requested": hash_samples(ds, min(ds.num_samples, len(ds))),
        }
    return out
