"""The C++ index builders against straightforward numpy references.

build_gpt_index must equal PaddleNLP's numpy path (RandomState shuffles and the
sample walk) for any corpus, split, epoch count and thread count;
build_blend_index must equal PaddleNLP's greedy rule and fast_dataindex's output.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from llmpre import _core
from llmpre.data import open_corpus

FIXTURE = Path(__file__).parent / "fixtures" / "fast_dataindex_blend.npz"


def reference_index(sizes, begin, end, num_samples, seq, seed):
    """PaddleNLP's _build_index_mappings in plain numpy/Python (no cache)."""
    documents = np.arange(begin, end, dtype=np.int32)
    tokens = int(sizes[begin:end].sum())
    epochs, total = 0, 0
    while True:
        epochs += 1
        total += tokens
        if (total - 1) // seq >= num_samples:
            break
    separate, first = False, None
    if epochs > 1:
        first = ((epochs - 1) * tokens - 1) // seq
        separate = (num_samples - first) < int(0.80 * ((tokens - 1) // seq))
    rng = np.random.RandomState(seed)

    def shuffled_docs(e):
        d = np.tile(documents, e).astype(np.int32)
        rng.shuffle(d)
        return d

    doc_idx = np.concatenate([shuffled_docs(epochs - 1), shuffled_docs(1)]) if separate else shuffled_docs(epochs)
    n = (epochs * tokens - 1) // seq
    sample_idx = np.zeros((n + 1, 2), np.int32)
    di, off = 0, 0
    for k in range(1, n + 1):
        remaining = seq + 1
        while remaining != 0:
            length = int(sizes[doc_idx[di]]) - off
            remaining -= length
            if remaining <= 0:
                off += remaining + length - 1
                remaining = 0
            else:
                di, off = di + 1, 0
        sample_idx[k] = (di, off)
    head = np.arange(first if separate else n, dtype=np.uint32)
    rng.shuffle(head)
    if separate:
        tail = np.arange(first, n, dtype=np.uint32)
        rng.shuffle(tail)
        head = np.concatenate([head, tail])
    return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": head,
            "epochs": epochs, "separate": separate}


def write_raw_corpus(prefix: str, sizes: np.ndarray) -> None:
    """A uint16 corpus with the given item sizes (zero allowed, unlike the writer)."""
    n = len(sizes)
    pointers = np.zeros(n, np.int64)
    pointers[1:] = np.cumsum(sizes[:-1].astype(np.int64) * 2)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, n, n + 1))
        f.write(sizes.astype("<i4").tobytes() + pointers.tobytes())
        f.write(np.arange(n + 1, dtype="<i8").tobytes())
    np.zeros(int(sizes.sum()), np.uint16).tofile(prefix + ".bin")


def test_random_cases_match_numpy_for_every_thread_count(tmp_path):
    rng = np.random.default_rng(7)
    seen = {"separate": 0, "multi_epoch": 0, "zero_items": 0}
    for case in range(40):
        n = int(rng.integers(1, 250))
        sizes = rng.integers(0, 70, n).astype(np.int32)
        sizes[rng.integers(0, n)] = int(rng.integers(1, 70))  # never an all-empty corpus
        prefix = str(tmp_path / f"c{case}")
        write_raw_corpus(prefix, sizes)
        corpus = open_corpus(prefix)
        begin = int(rng.integers(0, n))
        end = int(rng.integers(begin + 1, n + 1))
        if sizes[begin:end].sum() == 0:
            continue
        seq = int(rng.integers(1, 60))
        num_samples = int(rng.integers(0, 500))
        seed = int(rng.integers(0, 2**32))
        ref = reference_index(sizes, begin, end, num_samples, seq, seed)
        seen["separate"] += ref["separate"]
        seen["multi_epoch"] += ref["epochs"] > 1
        seen["zero_items"] += bool((sizes[begin:end] == 0).any())
        for threads in (1, 2, 3, 5):
            got = _core.build_gpt_index(corpus, begin, end, num_samples, seq, seed, threads)
            assert got["num_epochs"] == ref["epochs"]
            assert got["separate_last_epoch"] == ref["separate"]
            for key in ("doc_idx", "sample_idx", "shuffle_idx"):
                a, b = ref[key], got[key]
                assert (a.dtype, a.shape) == (b.dtype, b.shape), (case, threads, key)
                assert np.array_equal(a, b), (case, threads, key)
    # the cases exercised what they are meant to
    assert seen["separate"] >= 3 and seen["multi_epoch"] >= 10 and seen["zero_items"] >= 10


