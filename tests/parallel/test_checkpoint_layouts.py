"""Sharded checkpoints: exact resume on the same layout, resume on another layout,
HF export from any layout."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from layout_runner import assert_same_losses, assert_same_weights, losses, train, weights


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("single6")
    train(out, 1, steps=6)
    return losses(out), weights(out)


def test_same_layout_resume_is_bit_exact(tmp_path):
    straight = tmp_path / "straight"
    train(straight, 2, "--tp", "2", "--sharding", "stage1", steps=6)
    resumed = tmp_path / "resumed"
    train(resumed, 2, "--tp", "2", "--save_steps", "3", steps=3)
    train(resumed, 2, "--tp", "2", "--save_steps", "3", steps=6)   # resumes at step 3
    a, b = losses(straight), losses(resumed)
    assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]
    wa, wb = weights(straight), weights(resumed)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("first,second", [
    (("tp2", 2, 1, ["--tp", "2"]), ("single", 1, 1, [])),
    (("pp2", 2, 1, ["--pp", "2"]), ("tp2", 2, 1, ["--tp", "2"])),
    (("sharding2-stage1", 2, 2, ["--sharding", "2"]), ("sharding2-stage3", 2, 2, ["--sharding", "stage3"])),
    (("single", 1, 1, []), ("pp2-interleaved", 2, 1, ["--pp", "2", "--vpp", "2"])),
], ids=["tp2->tp1", "pp2->tp2", "stage1->stage3", "tp1->pp2xvpp2"])
def test_resume_on_another_layout(tmp_path, reference, first, second):
    ref_losses, ref_weights = reference
    _, n1, d1, f1 = first
    _, n2, d2, f2 = second
    train(tmp_path, n1, *f1, "--save_steps", "3", steps=3, data_ranks=d1)
    shutil.rmtree(tmp_path / "launch_logs", ignore_errors=True)
    train(tmp_path, n2, *f2, "--save_steps", "3", steps=6, data_ranks=d2)
    assert_same_losses(losses(tmp_path), ref_losses)
    assert_same_weights(weights(tmp_path), ref_weights)


def test_export_hf_from_a_sharded_checkpoint(tmp_path):
    import subprocess
    import sys

    from llmpre.models import from_pretrained

    run = tmp_path / "run"
    train(run, 4, "--tp", "2", "--pp", "2", "--save_steps", "2", steps=2)
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "llmpre.cli", "export-hf", str(run / "checkpoint-2"),
                        str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    model = from_pretrained(out)
    final = weights(run)             # what the trainer exported at the end
    exported = weights(out)
    assert set(final) == set(exported)
    assert all(np.array_equal(final[k], exported[k]) for k in final)
    assert model.config.num_hidden_layers == 4
    assert os.path.exists(out / "config.json")
