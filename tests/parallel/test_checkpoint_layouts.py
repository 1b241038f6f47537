"""Sharded checkpoints: exact resume on the same layout, resume on another layout,
HF export from any layout."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from layout_runner import (assert_same_losses, assert_same_weights, copy_checkpoint, losses, shared_run, train,
                           weights)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = shared_run(tmp_path_factory, 1, steps=6)   # test_layouts_cp_compose.py's and test_layouts_uneven.py's too
    return losses(out), weights(out)


def first_half(tmp_path_factory, dst, nproc, *flags, data_ranks=1):
    """``dst`` as a run of a layout is after step 3, saved there. The run is test_layouts.py's
    five steps of that layout with --save_steps 3 (layout_runner.shared_run: trained once per
    session, by whichever test asks first; tp2's starts test_same_layout_resume_is_bit_exact and
    tp2->tp1)."""
    copy_checkpoint(shared_run(tmp_path_factory, nproc, *flags, "--save_steps", "3", data_ranks=data_ranks), 3, dst)


def test_same_layout_resume_is_bit_exact(tmp_path, tmp_path_factory):
    straight = tmp_path / "straight"
    train(straight, 2, "--tp", "2", "--sharding", "stage1", steps=6)
    resumed = tmp_path / "resumed"
    first_half(tmp_path_factory, resumed, 2, "--tp", "2")
    run = train(resumed, 2, "--tp", "2", "--save_steps", "3", steps=6)
    assert "at global_step 3" in run.output, run.output[-2000:]    # resumed, not restarted
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
def test_resume_on_another_layout(tmp_path, tmp_path_factory, reference, first, second):
    ref_losses, ref_weights = reference
    _, n1, d1, f1 = first
    _, n2, d2, f2 = second
    first_half(tmp_path_factory, tmp_path, n1, *f1, data_ranks=d1)
    shutil.rmtree(tmp_path / "launch_logs", ignore_errors=True)
    run = train(tmp_path, n2, *f2, "--save_steps", "3", steps=6, data_ranks=d2)
    assert "at global_step 3" in run.output, run.output[-2000:]    # resumed, not restarted
    assert_same_losses(losses(tmp_path), ref_losses)
    assert_same_weights(weights(tmp_path), ref_weights)


def test_export_hf_from_a_sharded_checkpoint(tmp_path, tmp_path_factory):
    import subprocess
    import sys

    from llmpre.models import from_pretrained

    run = shared_run(tmp_path_factory, 4, "--tp", "2", "--pp", "2")   # test_layouts.py's tp2xpp2
    assert sorted(p.name for p in (run / "checkpoint-5").glob("model-*")) == \
        [f"model-tp{t}-pp{p}.safetensors" for t in (0, 1) for p in (0, 1)]      # sharded 2 x 2
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "llmpre.cli", "export-hf", str(run / "checkpoint-5"),
                        str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    model = from_pretrained(out)
    final = weights(run)             # what the trainer exported at the end
    exported = weights(out)
    assert set(final) == set(exported)
    assert all(np.array_equal(final[k], exported[k]) for k in final)
    assert model.config.num_hidden_layers == 4
    assert os.path.exists(out / "config.json")
