"""Fuzz loop for test_fuzz_corpus.py, run in a subprocess so that a crash
(segfault, abort) shows up as a failed exit status instead of killing pytest.

usage: python _fuzz_worker.py WORKDIR SEED COUNT
Prints one JSON object: outcomes per mutation kind and a list of failures.
"""

import json
import os
import shutil
import struct
import sys
import traceback

import numpy as np

from llmpre import _core
from llmpre._core import DataError
from llmpre.data import open_corpus
from llmpre.data.tools import verify
from llmpre.data.writer import CorpusWriter

work, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
HEADER = 34


def make_bases():
    bases = {}
    for dtype in (np.uint16, np.int32, np.uint8):
        name = os.path.join(work, f"base_{np.dtype(dtype).name}")
        r = np.random.RandomState(1)
        with CorpusWriter(name, dtype) as w:
            for d in range(40):
                for _ in range(r.randint(1, 4)):  # documents of 1-3 items
                    w.add_item(r.randint(0, min(np.iinfo(dtype).max, 5000), r.randint(1, 60)))
                w.end_document()
        bases[np.dtype(dtype).name] = name
    legacy = os.path.join(work, "base_legacy")
    r = np.random.RandomState(2)
    lens = r.randint(1, 50, 30).astype(np.int32)
    np.save(legacy + "_ids.npy", r.randint(0, 60000, int(lens.sum())).astype(np.uint16))
    np.savez(legacy + "_idx.npz", lens=lens, docs=np.arange(31, dtype=np.int64))
    bases["legacy"] = legacy
    return bases


def rand_int64():
    choices = [0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**62, -(2**63), 2**63 - 1]
    return int(rng.choice(choices)) if rng.random() < 0.5 else int(rng.integers(-10**6, 10**7))


def patch(path, offset, data):
    raw = bytearray(open(path, "rb").read())
    if offset + len(data) > len(raw):
        return False
    raw[offset:offset + len(data)] = data
    open(path, "wb").write(bytes(raw))
    return True


def mutate_mmap(prefix, kind):
    idx, bin_ = prefix + ".idx", prefix + ".bin"
    raw = open(idx, "rb").read()
    n, d = struct.unpack("<QQ", raw[18:34])
    if kind == "flip_idx_bytes":
        data = bytearray(raw)
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(0, HEADER)) if rng.random() < 0.5 else int(rng.integers(0, len(data)))
            data[pos] ^= 1 << int(rng.integers(0, 8))
        open(idx, "wb").write(bytes(data))
    elif kind == "truncate_idx":
        open(idx, "wb").write(raw[:int(rng.integers(0, len(raw)))])
    elif kind == "truncate_bin":
        b = open(bin_, "rb").read()
        open(bin_, "wb").write(b[:int(rng.integers(0, max(len(b), 1)))])
    elif kind == "extend_bin":
        with open(bin_, "ab") as f:
            f.write(bytes(rng.integers(0, 256, int(rng.integers(1, 9))).astype(np.uint8)))
    elif kind == "dtype_code":
        patch(idx, 17, bytes([int(rng.integers(0, 256))]))
    elif kind == "size_past_end":
        i = int(rng.integers(0, n))
        patch(idx, HEADER + 4 * i, struct.pack("<i", int(rng.choice([10**6, 2**31 - 1, -5, 61, 0]))))
    elif kind == "pointer_garbage":
        i = int(rng.integers(0, n))
        patch(idx, HEADER + 4 * n + 8 * i, struct.pack("<q", rand_int64()))
    elif kind == "header_counts":
        patch(idx, 18 if rng.random() < 0.5 else 26, struct.pack("<Q", rand_int64() % 2**64))
    elif kind == "doc_idx_garbage":
        i = int(rng.integers(0, d))
        patch(idx, HEADER + 12 * n + 8 * i, struct.pack("<q", rand_int64()))
    elif kind == "empty_file":
        open(idx if rng.random() < 0.5 else bin_, "wb").close()
    else:
        raise AssertionError(kind)


