"""Temporary files that name their writer, and the removal of those whose writer died.

Corpus writers and index builders write to a temporary name and rename it into
place; a killed process leaves the temporary file behind. Their names carry
the writer's host and pid (``owner_tag``), so a later successful run in the
same place can tell a dead writer's leftover from a live writer's file:

* tagged, from this host, and ``os.kill(pid, 0)`` says no such process: removed;
* tagged from another host, or the pid is alive (or not ours to signal): kept;
* untagged (written before names carried their owner): removed only when not
  modified for ``LEGACY_AGE`` seconds.

PID reuse can only keep a leftover alive longer, never remove a live file.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from typing import Callable, Union

__all__ = ["LEGACY", "LEGACY_AGE", "owner_tag", "parse_owner", "remove_leftovers", "suffixed_owner"]

logger = logging.getLogger("llmpre")

LEGACY_AGE = 3600.0  # seconds an untagged temporary file must sit untouched
LEGACY = "legacy"    # parse result: a temporary name without an owner
_RANDOM = r"[a-z0-9_]{8}"  # tempfile.mkstemp's random part
_TAGGED = re.compile(rf"(?P<host>[A-Za-z0-9._-]+)\.pid(?P<pid>\d+)\.{_RANDOM}")

Owner = Union[tuple, str, None]  # (host, pid), LEGACY, or None (not one of ours)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", os.uname().nodename) or "localhost"


def owner_tag() -> str:
    """``<host>.pid<pid>.``: put this right before mkstemp's random part."""
    return f"{_host()}.pid{os.getpid()}."


def parse_owner(middle: str) -> Owner:
    """The owner encoded in ``<host>.pid<pid>.<random>`` (or LEGACY for ``<random>``)."""
    m = _TAGGED.fullmatch(middle)
    if m:
        return m["host"], int(m["pid"])
    if re.fullmatch(_RANDOM, middle):
        return LEGACY
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # 0 / negative address process groups: never treat as dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _abandoned(owner: Owner, mtime: float, now: float, legacy_age: float) -> bool:
    if owner == LEGACY:
        return now - mtime > legacy_age
    host, pid = owner
    return host == _host() and not _pid_alive(pid)


def remove_leftovers(directory: str, owner_of: Callable[[str], Owner], what: str,
                     legacy_age: float = LEGACY_AGE) -> list[str]:
    """Remove the regular files in ``directory`` that ``owner_of(name)`` claims and
    whose writer is gone; log one line naming them; return their paths."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    now, removed = time.time(), []
    for name in names:
        owner = owner_of(name)
        if owner is None:
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or not _abandoned(owner, st.st_mtime, now, legacy_age):
                continue
            os.unlink(path)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
        removed.append(path)
    if removed:
        logger.warning("removed %d temporary file(s) left by an interrupted %s: %s",
                       len(removed), what, ", ".join(removed))
    return removed


def suffixed_owner(name: str, start: str, suffixes: tuple) -> Owner:
    """The owner of ``<start><middle><suffix>`` for one of ``suffixes`` (None otherwise)."""
    if not name.startswith(start):
        return None
    for suffix in suffixes:
        if name.endswith(suffix) and len(name) > len(start) + len(suffix):
            return parse_owner(name[len(start):-len(suffix)])
    return None
