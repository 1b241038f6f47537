"""The C++ sample index against a direct numpy transcription of PaddleNLP's rules."""

from __future__ import annotations

import numpy as np
import pytest

from llmpre import _core
from llmpre.data.writer import write_corpus


def python_split(split: str, size: int) -> list[int]:
    """get_train_valid_test_split_, written out in Python."""
    sep = "," if "," in split else ("/" if "/" in split else None)
    parts = [float(s) for s in split.split(sep)] if sep else [float(split)]
    parts = (parts + [0.0, 0.0, 0.0])[:3]
    total = sum(parts)
    parts = [p / total for p in parts]
    idx = [0]
    for p in parts:
        idx.append(idx[-1] + int(round(p * float(size))))
    diff = idx[-1] - size
    return [idx[0]] + [i - diff for i in idx[1:]]


@pytest.mark.parametrize("split,size", [("949,50,1", 3000), ("949,50,1", 64), ("98,2,0", 1001),
                                        ("1/1/1", 10), ("7", 5), ("0.5,0.25,0.25", 2),
                                        ("969, 30, 1", 12345), ("1,1", 3), ("1,1,1", 1)])
def test_split_ranges_match_python_rounding(split, size):
    assert _core.split_ranges(split, size) == python_split(split, size)


@pytest.mark.parametrize("bad", ["", "a,b", "1,,1", "0,0,0", "-1,2,3", "1,2,"])
def test_bad_split_strings_are_refused(bad):
    with pytest.raises(_core.DataError, match="split"):
        _core.split_ranges(bad, 100)


def reference_index(sizes, begin, end, num_samples, seq, seed):
    """PaddleNLP's _build_index_mappings in numpy (doc_idx, sample_idx, shuffle_idx)."""
    docs = np.arange(begin, end, dtype=np.int32)
    tokens = int(sizes[begin:end].sum())
    epochs, total = 0, 0
    while True:
        epochs += 1
        total += tokens
        if (total - 1) // seq >= num_samples:
            break
    separate = False
    if epochs > 1:
        minus_one = ((epochs - 1) * tokens - 1) // seq
        separate = (num_samples - minus_one) < int(0.80 * ((tokens - 1) // seq))
    rng = np.random.RandomState(seed)

    def doc_idx_for(n):
        d = np.tile(docs, n).astype(np.int32)
        rng.shuffle(d)
        return d

    doc_idx = (np.concatenate([doc_idx_for(epochs - 1), doc_idx_for(1)]) if separate
               else doc_idx_for(epochs))
    n = (epochs * tokens - 1) // seq
    sample_idx = np.zeros((n + 1, 2), dtype=np.int32)
    di, off = 0, 0
    for s in range(1, n + 1):
        remaining = seq + 1
        while remaining != 0:
            length = sizes[doc_idx[di]] - off
            remaining -= length
            if remaining <= 0:
                off += remaining + length - 1
                remaining = 0
            else:
                di += 1
                off = 0
        sample_idx[s] = (di, off)
    first = minus_one if separate else n
    a = np.arange(first, dtype=np.uint32)
    rng.shuffle(a)
    b = np.arange(first, n, dtype=np.uint32)
    rng.shuffle(b)
    return doc_idx, sample_idx, np.concatenate([a, b]), epochs, separate


@pytest.mark.parametrize("seed", [0, 1, 42, 1234, 2**32 - 1])
@pytest.mark.parametrize("num_samples,seq", [(1, 8), (37, 16), (500, 32), (3000, 5), (0, 4)])
def test_index_matches_numpy_randomstate(tmp_path, seed, num_samples, seq):
    rs = np.random.RandomState(seed % 1000)
    lengths = rs.randint(1, 60, size=40)
    docs = [rs.randint(0, 1000, size=n) for n in lengths]
    write_corpus(tmp_path / "c", docs, np.uint16)
    corpus = _core.Corpus.open_mmap(str(tmp_path / "c"))
    sizes = np.asarray(corpus.sizes)
    for begin, end in [(0, 40), (5, 17), (39, 40)]:
        got = _core.build_gpt_index(corpus, begin, end, num_samples, seq, seed)
        doc_idx, sample_idx, shuffle_idx, epochs, separate = reference_index(
            sizes, begin, end, num_samples, seq, seed)
        assert got["num_epochs"] == epochs and got["separate_last_epoch"] == separate
        assert np.array_equal(got["doc_idx"], doc_idx)
        assert np.array_equal(got["sample_idx"], sample_idx)
        assert got["shuffle_idx"].dtype == np.uint32
        assert np.array_equal(got["shuffle_idx"], shuffle_idx)


def test_samples_are_seq_plus_one_tokens_spanning_documents(tmp_path):
    docs = [np.arange(10 * d, 10 * d + n) for d, n in enumerate([3, 7, 2, 9, 4])]
    write_corpus(tmp_path / "c", docs, np.uint16)
    corpus = _core.Corpus.open_mmap(str(tmp_path / "c"))
    g = _core.build_gpt_index(corpus, 0, 5, 4, 4, 1)
    n = g["total_samples"]
    rows = _core.gather_samples(corpus, g["doc_idx"], g["sample_idx"],
                                np.arange(n, dtype=np.uint32), np.arange(n), 4)
    stream = np.concatenate([docs[d] for d in g["doc_idx"]])
    for i in range(n):  # unshuffled sample i = stream[4i : 4i+5], one token overlap
        assert rows[i].tolist() == stream[4 * i: 4 * i + 5].tolist()


def test_gather_rejects_out_of_range_positions(tmp_path):
    write_corpus(tmp_path / "c", [np.arange(50)], np.uint16)
    corpus = _core.Corpus.open_mmap(str(tmp_path / "c"))
    g = _core.build_gpt_index(corpus, 0, 1, 3, 8, 1)
    with pytest.raises(IndexError):
        _core.gather_samples(corpus, g["doc_idx"], g["sample_idx"], g["shuffle_idx"], [99], 8)
    with pytest.raises(_core.DataError, match="seq_length"):
        _core.gather_samples(corpus, g["doc_idx"], g["sample_idx"], g["shuffle_idx"], [0], 9)