def test_larger_corpus_threads_agree(tmp_path):
    """Big enough that the draws are handed over in several chunks (64K draws each)."""
    sizes = np.random.RandomState(3).randint(1, 40, 300_000).astype(np.int32)
    write_raw_corpus(str(tmp_path / "big"), sizes)
    corpus = open_corpus(str(tmp_path / "big"))
    one = _core.build_gpt_index(corpus, 0, len(sizes), 2_000_000, 7, 99, 1)
    assert one["num_epochs"] > 1
    for threads in (2, 4):
        other = _core.build_gpt_index(corpus, 0, len(sizes), 2_000_000, 7, 99, threads)
        for key in ("doc_idx", "sample_idx", "shuffle_idx"):
            assert np.array_equal(one[key], other[key]), (threads, key)
    rs = np.random.RandomState(99)  # the doc_idx shuffle alone, against numpy
    if not one["separate_last_epoch"]:
        d = np.tile(np.arange(len(sizes), dtype=np.int32), one["num_epochs"])
        rs.shuffle(d)
        assert np.array_equal(d, one["doc_idx"])
    assert "doc_idx" in one["timings"] and one["timings"]["sample_idx"] >= 0


def test_tiny_corpus_with_no_samples(tmp_path):
    write_raw_corpus(str(tmp_path / "t"), np.array([3], np.int32))
    got = _core.build_gpt_index(open_corpus(str(tmp_path / "t")), 0, 1, 0, 8, 1, 2)
    assert got["shuffle_idx"].shape == (0,) and got["sample_idx"].tolist() == [[0, 0]]
    assert got["doc_idx"].tolist() == [0]


def greedy_blend(weights, size):
    """PaddleNLP's build_blending_indices, written out in Python."""
    taken = [0] * len(weights)
    di = np.zeros(size, np.int16)
    si = np.zeros(size, np.int64)
    for i in range(size):
        s = max(float(i), 1.0)
        errors = [w * s - t for w, t in zip(weights, taken)]
        d = int(np.argmax(errors))  # the first maximum, as the C++ loop's strict '>'
        di[i], si[i] = d, taken[d]
        taken[d] += 1
    return di, si


@pytest.mark.parametrize("weights,size", [([1.0], 5), ([0.3, 0.7], 1000), ([0.5, 0.5], 7),
                                          ([0.2, 0.0, 0.8], 500), ([1 / 3] * 3, 999)])
def test_blend_index_is_the_greedy_rule(weights, size):
    got = _core.build_blend_index(np.array(weights), size)
    di, si = greedy_blend(weights, size)
    assert got["dataset_index"].dtype == np.int16
    assert np.array_equal(got["dataset_index"], di)
    assert np.array_equal(got["dataset_sample_index"], si)
    assert got["taken"].tolist() == np.bincount(di, minlength=len(weights)).tolist()


def test_blend_index_equals_fast_dataindex():
    z = np.load(FIXTURE)
    for name in ("a", "b", "c"):
        w = z[f"{name}_weights"]
        got = _core.build_blend_index(w, len(z[f"{name}_dataset_index"]))
        assert np.array_equal(got["dataset_index"], z[f"{name}_dataset_index"]), name
        assert np.array_equal(got["dataset_sample_index"], z[f"{name}_dataset_sample_index"]), name
    assert len(z["c_weights"]) > 255  # the int16 form


def test_blend_index_refuses_bad_input():
    with pytest.raises(_core.DataError, match="32766"):
        _core.build_blend_index(np.ones(40000) / 40000, 10)
    with pytest.raises(_core.DataError, match="non-negative"):
        _core.build_blend_index(np.array([0.5, -0.5]), 10)
    assert _core.build_blend_index(np.array([1.0]), 0)["dataset_index"].shape == (0,)


def test_max_token_threads(tmp_path):
    from llmpre.data.writer import write_corpus

    docs = [np.random.RandomState(i).randint(0, 1000, 50) for i in range(40)]
    docs[17][3] = 4321
    write_corpus(tmp_path / "m", docs, np.uint16)
    c = open_corpus(str(tmp_path / "m"))
    assert {c.max_token(threads=t) for t in (1, 2, 3, 0)} == {4321}
    assert c.max_token(5, 5) == -1
