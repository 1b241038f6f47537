"""Checkpoints are complete or absent; damage is detected; rotation keeps the newest."""

from __future__ import annotations

import os

import pytest

from llmpre.train import checkpoint as ckpt


def writers(payload: bytes, fail_on: str | None = None):
    def write(name):
        def fn(path):
            if name == fail_on:
                raise OSError(28, "No space left on device")
            with open(path, "wb") as fh:
                fh.write(payload + name.encode())
        return fn
    return {name: write(name) for name in ("model.safetensors", "trainer_state.json")}


def test_save_list_verify_rotate(tmp_path):
    for step in (10, 20, 30):
        path = ckpt.save_checkpoint(str(tmp_path), step, writers(b"x" * step))
        assert os.path.basename(path) == f"checkpoint-{step}"
        ckpt.verify_checkpoint(path)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [10, 20, 30]
    removed = ckpt.rotate_checkpoints(str(tmp_path), 2)
    assert [os.path.basename(r) for r in removed] == ["checkpoint-10"]
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("checkpoint-30")


def test_failed_save_leaves_previous_checkpoints_and_no_debris(tmp_path):
    ckpt.save_checkpoint(str(tmp_path), 1, writers(b"a"))
    with pytest.raises(ckpt.CheckpointError, match="previous checkpoints are intact"):
        ckpt.save_checkpoint(str(tmp_path), 2, writers(b"b", fail_on="trainer_state.json"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1"]
    ckpt.verify_checkpoint(str(tmp_path / "checkpoint-1"))


def test_incomplete_or_damaged_checkpoints_are_not_trusted(tmp_path):
    path = ckpt.save_checkpoint(str(tmp_path), 5, writers(b"data"))
    (tmp_path / "checkpoint-9").mkdir()  # a directory without a manifest
    assert ckpt.latest_checkpoint(str(tmp_path)) == path
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.verify_checkpoint(str(tmp_path / "checkpoint-9"))
    with open(os.path.join(path, "model.safetensors"), "r+b") as fh:
        fh.write(b"X")
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.verify_checkpoint(path)


def test_resaving_a_step_replaces_it(tmp_path):
    ckpt.save_checkpoint(str(tmp_path), 3, writers(b"old"))
    path = ckpt.save_checkpoint(str(tmp_path), 3, writers(b"new"))
    assert open(os.path.join(path, "model.safetensors"), "rb").read() == b"newmodel.safetensors"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3"]


def test_rotation_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(str(tmp_path), step, writers(b"x"))
    import shutil

    def killed_midway(path, ignore_errors=False):
        os.unlink(os.path.join(path, "model.safetensors"))  # partly deleted, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.rotate_checkpoints(str(tmp_path), 2)
    monkeypatch.undo()
    # the half-deleted one was renamed out of the way first: only complete checkpoints are listed
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [2, 3]
    for _, path in ckpt.list_checkpoints(str(tmp_path)):
        ckpt.verify_checkpoint(path)


def test_latest_valid_checkpoint_skips_damaged_ones(tmp_path):
    for step in (1, 2):
        ckpt.save_checkpoint(str(tmp_path), step, writers(b"y"))
    os.unlink(tmp_path / "checkpoint-2" / "trainer_state.json")
    warnings = []
    assert ckpt.latest_valid_checkpoint(str(tmp_path), warnings.append).endswith("checkpoint-1")
    assert "checkpoint-2" in warnings[0]


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path):
    for step in (2, 4):
        ckpt.save_checkpoint(str(tmp_path), step, writers(b"z"))
        with open(tmp_path / f"checkpoint-{step}" / "model.safetensors", "r+b") as fh:
            fh.write(b"!")            # one flipped byte in each
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.latest_valid_checkpoint(str(tmp_path))
    msg = str(e.value)
    assert "2 checkpoint(s) and none of them verifies" in msg
    assert "checkpoint-2" in msg and "checkpoint-4" in msg
    assert "resume_from_checkpoint" in msg and "overwrite_output_dir" in msg
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [2, 4]   # nothing deleted


def test_damaged_checkpoints_do_not_count_toward_the_limit(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(str(tmp_path), step, writers(b"v"))
    ckpt._known.clear()                       # as seen by a later process
    for step in (2, 3):
        os.unlink(tmp_path / f"checkpoint-{step}" / "trainer_state.json")
    # keep=1: checkpoint-1 is the only valid one and has no valid newer one: it stays
    assert ckpt.rotate_checkpoints(str(tmp_path), 1) == []
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [1, 2, 3]
    # a new valid save makes checkpoint-1 and the damaged ones older than it removable
    ckpt.save_checkpoint(str(tmp_path), 4, writers(b"v"))
    removed = ckpt.rotate_checkpoints(str(tmp_path), 1)
    assert [os.path.basename(p) for p in removed] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [4]


def test_failed_first_save_does_not_claim_previous_checkpoints(tmp_path):
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.save_checkpoint(str(tmp_path), 1, writers(b"a", fail_on="model.safetensors"))
    assert "no checkpoint of this run exists yet" in str(e.value)
    assert "intact" not in str(e.value)


def test_stale_temporaries_are_removed_only_when_their_writer_is_gone(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    names = {
        "live": f".checkpoint-3.tmp-{host}-{os.getpid()}-ab12",        # this process: in use
        "dead": f".checkpoint-4.tmp-{host}-{dead.pid}-cd34",           # its writer has exited
        "other_host": ".checkpoint-5.tmp-elsewhere-node-1-ef56",        # lock held: that run ended
        "legacy": ".checkpoint-6.tmp-gh78",                            # no writer recorded
        "trash": f".checkpoint-1.trash-{host}-{dead.pid}-ij90",
    }
    for name in names.values():
        os.makedirs(tmp_path / name)
    removed = ckpt.remove_stale_temps(str(tmp_path))
    assert sorted(removed) == sorted(names[k] for k in ("dead", "other_host", "legacy", "trash"))
    assert os.listdir(tmp_path) == [names["live"]]
