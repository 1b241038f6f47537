"""PaddleNLP's index build, run in a separate benchmark venv (never imported by llmpre).

Usage: python paddlenlp_path.py PREFIX NUM_SAMPLES SEQ_LENGTH SEED OUT_DIR

Reproduces the calls ``paddlenlp.data.causal_dataset._build_index_mappings``
makes for one split covering the whole corpus, without writing the cache:
``np.sum(sizes[documents])`` for the tokens per epoch, the epoch loop, the
separate-last-epoch rule, ``np.mgrid`` tiling + ``astype(int32)`` +
``RandomState.shuffle`` for doc_idx, ``fast_dataindex.helpers.build_sample_idx``
for sample_idx and ``arange`` + ``shuffle`` (+ ``concatenate``) for
shuffle_idx. Sizes are read the way ``MMapIndexedDataset`` reads them: an
``np.memmap`` view of the ``.idx`` file. Prints one JSON line of timings and
saves the three arrays to OUT_DIR for the caller to compare.
"""

import json
import os
import struct
import sys
import time

import numpy as np
from fast_dataindex import helpers


def open_sizes(prefix):
    with open(prefix + ".idx", "rb") as f:
        head = f.read(34)
    n = struct.unpack("<Q", head[18:26])[0]
    buf = np.memmap(prefix + ".idx", mode="r", order="C")
    return np.frombuffer(buf, dtype=np.int32, count=n, offset=34)


def epochs_needed(tokens_per_epoch, seq_length, num_samples):
    epochs, total = 0, 0
    while True:
        epochs += 1
        total += tokens_per_epoch
        if (total - 1) // seq_length >= num_samples:
            return epochs


def doc_idx_for(documents, epochs, rng, separate):
    if separate and epochs > 1:
        return np.concatenate((doc_idx_for(documents, epochs - 1, rng, False),
                               doc_idx_for(documents, 1, rng, False)))
    grid = np.mgrid[0:epochs, 0:len(documents)][1]
    grid[:] = documents
    out = grid.reshape(-1).astype(np.int32)
    rng.shuffle(out)
    return out


def shuffle_idx_for(first, total, rng):
    dtype = np.uint32 if total < np.iinfo(np.uint32).max - 1 else np.int64
    head = np.arange(0, first, 1, dtype=dtype)
    rng.shuffle(head)
    if first == total:
        return head
    tail = np.arange(first, total, 1, dtype=dtype)
    rng.shuffle(tail)
    return np.concatenate((head, tail))


def main():
    prefix, num_samples, seq_length, seed, out_dir = sys.argv[1:6]
    num_samples, seq_length, seed = int(num_samples), int(seq_length), int(seed)
    t = {}
    t0 = time.perf_counter()
    sizes = open_sizes(prefix)
    t["open"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    documents = np.arange(0, sizes.shape[0], 1, np.int32)
    tokens_per_epoch = int(np.sum(sizes[documents]))
    epochs = epochs_needed(tokens_per_epoch, seq_length, num_samples)
    separate = False
    first = None
    if epochs > 1:
        first = ((epochs - 1) * tokens_per_epoch - 1) // seq_length
        per_epoch = (tokens_per_epoch - 1) // seq_length
        separate = (num_samples - first) < int(0.80 * per_epoch)
    rng = np.random.RandomState(seed=seed)
    t["plan"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    doc_idx = doc_idx_for(documents, epochs, rng, separate)
    t["doc_idx"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sample_idx = helpers.build_sample_idx(sizes, doc_idx, seq_length, epochs, tokens_per_epoch)
    t["sample_idx"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    total = sample_idx.shape[0] - 1
    shuffle_idx = shuffle_idx_for(first if separate else total, total, rng)
    t["shuffle_idx"] = time.perf_counter() - t0
    t["build"] = t["plan"] + t["doc_idx"] + t["sample_idx"] + t["shuffle_idx"]

    for name, arr in (("doc_idx", doc_idx), ("sample_idx", sample_idx), ("shuffle_idx", shuffle_idx)):
        np.save(os.path.join(out_dir, f"paddlenlp_{name}.npy"), arr)
    print(json.dumps({"timings": t, "epochs": epochs, "separate_last_epoch": separate,
                      "numpy": np.__version__}))


if __name__ == "__main__":
    main()