def mutate_legacy(prefix, kind):
    ids, idx = prefix + "_ids.npy", prefix + "_idx.npz"
    if kind == "legacy_flip":
        path = ids if rng.random() < 0.5 else idx
        data = bytearray(open(path, "rb").read())
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] ^= 0xFF
        open(path, "wb").write(bytes(data))
    elif kind == "legacy_truncate":
        path = ids if rng.random() < 0.5 else idx
        data = open(path, "rb").read()
        open(path, "wb").write(data[:int(rng.integers(0, len(data)))])
    elif kind == "legacy_arrays":
        lens = rng.integers(-3, 80, int(rng.integers(0, 40)))
        docs = np.sort(rng.integers(-2, 45, int(rng.integers(0, 42))))
        if rng.random() < 0.3:
            docs = rng.integers(-5, 50, docs.size)
        arrays = {"lens": lens.astype(rng.choice([np.int32, np.int64, np.float64])), "docs": docs}
        if rng.random() < 0.2:
            arrays.pop(str(rng.choice(["lens", "docs"])))
        np.savez(idx, **arrays)
    elif kind == "legacy_ids_shape":
        np.save(ids, np.zeros((int(rng.integers(1, 5)), 3), np.uint16) if rng.random() < 0.5
                else np.zeros(0, np.float32))
    else:
        raise AssertionError(kind)


def check_open_corpus(c, prefix):
    """A corpus that opened must be consistent all the way through."""
    sizes = np.asarray(c.sizes)
    doc_idx = np.asarray(c.doc_idx)
    assert (sizes >= 0).all()
    assert doc_idx[0] == 0 and doc_idx[-1] == c.num_items and (np.diff(doc_idx) >= 0).all()
    for i in range(c.num_items):
        assert c.read(i).shape == (sizes[i],)
    c.max_token()
    if c.num_items and sizes.sum() > 0:
        try:
            built = _core.build_gpt_index(c, 0, c.num_items, 50, 16, 1, 2)
            assert built["shuffle_idx"].shape[0] == built["total_samples"]
        except DataError as e:
            assert "token" in str(e) or "range" in str(e), str(e)


MMAP_KINDS = ["flip_idx_bytes", "truncate_idx", "truncate_bin", "extend_bin", "dtype_code",
              "size_past_end", "pointer_garbage", "header_counts", "doc_idx_garbage", "empty_file"]
LEGACY_KINDS = ["legacy_flip", "legacy_truncate", "legacy_arrays", "legacy_ids_shape"]

bases = make_bases()
outcomes, failures = {}, []
for k in range(count):
    legacy = rng.random() < 0.25
    kind = str(rng.choice(LEGACY_KINDS if legacy else MMAP_KINDS))
    base = bases["legacy"] if legacy else bases[str(rng.choice(["uint16", "int32", "uint8"]))]
    prefix = os.path.join(work, f"m{k}")
    for suffix in ("_ids.npy", "_idx.npz") if legacy else (".bin", ".idx"):
        shutil.copy(base + suffix, prefix + suffix)
    (mutate_legacy if legacy else mutate_mmap)(prefix, kind)
    result = "opened"
    try:
        try:
            c = open_corpus(prefix)
        except DataError as e:
            result = "DataError"
            if prefix not in str(e):
                failures.append(f"{kind}: DataError does not name the files: {e}")
        else:
            check_open_corpus(c, prefix)
            del c
        problems, _ = verify(prefix)
        if result == "DataError" and not problems:
            failures.append(f"{kind}: open_corpus refused it but verify found no problem")
    except Exception:
        failures.append(f"{kind}: {traceback.format_exc(limit=3)}")
    outcomes.setdefault(kind, {}).setdefault(result, 0)
    outcomes[kind][result] += 1
    for suffix in ("_ids.npy", "_idx.npz", ".bin", ".idx"):
        if os.path.exists(prefix + suffix):
            os.unlink(prefix + suffix)
print(json.dumps({"outcomes": outcomes, "failures": failures}))
