"""Index caches that many ranks of a job share safely.

PaddleNLP's rules, which llmpre follows so that either tool reuses the other's
cache files:

* lookup: ``<dirname(prefix)>/index-cache`` first, then ``data_cache``; a new
  index is written to the last candidate (``data_cache`` when given);
* builder: local rank 0 of every node (each node has its own disk), or only
  global rank 0 with ``share_folder`` (one shared filesystem); the others wait.

What llmpre adds:

* a lock file ``<hash>.lock`` (``flock``) held while building, so two builders
  that meet in one directory (two nodes on a shared filesystem without
  ``share_folder``, two jobs, a re-run) build once; the second finds the
  files when it gets the lock. The file is deleted after a successful build;
  one left by a crash is harmless (the lock dies with its process);
* every file is written to a temporary name and renamed, the ``.dsc`` last,
  so a crash or a concurrent reader never sees a partial index under a final
  name (PaddleNLP treats a directory holding all the files as complete); the
  temporary names carry the builder's host and pid, and a successful build
  removes those of killed builders in its directory (:mod:`llmpre.data.leftovers`);
* waiting ranks print what they wait for and give up after a timeout
  (``LLMPRE_INDEX_WAIT_TIMEOUT`` seconds, default 3600) with an error that
  says which files never appeared.

Ranks come from the variables ``paddle.distributed.launch`` sets:
``PADDLE_TRAINER_ID`` (global rank) and ``PADDLE_RANK_IN_NODE`` (local rank;
``PADDLE_LOCAL_RANK`` is read when it is absent). Without them the process is
rank 0 of 1.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from llmpre._core import DataError
from llmpre.data.leftovers import owner_tag, parse_owner, remove_leftovers

__all__ = ["BuildPolicy", "IndexCache", "RankInfo", "atomic_write", "save_arrays"]

DEFAULT_TIMEOUT = 3600.0
POLL_SECONDS = 1.0
MESSAGE_EVERY = 30.0


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise DataError(f"environment variable {name}={value!r} is not an integer rank") from None
    return default


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a distributed job."""

    global_rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "RankInfo":
        return cls(global_rank=_env_int(("PADDLE_TRAINER_ID", "PADDLE_GLOBAL_RANK"), 0),
                   local_rank=_env_int(("PADDLE_RANK_IN_NODE", "PADDLE_LOCAL_RANK"), 0))


@dataclass(frozen=True)
class BuildPolicy:
    """Who builds a missing index and how long the others wait for it."""

    share_folder: bool = False
    rank: RankInfo = field(default_factory=RankInfo.from_env)
    timeout: float = field(default_factory=lambda: float(
        os.environ.get("LLMPRE_INDEX_WAIT_TIMEOUT", DEFAULT_TIMEOUT)))
    poll: float = POLL_SECONDS

    @property
    def is_builder(self) -> bool:
        if self.share_folder:
            return self.rank.global_rank == 0
        return self.rank.local_rank == 0

    def describe_builder(self) -> str:
        return "global rank 0 (share_folder)" if self.share_folder else "local rank 0 of this node"


