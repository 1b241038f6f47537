"""Run-directory identity: a different configuration is refused unless overwritten."""

from __future__ import annotations

import os
import types

import pytest

from llmpre.train import checkpoint as ckpt
from llmpre.train import guards


def args(**kw):
    base = {k: 1 for k in guards.TRAJECTORY_KEYS}
    base.update(decay_steps=None, max_steps=100)
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_identity_check(tmp_path):
    out = str(tmp_path)
    ident = guards.run_identity(args(), {"hidden_size": 64})
    guards.check_run_directory(out, ident, overwrite=False, has_checkpoints=False)
    guards.check_run_directory(out, ident, overwrite=False, has_checkpoints=True)   # same: fine
    other = guards.run_identity(args(learning_rate=2), {"hidden_size": 128})
    with pytest.raises(guards.RunMismatchError) as e:
        guards.check_run_directory(out, other, overwrite=False, has_checkpoints=True)
    assert "training.learning_rate: 1 -> 2" in str(e.value)
    assert "model.hidden_size: 64 -> 128" in str(e.value)
    assert "overwrite_output_dir" in str(e.value)
    # max_steps matters when it sets the decay horizon, not when decay_steps pins it
    a = guards.run_identity(args(decay_steps=50, max_steps=100), {})
    b = guards.run_identity(args(decay_steps=50, max_steps=200), {})
    c = guards.run_identity(args(decay_steps=None, max_steps=200), {})
    assert a == b and a != c


def test_overwrite_clears_the_old_run(tmp_path):
    out = str(tmp_path)
    guards.check_run_directory(out, {"x": 1}, overwrite=False, has_checkpoints=False)
    for name in ("checkpoint-10", ".checkpoint-20.tmp-abc"):
        os.makedirs(tmp_path / name)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "keep.txt").write_text("mine")
    guards.check_run_directory(out, {"x": 2}, overwrite=True, has_checkpoints=True)
    assert sorted(os.listdir(tmp_path)) == ["keep.txt", guards.RUN_CONFIG]


def test_unknown_checkpoints_are_refused_and_debris_removed(tmp_path):
    os.makedirs(tmp_path / "checkpoint-5")
    with pytest.raises(guards.RunMismatchError, match="no run_config.json"):
        guards.check_run_directory(str(tmp_path), {"x": 1}, overwrite=False, has_checkpoints=True)
    os.makedirs(tmp_path / ".checkpoint-6.tmp-xyz")
    assert ckpt.remove_stale_temps(str(tmp_path)) == [".checkpoint-6.tmp-xyz"]
    assert os.listdir(tmp_path) == ["checkpoint-5"]


def test_replace_identity_reports_differences(tmp_path):
    guards.write_identity(str(tmp_path), {"training": {"learning_rate": 1e-3}})
    diffs = guards.replace_identity(str(tmp_path), {"training": {"learning_rate": 1e-4}})
    assert diffs == ["training.learning_rate: 0.001 -> 0.0001"]
