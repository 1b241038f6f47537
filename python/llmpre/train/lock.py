"""One run per output directory: an exclusive lock held for the whole run.

``<output_dir>/.llmpre.lock`` is locked with ``flock`` by the process that
owns the run: the ``llmpre train`` command that starts a parallel launch (its
workers inherit the lock through ``LLMPRE_RUN_LOCK``, a token that global rank
0 checks against the file), or the training process itself when it runs alone
or was started by a launcher directly (global rank 0 then takes it). Across
nodes only node 0 holds it.

The file records the holder (host, pid, start time, token), so a second run
stops at once naming it. The kernel drops a ``flock`` when its holder dies,
however it dies: a lock left by a dead process is simply taken over (with a
notice naming the old holder). A clean end empties the file.

``flock`` is advisory and, on some network filesystems, local to one machine;
two runs started on different machines over one NFS directory are not
prevented by it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import secrets
import socket

from llmpre.errors import ConfigError, LlmpreError

logger = logging.getLogger("llmpre")

LOCK_FILE = ".llmpre.lock"
ENV = "LLMPRE_RUN_LOCK"


class RunLockedError(LlmpreError):
    """Another live run holds the output directory."""


def check_output_dir(output_dir: str) -> None:
    """``output_dir`` must be a directory or creatable as one."""
    path = os.path.abspath(output_dir)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        what = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise ConfigError(f"output_dir '{output_dir}' {what}; give a directory for the run's "
                          "checkpoints and logs")
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"output_dir '{output_dir}': {probe} is not writable")


def _describe(holder: dict) -> str:
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"started {holder.get('started', '?')}")


class RunLock:
    """The held lock; :meth:`release` (or process exit) lets the next run in."""

    def __init__(self, path: str, fd: int | None, token: str, inherited: bool = False):
        self.path, self.fd, self.token, self.inherited = path, fd, token, inherited

    @classmethod
    def acquire(cls, output_dir: str) -> "RunLock":
        check_output_dir(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunLockedError(
                f"{output_dir} is in use by another llmpre run ({_describe(holder)}); wait for it "
                "to finish or stop it, or give this run another output_dir") from None
        except BaseException:
            os.close(fd)
            raise
        previous = _read(fd)
        if previous.get("pid"):
            logger.warning("Taking over the lock of %s left by a run that is no longer running (%s)",
                           output_dir, _describe(previous))
        token = secrets.token_hex(8)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        data = json.dumps(holder).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return cls(path, fd, token)

    @classmethod
    def for_worker(cls, output_dir: str) -> "RunLock":
        """Global rank 0 of a launch: the lock its ``llmpre train`` parent holds
        (named by ``LLMPRE_RUN_LOCK``), else its own."""
        token = os.environ.get(ENV)
        path = os.path.join(output_dir, LOCK_FILE)
        if token:
            try:
                with open(path, encoding="utf-8") as fh:
                    holder = json.load(fh)
            except (OSError, ValueError):
                holder = {}
            if holder.get("token") == token:
                return cls(path, None, token, inherited=True)
            logger.warning("%s=%s does not match %s; taking the lock here", ENV, token, path)
        return cls.acquire(output_dir)

    def env(self) -> dict:
        """What a launched worker needs to know it runs under this lock."""
        return {ENV: self.token}

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)   # a clean end: the next run sees no previous holder
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}
