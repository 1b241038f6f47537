"""sep and cp composed with the other layouts (issue 18 item 3, the part built so far):
five steps of llama-tiny (4 layers, sequence 32) under pipeline parallelism, sharding
stages 2 and 3 and full recompute give the single-process losses (relative 1e-5) and
parameters, like tests/parallel/test_layouts.py's layouts."""

from __future__ import annotations

import pytest

from layout_runner import (assert_same_losses, assert_same_weights, losses, max_loss_deviation, record, shared_run,
                           train, weights)

LAYOUTS = [
    # name, processes, data-parallel ranks, flags
    ("cp2xpp2", 4, 1, ["--cp", "2", "--pp", "2"]),
    ("sep2xpp2", 4, 1, ["--sep", "2", "--pp", "2"]),
    ("sharding2-stage2xcp2", 4, 2, ["--cp", "2", "--sharding", "stage2"]),
    ("sharding2-stage3xcp2", 4, 2, ["--cp", "2", "--sharding", "stage3"]),
    ("cp2+recompute-full", 2, 1, ["--cp", "2", "--recompute", "true"]),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = shared_run(tmp_path_factory, 1)     # test_layouts.py's reference too
    return losses(out), weights(out)


@pytest.mark.parametrize("name,nproc,data_ranks,flags", LAYOUTS, ids=[l[0] for l in LAYOUTS])
def test_composed_layout_matches_one_process(tmp_path, reference, name, nproc, data_ranks, flags):
    ref_losses, ref_weights = reference
    train(tmp_path, nproc, *flags, data_ranks=data_ranks)
    got = losses(tmp_path)
    assert_same_losses(got, ref_losses)
    assert_same_weights(weights(tmp_path), ref_weights)
    record(name, tmp_path, nproc, loss_deviation=max_loss_deviation(got, ref_losses))


def test_checkpoints_stay_layout_independent(tmp_path, tmp_path_factory):
    """A cp2 x tp2 checkpoint (written by the cp-index-0 ranks only) resumes under sep2 and
    continues as one process would (six steps, saved at step 3)."""
    import shutil

    single = shared_run(tmp_path_factory, 1, steps=6)   # test_checkpoint_layouts.py's reference too
    train(tmp_path, 4, "--cp", "2", "--tp", "2", "--save_steps", "3", steps=3)
    assert sorted(p.name for p in (tmp_path / "checkpoint-3").glob("model-*")) == \
        ["model-tp0-pp0.safetensors", "model-tp1-pp0.safetensors"]
    shutil.rmtree(tmp_path / "launch_logs", ignore_errors=True)
    train(tmp_path, 2, "--sep", "2", "--save_steps", "3", steps=6)
    assert_same_losses(losses(tmp_path), losses(single))
    assert_same_weights(weights(tmp_path), weights(single))
