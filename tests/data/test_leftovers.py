"""Temporary files of killed corpus writers and index builders are removed by a later
successful run in the same place, and only when their writer is gone."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from llmpre.cli import main
from llmpre.data import build_gpt_datasets
from llmpre.data.default import default_tokenizer_path
from llmpre.data.leftovers import owner_tag
from llmpre.data.writer import write_corpus


@pytest.fixture(scope="module")
def dead_pid():
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(p.pid, 0)
    return p.pid


def tag(pid: int) -> str:
    """This host's owner tag with ``pid`` in place of ours."""
    return owner_tag().replace(f".pid{os.getpid()}.", f".pid{pid}.")


def touch(path, age: float = 0.0):
    path.write_bytes(b"partial")
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return path


def corpus_leftovers(d, base, dead_pid):
    """name -> whether a successful write of ``d/base`` must remove it."""
    return {
        f".{base}.{tag(dead_pid)}abcdefgh.bin.tmp": True,         # killed writer, this host
        f".{base}.{tag(dead_pid)}abcdefg2.idx.tmp": True,
        f".{base}.{tag(os.getpid())}abcdefgh.bin.tmp": False,     # live writer (this process)
        f".{base}.otherhost.pid{dead_pid}.abcdefgh.bin.tmp": False,  # another host: cannot tell
        f".{base}.oldrand1.bin.tmp": True,                          # untagged, 2 h old
        f".{base}.newrand1.bin.tmp": False,                         # untagged, fresh
        f".{base}-v2.{tag(dead_pid)}abcdefgh.bin.tmp": False,       # another prefix's
        f".{base}.{tag(dead_pid)}abcdefgh.bin": False,              # not a temporary name
    }


def plant(d, names):
    for name in names:
        touch(d / name, age=7200 if "oldrand" in name else 0)


def left(d, names):
    return {n for n in names if (d / n).exists()}


def test_write_removes_only_dead_writers_temps(tmp_path, dead_pid, caplog):
    names = corpus_leftovers(tmp_path, "c", dead_pid)
    plant(tmp_path, names)
    with caplog.at_level(logging.WARNING, logger="llmpre"):
        write_corpus(tmp_path / "c", [np.arange(1, 9)], np.uint16)
    assert left(tmp_path, names) == {n for n, gone in names.items() if not gone}
    lines = [r.getMessage() for r in caplog.records if "temporary file" in r.getMessage()]
    assert len(lines) == 1 and "removed 3 temporary file(s)" in lines[0], lines
    assert all(n in lines[0] for n, gone in names.items() if gone), lines[0]


def test_preprocess_run_removes_a_killed_preprocess_temps(tmp_path, dead_pid):
    names = corpus_leftovers(tmp_path, "o", dead_pid)
    plant(tmp_path, names)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("one doc", "two docs")))
    r = CliRunner().invoke(main, ["data", "preprocess", "--input", str(src), "--tokenizer",
                                  default_tokenizer_path(), "--output-prefix", str(tmp_path / "o"),
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    assert left(tmp_path, names) == {n for n, gone in names.items() if not gone}


def test_a_really_killed_writer_leaves_a_tagged_temp_that_the_next_write_removes(tmp_path):
    code = ("import os, signal, numpy as np\n"
            "from llmpre.data.writer import CorpusWriter\n"
            f"w = CorpusWriter({str(tmp_path / 'k')!r}, np.uint16)\n"
            "w.add_document(np.arange(1, 100))\n"
            "w._bin.flush()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.Popen([sys.executable, "-c", code])
    assert p.wait() == -signal.SIGKILL
    temps = [n for n in os.listdir(tmp_path) if n.endswith(".bin.tmp")]
    assert len(temps) == 1 and temps[0].startswith(f".k.{tag(p.pid)}"), temps
    write_corpus(tmp_path / "k", [np.arange(1, 5)], np.uint16)
    assert sorted(os.listdir(tmp_path)) == ["k.bin", "k.idx"]


def test_index_build_removes_only_dead_builders_temps(tmp_path, dead_pid):
    write_corpus(tmp_path / "c", [np.arange(1, 50)] * 20, np.uint16)
    cache = tmp_path / "cache"
    cache.mkdir()
    names = {
        f".tmp-{tag(dead_pid)}abcdefgh-0123abcd_doc_idx.npy": True,
        f".tmp-{tag(dead_pid)}abcdefg2-0123abcd.dsc": True,
        f".tmp-{tag(os.getpid())}abcdefgh-0123abcd_sample_idx.npy": False,
        f".tmp-other-host.pid{dead_pid}.abcdefgh-0123abcd_doc_idx.npy": False,
        ".tmp-oldrand1-0123abcd_shuffle_idx.npy": True,
        ".tmp-newrand1-0123abcd_shuffle_idx.npy": False,
        "0123abcd_doc_idx.npy": False,
    }
    plant(cache, names)
    ds = build_gpt_datasets(str(tmp_path / "c"), "1", [10, 0, 0], 8, 1, data_cache=str(cache))
    assert ds["train"] is not None and len(ds["train"]) >= 10
    assert left(cache, names) == {n for n, gone in names.items() if not gone}
