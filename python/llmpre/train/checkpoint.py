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

Fault injection for tests: ``LLMPRE_FAULT_SAVE_DELAY=<seconds>`` sleeps after
each file of a save, so a test can kill the process in the middle of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time

from llmpre.errors import LlmpreError

PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
FORMAT = "llmpre-checkpoint-1"
_NAME = re.compile(r"^checkpoint-(\d+)$")


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
        old = tempfile.mkdtemp(prefix=f".{PREFIX}{step}.old-", dir=output_dir)
        os.rmdir(old)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(output_dir)
    return final


def save_failed(final: str, error: BaseException) -> CheckpointError:
    return CheckpointError(f"saving checkpoint {final} failed ({error}); the previous "
                           "checkpoints are intact")


def save_checkpoint(output_dir: str, step: int, writers: dict) -> str:
    """Write ``writers`` (file name -> function(path)) as checkpoint ``step``.

    Returns the final directory. On any error the temporary directory is
    removed and the existing checkpoints are untouched.
    """
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, f"{PREFIX}{step}")
    tmp = tempfile.mkdtemp(prefix=f".{PREFIX}{step}.tmp-", dir=output_dir)
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
        fpath = os.path.join(path, name)
        if not os.path.isfile(fpath):
            raise CheckpointError(f"{fpath}: missing; the checkpoint is damaged")
        if os.path.getsize(fpath) != meta["bytes"] or _sha256(fpath) != meta["sha256"]:
            raise CheckpointError(f"{fpath}: size or checksum differs from the manifest; "
                                  "the checkpoint is damaged, resume from another one")
    return manifest


def rotate_checkpoints(output_dir: str, keep: int | None) -> list[str]:
    """Delete the oldest complete checkpoints beyond ``keep``; returns what was removed.

    Each is first renamed to a hidden name (atomic), then deleted, so a crash
    in the middle never leaves a half-deleted directory that looks complete."""
    if not keep:
        return []
    found = list_checkpoints(output_dir)
    removed = []
    for step, path in found[: max(0, len(found) - keep)]:
        trash = tempfile.mkdtemp(prefix=f".{PREFIX}{step}.trash-", dir=output_dir)
        os.rmdir(trash)
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(path)
    return removed


def latest_valid_checkpoint(output_dir: str, warn=None) -> str | None:
    """The newest checkpoint whose files match its manifest (damaged ones are
    reported through ``warn`` and skipped)."""
    for _, path in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            if warn is not None:
                warn(f"skipping damaged checkpoint: {e}")
    return None