def atomic_write(path: str, write: Callable) -> None:
    """Write through a temporary file in the same directory, then rename."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + owner_tag(), suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_CACHE_TEMP = re.compile(r"\.tmp-(?P<middle>(?:[A-Za-z0-9._-]+\.pid\d+\.)?[a-z0-9_]{8})-.+")


def remove_cache_leftovers(directory: str) -> list[str]:
    """Remove the ``.tmp-<host>.pid<pid>.<random>-<file>`` files (and untagged old
    ``.tmp-<random>-<file>`` ones) of killed index builders in ``directory``."""
    def owner_of(name: str):
        m = _CACHE_TEMP.fullmatch(name)
        return parse_owner(m["middle"]) if m else None

    return remove_leftovers(directory, owner_of, f"index build in {directory}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_arrays(files: dict[str, str], desc: str, arrays: dict[str, np.ndarray]) -> None:
    """Arrays first, ``.dsc`` last, each atomically (``np.save`` format, as PaddleNLP)."""
    for key, arr in arrays.items():
        atomic_write(files[key], lambda f, a=arr: np.save(f, a, allow_pickle=True))
    atomic_write(files["desc"], lambda f: f.write(desc.encode("utf-8")))


class _FileLock:
    """An exclusive ``flock`` on ``path``, waited for with messages and a timeout."""

    def __init__(self, path: str, policy: BuildPolicy, what: str):
        self.path, self.policy, self.what = path, policy, what
        self.fd: Optional[int] = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        start = time.monotonic()
        last = None
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            now = time.monotonic()
            if now - start > self.policy.timeout:
                os.close(self.fd)
                raise DataError(
                    f"{self.path}: still locked by another builder after {self.policy.timeout:.0f}s "
                    f"({self.what}); if no other job is building it, delete the lock file, or "
                    "raise LLMPRE_INDEX_WAIT_TIMEOUT")
            if last is None or now - last >= MESSAGE_EVERY:
                _say(f"another process is building {self.what}; waiting for the lock {self.path}")
                last = now
            time.sleep(self.policy.poll)
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"{os.uname().nodename} pid {os.getpid()}\n".encode())
        except OSError:
            pass  # the holder's name is only a courtesy
        return self

    def remove(self) -> None:
        """Delete the lock file while still holding it, once the index files are
        complete: whoever takes a lock after that finds them first, so the lock
        no longer matters (removing another process's newer lock file is harmless
        for the same reason)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _say(message: str) -> None:
    rank = RankInfo.from_env()
    print(f"[llmpre rank {rank.global_rank}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class IndexCache:
    """Where index files live: PaddleNLP's lookup order, first hit wins.

    ``<dirname(prefix)>/index-cache`` is searched first, then ``data_cache``
    (PaddleNLP's ``--data_cache``). A new index is written to the last
    candidate: ``data_cache`` when given, else ``index-cache``.
    """

    data_cache: Optional[str] = None
    policy: BuildPolicy = field(default_factory=BuildPolicy)

    def candidates(self, prefix: str) -> list[str]:
        dirs = [os.path.join(os.path.dirname(prefix), "index-cache")]
        if self.data_cache:
            dirs.append(self.data_cache)
        return dirs

    @staticmethod
    def files(directory: str, digest: str, suffixes: dict[str, str]) -> dict[str, str]:
        base = os.path.join(directory, digest)
        return {key: base + suffix for key, suffix in suffixes.items()}

    def find(self, prefix: str, digest: str, suffixes: dict[str, str]) -> Optional[dict[str, str]]:
        for d in self.candidates(prefix):
            f = self.files(d, digest, suffixes)
            if all(os.path.isfile(p) for p in f.values()):
                return f
        return None

    def target(self, prefix: str, digest: str, suffixes: dict[str, str]) -> dict[str, str]:
        return self.files(self.candidates(prefix)[-1], digest, suffixes)

    def obtain(self, prefix: str, digest: str, suffixes: dict[str, str], desc: str,
               build: Callable[[], dict[str, np.ndarray]], what: str) -> tuple[dict[str, str], Optional[dict]]:
        """The cache files for ``digest``: found, built here, or built by another rank.

        Returns ``(files, arrays)``: ``arrays`` holds what this process built
        (so it need not re-read them), ``None`` when the files came from disk.
        """
        found = self.find(prefix, digest, suffixes)
        if found is not None:
            return found, None
        target = self.target(prefix, digest, suffixes)
        directory = os.path.dirname(target["desc"])
        if not self.policy.is_builder:
            return self._wait(prefix, digest, suffixes, target, what), None
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the index cache directory {directory} ({e}); pass a "
                            "writable --data-cache directory") from None
        try:
            lock = _FileLock(os.path.join(directory, digest + ".lock"), self.policy, what)
            with lock:
                found = self.find(prefix, digest, suffixes)  # built while we waited for the lock
                if found is not None:
                    lock.remove()  # a file we created after the builder removed its own
                    return found, None
                arrays = build()
                save_arrays(target, desc, arrays)
                lock.remove()
            remove_cache_leftovers(directory)
        except PermissionError as e:
            raise DataError(f"cannot write the index cache in {directory} ({e}); pass a writable "
                            "--data-cache directory") from None
        return target, arrays

    def _wait(self, prefix: str, digest: str, suffixes: dict[str, str], target: dict[str, str],
              what: str) -> dict[str, str]:
        start = time.monotonic()
        last = None
        while True:
            found = self.find(prefix, digest, suffixes)
            if found is not None:
                return found
            now = time.monotonic()
            waited = now - start
            if waited > self.policy.timeout:
                missing = [p for p in target.values() if not os.path.isfile(p)]
                raise DataError(
                    f"waited {waited:.0f}s for {self.policy.describe_builder()} to build {what}, but "
                    f"{', '.join(missing)} never appeared; check that rank's log (it may have "
                    "failed), or raise LLMPRE_INDEX_WAIT_TIMEOUT")
            if last is None or now - last >= MESSAGE_EVERY:
                _say(f"waiting for {self.policy.describe_builder()} to build {what} in "
                     f"{os.path.dirname(target['desc'])} ({waited:.0f}s so far, timeout "
                     f"{self.policy.timeout:.0f}s)")
                last = now
            time.sleep(self.policy.poll)
