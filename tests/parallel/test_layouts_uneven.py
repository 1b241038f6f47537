"""Uneven pipeline splits (llmpre.parallel.dims.pipeline_split) train exactly like one
process: layers that do not divide over pp (x vpp) and an explicit ``--pipeline_layers``
give the single-process losses and parameters on gloo, and a checkpoint written by an
uneven pipeline resumes in one process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from layout_runner import (COMMON, assert_same_losses, assert_same_weights, losses, max_loss_deviation, record,
                           shared_run, train, weights)

CASES = {   # name: (layers, flags, chunks' layers as logged); 2 processes, one data rank
    "3 layers on pp2 (2 + 1)": (3, ["--pp", "2"], "2,1"),
    "5 layers on pp2 x vpp2 (chunks 1,1,2,1)": (5, ["--pp", "2", "--vpp", "2"], "1,1,2,1"),
    "4 layers on pp2, --pipeline_layers 1,3": (4, ["--pp", "2", "--pipeline_layers", "1,3"], "1,3"),
}
STEPS = 6


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One-process losses and weights of each depth, trained on first use. COMMON's own depth
    (4) is the run without the flag: test_checkpoint_layouts.py's reference, trained once."""
    cache = {}

    def get(layers):
        if layers not in cache:
            depth = [] if str(layers) == COMMON[COMMON.index("--num_hidden_layers") + 1] else \
                ["--num_hidden_layers", str(layers)]
            out = shared_run(tmp_path_factory, 1, *depth, steps=STEPS)
            cache[layers] = losses(out), weights(out)
        return cache[layers]
    return get


@pytest.mark.parametrize("name", list(CASES))
def test_uneven_pipeline_matches_one_process(tmp_path, references, name):
    layers, flags, chunks = CASES[name]
    ref_losses, ref_weights = references(layers)
    save = ["--save_steps", "3"] if layers == 3 else []
    run = tmp_path / "run"
    train(run, 2, "--num_hidden_layers", str(layers), *flags, *save, steps=STEPS)
    log = (run / "launch_logs" / "workerlog.0").read_text()
    assert f"pipeline chunks' layers (forward order): {chunks}\n" in log
    got = losses(run)
    assert_same_losses(got, ref_losses)
    assert_same_weights(weights(run), ref_weights)
    record(f"pp uneven: {name}", run, 2, loss_deviation=max_loss_deviation(got, ref_losses))
    if layers == 3:
        # the uneven pp2 checkpoint of step 3 resumes in one process: steps 4..6 and the final
        # weights are the single-process run's
        resumed = tmp_path / "resumed"
        train(resumed, 1, "--num_hidden_layers", "3", "--resume_from_checkpoint", str(run / "checkpoint-3"),
              steps=STEPS)
        after = losses(resumed)
        assert sorted(after) == [4, 5, 6]
        assert_same_losses(after, {s: ref_losses[s] for s in after})
        assert_same_weights(weights(resumed), ref_weights)


@pytest.mark.parametrize("flags,message", [
    (["--pipeline_layers", "1,2"], "pipeline_layers 1,2 add up to 3 layers but the model has 4 (num_hidden_layers)"),
    (["--pipeline_layers", "0,4"], "pipeline_layers 0,4: chunk 0 has 0 layers"),
    (["--pipeline_layers", "1,1,2"], "pipeline_layers 1,1,2 lists 3 layer counts but the 2 pipeline stages (pp 2)"),
    (["--num_hidden_layers", "1"], "1 layer cannot fill the 2 pipeline stages (pp 2)"),
], ids=["sum", "zero", "count", "too-few-layers"])
def test_bad_splits_fail_before_workers_start(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, "-m", "llmpre.cli", "train", "--model", "llama-tiny", "--num_hidden_layers",
                           "4", "--max_steps", "1", "--output_dir", str(tmp_path), "--nproc-per-node", "2", "--pp", "2",
                           *flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert message in out and "Traceback" not in out, out[-2000:]
    assert not (tmp_path / "launch_logs").exists()      # no worker was started
