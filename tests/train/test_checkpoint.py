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
