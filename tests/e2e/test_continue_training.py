"""continue_training from an HF directory trains exactly like a run from scratch whose
initial weights are that checkpoint: in one process bit for bit, and tensor parallel over
two processes (each rank reading only its own slices, llmpre.models.hf_load) as closely as
every layout follows one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from layout_runner import TIMEOUT, assert_same_losses

from llmpre.train.args import parse_arguments

STEPS = 3
SEED, CHECKPOINT_SEED = 7, 8   # the checkpoint is not the run's own initialisation
COMMON = {"max_seq_length": "32", "per_device_train_batch_size": "2", "gradient_accumulation_steps": "1",
          "logging_steps": "1", "do_eval": "false", "disable_tqdm": "true", "report_to": "none",
          "learning_rate": "3e-3", "warmup_steps": "1", "max_steps": str(STEPS), "save_steps": "1000",
          "seed": str(SEED), "num_threads": "1"}


def _losses(output_dir) -> dict:
    with open(os.path.join(output_dir, "metrics.jsonl")) as fh:
        return {e["step"]: e["loss"] for e in map(json.loads, fh) if e["type"] == "train"}


def _continued(path, output_dir):
    return parse_arguments(None, {**COMMON, "model_name_or_path": str(path), "continue_training": "true",
                                  "output_dir": str(output_dir)})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An HF checkpoint of llama-tiny (2 layers) initialised with another seed than the runs'."""
    from llmpre.models import build_model, save_pretrained
    from llmpre.train.trainer import _model_config

    tmp = tmp_path_factory.mktemp("continue")
    scratch = parse_arguments(None, {**COMMON, "model_name_or_path": "llama-tiny", "num_hidden_layers": "2",
                                     "output_dir": str(tmp / "scratch")})
    save_pretrained(build_model(_model_config(scratch), seed=CHECKPOINT_SEED), tmp / "hf")
    return scratch, tmp / "hf"


@pytest.fixture(scope="module")
def one_process(checkpoint, tmp_path_factory):
    from llmpre.train.trainer import run

    args = _continued(checkpoint[1], tmp_path_factory.mktemp("one") / "run")
    run(args)
    return _losses(args.output_dir)


def test_one_process_continues_from_the_checkpoint_exactly(checkpoint, one_process, monkeypatch):
    import paddle

    import llmpre.models as models
    from llmpre.train.trainer import run

    scratch, _ = checkpoint
    real = models.build_model

    def checkpoint_init(config, seed=None, **kw):    # the scratch run starts from the checkpoint's values
        model = real(config, seed=CHECKPOINT_SEED, **kw)
        paddle.seed(seed)                           # and leaves Paddle's generator as its own seed would
        return model

    monkeypatch.setattr(models, "build_model", checkpoint_init)
    run(scratch)
    want = _losses(scratch.output_dir)
    assert sorted(want) == list(range(1, STEPS + 1))
    assert one_process == want                         # bit-identical


def test_tensor_parallel_ranks_continue_from_their_slices(checkpoint, one_process, tmp_path):
    out = tmp_path / "tp2"
    argv = [sys.executable, "-m", "llmpre.cli", "train", "--nproc-per-node", "2", "--tensor_parallel_degree", "2",
            "--model_name_or_path", str(checkpoint[1]), "--continue_training", "true", "--output_dir", str(out)]
    for k, v in COMMON.items():
        argv += [f"--{k}", v]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PADDLE_TRAINER_ID", None)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)         # the launcher and every worker
        output, _ = proc.communicate()
        pytest.fail(f"tp2 training timed out:\n{output[-3000:]}")
    log = out / "launch_logs" / "workerlog.0"
    output += log.read_text() if log.exists() else ""
    assert proc.returncode == 0, output[-3000:]
    assert "continue_training: read" in output and "this rank's slices" in output, output[-3000:]
    assert_same_losses(_losses(out), one_process)   # as every layout follows one process
