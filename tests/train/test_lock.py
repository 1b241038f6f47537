"""One run per output directory: the run lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from llmpre.errors import ConfigError
from llmpre.train import lock as run_lock


def test_second_run_is_refused_naming_the_holder(tmp_path):
    first = run_lock.RunLock.acquire(str(tmp_path))
    try:
        with pytest.raises(run_lock.RunLockedError) as e:
            run_lock.RunLock.acquire(str(tmp_path))
        msg = str(e.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}, started " in msg
        assert "another output_dir" in msg
    finally:
        first.release()
    second = run_lock.RunLock.acquire(str(tmp_path))   # free again after a clean release
    second.release()
    assert open(tmp_path / run_lock.LOCK_FILE).read() == ""   # a clean end leaves no holder


def test_lock_of_a_dead_process_is_taken_over_with_a_notice(tmp_path):
    import logging

    code = ("import sys, os; sys.path[:0] = [%r]; from llmpre.train.lock import RunLock; "
            "RunLock.acquire(%r); os._exit(0)") % (os.path.dirname(run_lock.__file__).rsplit("/llmpre", 1)[0],
                                                    str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", code], check=True)
    assert dead.returncode == 0
    holder = json.loads(open(tmp_path / run_lock.LOCK_FILE).read())
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    run_lock.logger.addHandler(handler)
    try:
        taken = run_lock.RunLock.acquire(str(tmp_path))
    finally:
        run_lock.logger.removeHandler(handler)
    taken.release()
    assert any(f"pid {holder['pid']}" in r.getMessage() and "no longer running" in r.getMessage()
               for r in records)


def test_workers_share_their_launchers_lock(tmp_path, monkeypatch):
    parent = run_lock.RunLock.acquire(str(tmp_path))
    try:
        monkeypatch.setenv(run_lock.ENV, parent.token)
        worker = run_lock.RunLock.for_worker(str(tmp_path))
        assert worker.inherited and worker.fd is None
        worker.release()                       # does not release the launcher's lock
        with pytest.raises(run_lock.RunLockedError):
            run_lock.RunLock.acquire(str(tmp_path))
        monkeypatch.setenv(run_lock.ENV, "not-the-token")   # a stale token is not trusted
        with pytest.raises(run_lock.RunLockedError):
            run_lock.RunLock.for_worker(str(tmp_path))
    finally:
        parent.release()


def test_output_dir_that_is_a_file_is_named(tmp_path):
    from llmpre.train.args import parse_arguments

    target = tmp_path / "results.txt"
    target.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"output_dir '.*results.txt' is a file"):
        parse_arguments(None, {"output_dir": str(target), "model": "llama-tiny"})
    with pytest.raises(ConfigError, match=r"output_dir '.*results.txt/run' cannot be created: .*is a file"):
        parse_arguments(None, {"output_dir": str(target / "run"), "model": "llama-tiny"})
