"""Bad corpora give one clear DataError naming the file and the problem."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from llmpre._core import DataError
from llmpre.data import open_corpus
from llmpre.data.writer import write_corpus

HEADER = 34


@pytest.fixture()
def prefix(tmp_path):
    p = tmp_path / "c"
    write_corpus(p, [np.arange(5), np.arange(7), np.arange(3)], np.uint16)
    return p


def patch(path, offset, data: bytes):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_good_corpus_opens(prefix):
    c = open_corpus(str(prefix))
    assert (c.num_items, c.num_docs, c.num_tokens, c.dtype) == (3, 3, 15, "uint16")
    assert c.read(1).tolist() == list(range(7))
    assert c.read(1, 2, 3).tolist() == [2, 3, 4]
    assert np.asarray(c.pointers).tolist() == [0, 10, 24]


@pytest.mark.parametrize("offset,data,match", [
    (0, b"XXIDIDX\x00\x00", "magic"),
    (9, struct.pack("<Q", 2), "version 2"),
    (17, bytes([0]), "dtype code 0"),
    (17, bytes([11]), "dtype code 11"),
    (18, struct.pack("<Q", 4), "needs"),               # item count disagrees with file size
    (HEADER, struct.pack("<i", 500), "past the end"),  # size beyond .bin
    (HEADER, struct.pack("<i", -1), "negative size"),
    (HEADER + 12, struct.pack("<q", 3), "multiple of"),  # odd byte pointer for uint16
    (HEADER + 36 + 8, struct.pack("<q", 7), "doc_idx"),  # doc_idx[1] > doc_idx[2]
])
def test_corrupt_index_is_refused(prefix, offset, data, match):
    patch(prefix.with_suffix(".idx"), offset, data)
    with pytest.raises(DataError, match=match) as e:
        open_corpus(str(prefix))
    assert str(prefix) in str(e.value)


def test_truncated_files(prefix):
    idx = prefix.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes()[:20])
    with pytest.raises(DataError, match="truncated"):
        open_corpus(str(prefix))


def test_truncated_bin(prefix):
    b = prefix.with_suffix(".bin")
    b.write_bytes(b.read_bytes()[:-4])
    with pytest.raises(DataError, match="past the end"):
        open_corpus(str(prefix))
    b.write_bytes(b.read_bytes()[:-1])
    with pytest.raises(DataError, match="not a multiple"):
        open_corpus(str(prefix))


def test_missing_files_and_wrong_prefix(prefix):
    with pytest.raises(DataError, match="no corpus here"):
        open_corpus(str(prefix) + "x")
    with pytest.raises(DataError, match="without '.bin'"):
        open_corpus(str(prefix) + ".bin")
    prefix.with_suffix(".bin").unlink()
    with pytest.raises(DataError, match=r"found only .*c\.idx"):
        open_corpus(str(prefix))


def test_legacy_layout_errors(tmp_path):
    np.save(tmp_path / "old_ids.npy", np.arange(10, dtype=np.uint16))
    np.savez(tmp_path / "old_idx.npz", lens=np.array([4, 6], dtype=np.int32))
    with pytest.raises(DataError, match="docs"):
        open_corpus(str(tmp_path / "old"))
    np.savez(tmp_path / "old_idx.npz", lens=np.array([4, 9], dtype=np.int32),
             docs=np.array([0, 1, 2]))
    with pytest.raises(DataError, match="past the end"):
        open_corpus(str(tmp_path / "old"))


def test_large_index_names_the_first_bad_entry(tmp_path):
    """Big indexes are checked on several threads; the error still names the first problem."""
    n = 1_300_000
    sizes = np.ones(n, dtype="<i4")
    sizes[1_200_000] = -3
    sizes[700_000] = -2
    pointers = np.arange(n, dtype="<i8") * 2
    doc_idx = np.arange(n + 1, dtype="<i8")
    prefix = tmp_path / "big"
    header = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, n, n + 1)
    prefix.with_suffix(".idx").write_bytes(header + sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes())
    prefix.with_suffix(".bin").write_bytes(bytes(2 * n))
    with pytest.raises(DataError, match="item 700000 has a negative size"):
        open_corpus(str(prefix))
    sizes[[700_000, 1_200_000]] = 1
    doc_idx[1_250_000] = 0
    doc_idx[900_000] = 5
    prefix.with_suffix(".idx").write_bytes(header + sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes())
    with pytest.raises(DataError, match="doc_idx decreases at entry 900000"):
        open_corpus(str(prefix))
