"""`llmpre data merge / inspect / verify`."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import MEGATRON, needs
from llmpre._core import DataError
from llmpre.cli import main
from llmpre.data import open_corpus
from llmpre.data.tools import inspect, merge, verify
from llmpre.data.writer import CorpusWriter, write_corpus

HEADER = 34


def docs_of(prefix):
    c = open_corpus(str(prefix))
    d = np.asarray(c.doc_idx)
    return [[c.read(i).tolist() for i in range(d[k], d[k + 1])] for k in range(c.num_docs)]


@pytest.fixture()
def two(tmp_path):
    a = [np.arange(5), np.arange(3) + 7]
    write_corpus(tmp_path / "a", a, np.uint16)
    with CorpusWriter(tmp_path / "b", np.uint16) as w:  # a 2-sentence document, then one more
        w.add_item([1, 2])
        w.add_item([3])
        w.end_document()
        w.add_document([9, 9, 9, 9])
    return tmp_path


def test_merge_concatenates_items_and_documents(two):
    r = merge([str(two / "a"), str(two / "b")], str(two / "m"))
    assert r == {"inputs": 2, "documents": 4, "items": 5, "tokens": 15, "dtype": "uint16"}
    assert docs_of(two / "m") == docs_of(two / "a") + docs_of(two / "b")
    c = open_corpus(str(two / "m"))
    assert np.asarray(c.doc_idx).tolist() == [0, 1, 2, 4, 5]  # PaddleNLP's merge_file_ offsets
    assert verify(str(two / "m"))[0] == []
    # the same bytes as writing everything with one writer
    with CorpusWriter(two / "ref", np.uint16) as w:
        for doc in docs_of(two / "a") + docs_of(two / "b"):
            for item in doc:
                w.add_item(item)
            w.end_document()
    for s in (".bin", ".idx"):
        assert (two / f"m{s}").read_bytes() == (two / f"ref{s}").read_bytes()


def test_merge_refuses_mixed_dtypes_and_self(two):
    write_corpus(two / "wide", [np.arange(4)], np.int32)
    with pytest.raises(DataError, match="int32 tokens but .* uint16"):
        merge([str(two / "a"), str(two / "wide")], str(two / "m"))
    with pytest.raises(DataError, match="also an input"):
        merge([str(two / "a"), str(two / "b")], str(two / "a"))
    assert not list(two.glob("m.*"))


@needs(MEGATRON / "tiny_old_idx.npz")
def test_legacy_corpus_merges_inspects_and_verifies(tmp_path):
    for f in ("tiny_old_ids.npy", "tiny_old_idx.npz", "tiny_mmap_u16.bin", "tiny_mmap_u16.idx"):
        shutil.copy(MEGATRON / f, tmp_path / f)
    merge([str(tmp_path / "tiny_old")], str(tmp_path / "conv"))
    for s in (".bin", ".idx"):  # the legacy layout re-written is PaddleNLP's mmap corpus
        assert (tmp_path / f"conv{s}").read_bytes() == (tmp_path / f"tiny_mmap_u16{s}").read_bytes()
    assert verify(str(tmp_path / "tiny_old"))[0] == []
    assert inspect(str(tmp_path / "tiny_old"))["format"].startswith("legacy")
    np.savez(tmp_path / "tiny_old_idx.npz", lens=np.array([-1, 5000]), docs=np.array([0, 3, 1]))
    problems, _ = verify(str(tmp_path / "tiny_old"))
    # negative length, lens exceed ids, docs: wrong end, a decrease, an entry past the items
    assert len(problems) == 5, problems


def test_inspect_counts_percentiles_and_text(tmp_path):
    from llmpre.data.default import default_corpus_prefix, default_tokenizer_path

    r = inspect(default_corpus_prefix(), tokenizer=default_tokenizer_path(), show=2)
    c = open_corpus(default_corpus_prefix())
    sizes = np.asarray(c.sizes)
    assert (r["documents"], r["items"], r["tokens"], r["dtype"]) == (c.num_docs, c.num_items, int(sizes.sum()), "uint16")
    assert r["max_token_id"] == int(c.max_token())
    assert r["doc_tokens"]["p0"] == sizes.min() and r["doc_tokens"]["p100"] == sizes.max()
    assert r["doc_tokens"]["p50"] == int(np.percentile(sizes, 50, method="nearest"))
    assert len(r["shown"]) == 2 and r["shown"][0]["text"].strip()
    assert r["shown"][0]["text"].endswith("<|endoftext|>")  # the corpus's EOS, decoded
    out = CliRunner().invoke(main, ["data", "inspect", default_corpus_prefix(), "--show", "1"])
    assert out.exit_code == 0 and "documents 710" in out.output and "p99" in out.output
    js = CliRunner().invoke(main, ["data", "inspect", default_corpus_prefix(), "--json"])
    assert json.loads(js.output)["documents"] == 710


def test_verify_reports_every_problem(two):
    idx = two / "a.idx"
    raw = bytearray(idx.read_bytes())
    raw[HEADER:HEADER + 4] = struct.pack("<i", 50)           # size 0 past the .bin end
    raw[HEADER + 8 + 8:HEADER + 8 + 16] = struct.pack("<q", 3)  # odd pointer of item 1
    n = 2
    raw[HEADER + 12 * n:HEADER + 12 * n + 8] = struct.pack("<q", 1)  # doc_idx[0] = 1
    idx.write_bytes(bytes(raw))
    (two / "a.bin").write_bytes((two / "a.bin").read_bytes() + b"\0")  # odd length
    problems, _ = verify(str(two / "a"))
    text = "\n".join(problems)
    for expect in ("pointer(s) disagree", "not a multiple of the item size 2", "truncated",
                   "point outside", "doc_idx starts at 1", "17 bytes, not a multiple"):
        assert expect in text, (expect, text)
    assert all(str(two / "a") in p for p in problems)
    r = CliRunner().invoke(main, ["data", "verify", str(two / "a")])
    assert r.exit_code == 1 and r.output.count("PROBLEM:") == len(problems)


def test_verify_header_problems_and_exit_codes(two):
    ok = CliRunner().invoke(main, ["data", "verify", str(two / "b")])
    assert ok.exit_code == 0 and ok.output.startswith("OK:")
    idx = two / "b.idx"
    raw = bytearray(idx.read_bytes())
    raw[0:2] = b"XX"
    raw[9:17] = struct.pack("<Q", 3)
    raw[17] = 42
    idx.write_bytes(bytes(raw[:-4]))
    problems, _ = verify(str(two / "b"))
    assert len(problems) >= 4  # magic, version, dtype code, length (and what follows)
    assert any("unknown dtype code 42" in p for p in problems)
    assert CliRunner().invoke(main, ["data", "verify", str(two / "nothing")]).exit_code == 2
    (two / "b.idx").write_bytes(b"MMID")
    assert "shorter than the 34-byte header" in verify(str(two / "b"))[0][0]
    big = CliRunner().invoke(main, ["data", "verify", str(two / "a"), "--vocab-size", "5"])
    assert big.exit_code == 1 and "token id 9 is outside a vocabulary of 5" in big.output


def test_cli_merge_directory(two):
    (two / "parts").mkdir()
    for name in ("a", "b"):
        for s in (".bin", ".idx"):
            shutil.copy(two / f"{name}{s}", two / "parts" / f"{name}{s}")
    r = CliRunner().invoke(main, ["data", "merge", str(two / "parts"), "--output-prefix", str(two / "all")])
    assert r.exit_code == 0, r.output
    assert docs_of(two / "all") == docs_of(two / "a") + docs_of(two / "b")
