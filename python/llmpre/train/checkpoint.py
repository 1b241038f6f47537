"""Checkpoints that are complete or absent, never half-written.

A checkpoint is a directory ``<output_dir>/checkpoint-<step>/``:

    model.safetensors       parameters by structured name (Paddle layout)
    optimizer.safetensors   optimizer moments by structured name
    trainer_state.json      step, consumed samples, optimizer scalars, arguments
    rng_state.pkl           Python, numpy and Paddle RNG states
    manifest.json           size and sha256 of every file above; written last

It is assembled in a hidden temporary directory next to its final place and
renamed into place only once every file and the manifest are on disk, so a
crash leaves either the previous checkpoints or the new one. Loading checks
the manifest (sizes and checksums) before reading anything.

Temporary directories are named ``.checkpoint-<step>.tmp-<host>-<pid>-<random>``
after their writer, so a later start removes only those whose writer is gone.

Validity: a checkpoint this process wrote, or verified once, is remembered as
valid; damaged checkpoints never count toward ``save_total_limit`` and
rotation never deletes a checkpoint unless ``keep`` newer valid ones exist.

Fault injection for tests: ``LLMPRE_FAULT_SAVE_DELAY=<seconds>`` sleeps after
each file of a save, so a test can kill the process in the middle of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time

from llmpre.errors import LlmpreError

PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
FORMAT = "llmpre-checkpoint-1"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TEMP = re.compile(r"^\.checkpoint-\d+\.(?:tmp|old|trash)-(?:(?P<host>.+)-(?P<pid>\d+)-)?[^-]*$")

# path -> (manifest identity, valid): what this process wrote or verified
_known: dict = {}


class CheckpointError(LlmpreError):
    pass


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writer_tag() -> str:
    """``<host>-<pid>``: who writes a temporary file or directory (see :func:`writer_gone`)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


def writer_gone(host: str | None, pid: int | None) -> bool:
    """Whether the writer of a temporary named by :func:`writer_tag` has ended.

    Another host's writer cannot be seen from here; callers hold the run lock
    (:mod:`llmpre.train.lock`), so no other run writes into the directory."""
    if pid is None:
        return True            # an old-style name without a writer (llmpre < the run lock)
    return host != socket.gethostname() or (pid != os.getpid() and not pid_alive(pid))


def remove_stale_temps(output_dir: str) -> list[str]:
    """Remove checkpoint temporaries (``.checkpoint-*.tmp-*`` and the ``.old-``/``.trash-``
    names of a replacement or a rotation) whose writer is gone; returns their names."""
    removed = []
    if not os.path.isdir(output_dir):
        return removed
    for name in sorted(os.listdir(output_dir)):
        m = _TEMP.match(name)
        if not m or not os.path.isdir(os.path.join(output_dir, name)):
            continue
        pid = int(m.group("pid")) if m.group("pid") else None
        if writer_gone(m.group("host"), pid):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
            removed.append(name)
    return removed


def temp_dir(output_dir: str, step: int, kind: str = "tmp") -> str:
    """A fresh hidden directory ``.checkpoint-<step>.<kind>-<host>-<pid>-<random>``."""
    return tempfile.mkdtemp(prefix=f".{PREFIX}{step}.{kind}-{writer_tag()}-", dir=output_dir)


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints (with a manifest) in ``output_dir``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _NAME.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, MANIFEST)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def step_of(path: str) -> int:
    """The step of checkpoint directory ``path`` (``checkpoint-<step>``)."""
    m = _NAME.match(os.path.basename(os.path.normpath(path)))
    if not m:
        raise CheckpointError(f"{path}: not a checkpoint-<step> directory")
    return int(m.group(1))


def is_temporary(path: str) -> bool:
    """Whether ``path`` is one of the hidden temporaries of :func:`temp_dir`."""
    return bool(_TEMP.match(os.path.basename(os.path.normpath(path))))


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def write_files(directory: str, writers: dict) -> None:
    """Run ``writers`` (file name -> function(path)) into ``directory``, fsyncing each."""
    delay = float(os.environ.get("LLMPRE_FAULT_SAVE_DELAY", "0") or 0)
    for name, write in writers.items():
        path = os.path.join(directory, name)
        write(path)
        if delay > 0:
            time.sleep(delay)
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())


def finalize(tmp: str, output_dir: str, step: int) -> str:
    """Write the manifest of every file in ``tmp`` and rename it to ``checkpoint-<step>``."""
    final = os.path.join(output_dir, f"{PREFIX}{step}")
    files = {}
    for name in sorted(os.listdir(tmp)):
        path = os.path.join(tmp, name)
        files[name] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    manifest = {"format": FORMAT, "step": step, "files": files}
    with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if os.path.exists(final):
        # Re-saving a step (e.g. after resuming from it): swap the old one out first.
        old = temp_dir(output_dir, step, "old")
        os.rmdir(old)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(output_dir)
    _known[final] = (_identity(final), True)
    return final


