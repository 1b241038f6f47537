"""CorpusWriter: byte-identical to PaddleNLP's MMapIndexedDatasetBuilder, atomic, strict."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from llmpre._core import DataError
from llmpre.data.corpus import open_corpus
from llmpre.data.writer import CorpusWriter, best_dtype, write_corpus

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "megatron_data"
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "expected.json").exists(),
    reason=f"PaddleNLP reference corpora not found at {FIXTURES}",
)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_all(prefix):
    c = open_corpus(str(prefix))
    return c, [c.read(i) for i in range(len(c.sizes))]


@needs_fixtures
@pytest.mark.parametrize("name", ["tiny_mmap_u16", "corpus_u16"])
def test_rewrite_paddlenlp_corpus_is_byte_identical(tmp_path, name):
    expected = json.loads((FIXTURES / "expected.json").read_text())["corpora"][name]
    src, docs = read_all(FIXTURES / name)
    assert list(src.doc_idx) == list(range(len(docs) + 1))  # one item per document
    num_docs, num_tokens = write_corpus(tmp_path / name, docs, src.dtype)
    assert (num_docs, num_tokens) == (expected["num_docs"], expected["total_tokens"])
    assert sha256(tmp_path / f"{name}.bin") == expected["bin_sha256"]
    assert sha256(tmp_path / f"{name}.idx") == expected["idx_sha256"]


def test_layout_by_hand(tmp_path):
    # Independent of the fixtures: the documented layout, field by field.
    write_corpus(tmp_path / "c", [[1, 2, 3], [65535]], np.uint16)
    idx = (
        b"MMIDIDX\x00\x00"
        + struct.pack("<QBQQ", 1, 8, 2, 3)
        + np.array([3, 1], "<i4").tobytes()
        + np.array([0, 6], "<i8").tobytes()
        + np.array([0, 1, 2], "<i8").tobytes()
    )
    assert len(idx) == 34 + 4 * 2 + 8 * 2 + 8 * 3
    assert (tmp_path / "c.idx").read_bytes() == idx
    assert (tmp_path / "c.bin").read_bytes() == np.array([1, 2, 3, 65535], "<u2").tobytes()


def test_multi_item_documents(tmp_path):
    items = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15]]
    with CorpusWriter(tmp_path / "s", np.uint16) as w:
        for it in items[:3]:
            w.add_item(it)
        w.end_document()
        w.add_item(np.array(items[3], dtype=np.int64))
        w.end_document()
        w.add_document(items[4])
        assert (w.num_items, w.num_docs, w.num_tokens) == (5, 3, 11)
    c, got = read_all(tmp_path / "s")
    assert [g.tolist() for g in got] == items
    assert c.sizes.tolist() == [3, 1, 2, 4, 1]
    assert c.pointers.tolist() == [0, 6, 8, 12, 20]  # bytes, uint16
    assert c.doc_idx.tolist() == [0, 3, 4, 5]
    assert c.dtype == "uint16"


def test_int32_corpus(tmp_path):
    docs = [[0, 151935], [70000, 1, 2]]
    write_corpus(tmp_path / "big", docs, best_dtype(151936))
    c, got = read_all(tmp_path / "big")
    assert c.dtype == "int32"
    assert (tmp_path / "big.idx").read_bytes()[17] == 4
    assert c.pointers.tolist() == [0, 8]
    assert [g.tolist() for g in got] == docs


@pytest.mark.parametrize(
    "vocab,dtype", [(8192, np.uint16), (50257, np.uint16), (65534, np.uint16), (65535, np.int32), (151936, np.int32)]
)
def test_best_dtype_follows_paddlenlp(vocab, dtype):
    assert best_dtype(vocab) == np.dtype(dtype)


def test_nothing_visible_before_finalize(tmp_path):
    w = CorpusWriter(tmp_path / "c", np.uint16)
    w.add_document([1, 2])
    names = os.listdir(tmp_path)
    assert len(names) == 1 and names[0].endswith(".tmp"), names
    w.finalize()
    assert sorted(os.listdir(tmp_path)) == ["c.bin", "c.idx"]
    assert (tmp_path / "c.bin").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_exception_in_with_keeps_old_corpus_and_removes_temps(tmp_path):
    write_corpus(tmp_path / "c", [[1, 2, 3]], np.uint16)
    before = sha256(tmp_path / "c.bin"), sha256(tmp_path / "c.idx")
    with pytest.raises(RuntimeError, match="boom"):
        with CorpusWriter(tmp_path / "c", np.uint16) as w:
            w.add_document([7, 8, 9, 10])
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["c.bin", "c.idx"]
    assert (sha256(tmp_path / "c.bin"), sha256(tmp_path / "c.idx")) == before


def test_failed_write_corpus_leaves_no_files(tmp_path):
    with pytest.raises(DataError, match="does not fit uint16"):
        write_corpus(tmp_path / "c", [[1, 2], [3, 70000]], np.uint16)
    assert os.listdir(tmp_path) == []


def test_rewrite_replaces_existing_corpus(tmp_path):
    write_corpus(tmp_path / "c", [[1, 2, 3]], np.uint16)
    write_corpus(tmp_path / "c", [[4], [5, 6]], np.uint16)
    _, got = read_all(tmp_path / "c")
    assert [g.tolist() for g in got] == [[4], [5, 6]]


@pytest.mark.parametrize(
    "tokens,dtype,match",
    [
        ([1, 65536], np.uint16, r"token id 65536 does not fit uint16 \[0, 65535\].*wider dtype"),
        ([-1, 3], np.uint16, r"token id -1 does not fit uint16"),
        ([2**31], np.int32, r"token id 2147483648 does not fit int32"),
        ([1.0, 2.0], np.uint16, r"token ids must be integers, got dtype float64"),
        ([True], np.uint16, r"token ids must be integers"),
        ([[1, 2], [3, 4]], np.uint16, r"1-D sequence of token ids, got shape \(2, 2\)"),
    ],
)
def test_bad_tokens_are_rejected(tmp_path, tokens, dtype, match):
    with CorpusWriter(tmp_path / "c", dtype) as w:
        w.add_document([1])
        with pytest.raises(DataError, match=match) as e:
            w.add_item(tokens)
        assert str(tmp_path / "c") in str(e.value)  # names the corpus
    _, got = read_all(tmp_path / "c")  # the bad item left nothing behind
    assert [g.tolist() for g in got] == [[1]]


def test_no_empty_items_or_documents(tmp_path):
    with CorpusWriter(tmp_path / "c", np.uint16) as w:
        with pytest.raises(DataError, match="empty item"):
            w.add_item([])
        with pytest.raises(DataError, match="no item since the last document"):
            w.end_document()
        w.add_document([3])
        with pytest.raises(DataError, match="no item since the last document"):
            w.end_document()
        with pytest.raises(DataError, match="empty item"):
            w.add_document(np.zeros(0, dtype=np.int64))
    c, got = read_all(tmp_path / "c")
    assert c.doc_idx.tolist() == [0, 1] and [g.tolist() for g in got] == [[3]]


def test_trailing_items_need_end_document(tmp_path):
    w = CorpusWriter(tmp_path / "c", np.uint16)
    w.add_document([1])
    w.add_item([2, 3])
    with pytest.raises(DataError, match=r"1 item\(s\) after the last end_document\(\)"):
        w.finalize()
    w.end_document()
    w.finalize()
    assert open_corpus(str(tmp_path / "c")).doc_idx.tolist() == [0, 1, 2]


def test_use_after_finalize_or_abort(tmp_path):
    w = CorpusWriter(tmp_path / "c", np.uint16)
    w.add_document([1])
    w.finalize()
    with pytest.raises(DataError, match="finalized or aborted"):
        w.add_item([2])
    w2 = CorpusWriter(tmp_path / "d", np.uint16)
    w2.add_document([1])
    w2.abort()
    with pytest.raises(DataError, match="finalized or aborted"):
        w2.finalize()
    assert sorted(os.listdir(tmp_path)) == ["c.bin", "c.idx"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="corpus dtype must be one of"):
        CorpusWriter(tmp_path / "c", np.float32)
    with pytest.raises(ValueError, match="without '.bin'"):
        CorpusWriter(tmp_path / "c.bin", np.uint16)
    with pytest.raises(DataError, match="does not exist; create it first"):
        CorpusWriter(tmp_path / "missing" / "c", np.uint16)
    with pytest.raises(ValueError, match="vocab_size must be positive"):
        best_dtype(0)
    assert os.listdir(tmp_path) == []