def save_failed(final: str, error: BaseException) -> CheckpointError:
    output_dir = os.path.dirname(final)
    kept = [p for _, p in list_checkpoints(output_dir)]
    after = (f"the previous checkpoints are intact (newest: {os.path.basename(kept[-1])})" if kept
             else "no checkpoint of this run exists yet")
    return CheckpointError(f"saving checkpoint {final} failed ({error}); {after}")


def save_checkpoint(output_dir: str, step: int, writers: dict) -> str:
    """Write ``writers`` (file name -> function(path)) as checkpoint ``step``.

    Returns the final directory. On any error the temporary directory is
    removed and the existing checkpoints are untouched.
    """
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, f"{PREFIX}{step}")
    tmp = temp_dir(output_dir, step)
    try:
        write_files(tmp, writers)
        return finalize(tmp, output_dir, step)
    except Exception as e:
        # Disk full, quota, I/O errors (safetensors reports them as its own error type).
        shutil.rmtree(tmp, ignore_errors=True)
        raise save_failed(final, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_checkpoint(path: str) -> dict:
    """Check the manifest against the files; returns the manifest."""
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST}; this checkpoint is incomplete, "
                              "resume from another one") from None
    except json.JSONDecodeError:
        raise CheckpointError(f"{mpath}: corrupt manifest") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: unknown checkpoint format {manifest.get('format')!r}")
    for name, meta in manifest["files"].items():
        verify_file(os.path.join(path, name), meta)
    return manifest


def verify_file(fpath: str, meta: dict, then: str = "resume from another one") -> None:
    """One file of a checkpoint against its manifest entry (``bytes``, ``sha256``);
    ``then`` is what the error tells the user to do."""
    if not os.path.isfile(fpath):
        raise CheckpointError(f"{fpath}: missing; the checkpoint is damaged")
    if os.path.getsize(fpath) != meta.get("bytes") or _sha256(fpath) != meta.get("sha256"):
        raise CheckpointError(f"{fpath}: size or checksum differs from the manifest; "
                              f"the checkpoint is damaged, {then}")


def _identity(path: str):
    try:
        st = os.stat(os.path.join(path, MANIFEST))
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def is_valid(path: str) -> bool:
    """Whether ``path`` verifies; checked once per process (and again if its
    manifest changes), since hashing a large checkpoint is slow."""
    ident = _identity(path)
    known = _known.get(path)
    if known is not None and known[0] == ident:
        return known[1]
    try:
        verify_checkpoint(path)
        valid = True
    except CheckpointError:
        valid = False
    _known[path] = (ident, valid)
    return valid


def rotate_checkpoints(output_dir: str, keep: int | None) -> list[str]:
    """Delete checkpoints that have at least ``keep`` newer valid ones; returns what was removed.

    Damaged checkpoints do not count toward ``keep`` (so a run never deletes its
    last good checkpoint because newer damaged ones exist). Each deleted one is
    first renamed to a hidden name (atomic), then deleted, so a crash in the
    middle never leaves a half-deleted directory that looks complete."""
    if not keep:
        return []
    removed, valid_newer = [], 0
    for step, path in reversed(list_checkpoints(output_dir)):
        if valid_newer >= keep:
            trash = temp_dir(output_dir, step, "trash")
            os.rmdir(trash)
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
            _known.pop(path, None)
            removed.append(path)
        elif is_valid(path):
            valid_newer += 1
    return list(reversed(removed))


def latest_valid_checkpoint(output_dir: str, warn=None) -> str | None:
    """The newest checkpoint whose files match its manifest (damaged ones are
    reported through ``warn`` and skipped); None when there is none at all.

    When checkpoints exist but every one is damaged, starting again from step 0
    would silently throw the run away: that is an error naming each of them
    and the ways forward."""
    found = list_checkpoints(output_dir)
    problems = []
    for _, path in reversed(found):
        try:
            verify_checkpoint(path)
            _known[path] = (_identity(path), True)
            return path
        except CheckpointError as e:
            _known[path] = (_identity(path), False)
            problems.append(str(e))
            if warn is not None:
                warn(f"skipping damaged checkpoint: {e}")
    if problems:
        raise CheckpointError(
            f"{output_dir} holds {len(problems)} checkpoint(s) and none of them verifies:\n  "
            + "\n  ".join(problems)
            + "\nNothing was trained. Ways forward: restore a good copy of one and run again; "
              "resume_from_checkpoint PATH to resume from a good checkpoint elsewhere; or "
              "overwrite_output_dir true to discard this run and start again from step 0")
    return None
