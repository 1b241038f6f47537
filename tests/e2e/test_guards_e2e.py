"""Guards in a real run: non-finite steps, a full disk during a save, a run
directory of another configuration, and llmpre report on the result."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from llmpre.train import checkpoint as ckpt
from llmpre.train.args import parse_arguments

FAST = {"model": "llama-tiny", "num_hidden_layers": "2", "max_seq_length": "64",
        "per_device_train_batch_size": "4", "per_device_eval_batch_size": "4", "eval_iters": "2",
        "disable_tqdm": "true", "num_threads": "1", "report_to": "none", "do_eval": "false",
        "learning_rate": "3e-3", "min_learning_rate": "3e-4", "warmup_steps": "1"}


def make_args(out, **kw):
    return parse_arguments(None, {**FAST, "output_dir": str(out), **{k: str(v) for k, v in kw.items()}})


def poison_step(monkeypatch, bad_steps):
    """Make the loss NaN on the given (1-based) optimizer steps."""
    from llmpre.train import trainer as trainer_mod

    real = trainer_mod.Trainer._train_step

    def step(self, batches):
        if self.global_step + 1 in bad_steps:
            fn = self.engine.loss_fn
            self.engine.loss_fn = lambda logits, labels: fn(logits, labels) * float("nan")
            try:
                return real(self, batches)
            finally:
                self.engine.loss_fn = fn
        return real(self, batches)

    monkeypatch.setattr(trainer_mod.Trainer, "_train_step", step)


def test_nonfinite_loss_stops_with_step_and_last_checkpoint(tmp_path, monkeypatch):
    from llmpre.train.guards import NonFiniteError
    from llmpre.train.trainer import run

    poison_step(monkeypatch, {5})
    args = make_args(tmp_path / "run", max_steps=8, save_steps=2, logging_steps=1)
    with pytest.raises(NonFiniteError) as e:
        run(args)
    msg = str(e.value)
    assert msg.startswith("step 5: the loss is nan")
    assert os.path.join(args.output_dir, "checkpoint-4") in msg
    assert ckpt.latest_checkpoint(args.output_dir).endswith("checkpoint-4")


def test_nonfinite_steps_are_skipped_when_allowed(tmp_path, monkeypatch):
    from llmpre.train.monitor import read_metrics
    from llmpre.train.trainer import run

    poison_step(monkeypatch, {3, 4})
    args = make_args(tmp_path / "run", max_steps=6, save_steps=100, logging_steps=1,
                     max_nonfinite_skips=2)
    run(args)
    m = read_metrics(args.output_dir)
    assert [e["step"] for e in m["skip"]] == [3, 4]
    train = {e["step"]: e for e in m["train"]}
    assert sorted(train) == [1, 2, 3, 4, 5, 6]
    # an all-skipped interval has no loss: null, the non-finite value as text, counted
    assert train[3]["loss"] is None and train[3]["nonfinite_loss"] == "nan"
    assert train[3]["interval_skipped_steps"] == 1 and train[6]["skipped_steps"] == 2
    assert all(train[s]["loss"] > 0 for s in (1, 2, 5, 6))


def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.numpy

    from llmpre.train.trainer import run

    args = make_args(tmp_path / "run", max_steps=6, save_steps=2, logging_steps=2)
    real = safetensors.numpy.save_file
    calls = {"n": 0}

    def full_disk(arrays, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 2:    # the first checkpoint's two files fit, then the disk is full
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(arrays, path, *a, **kw)

    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
    with pytest.raises(ckpt.CheckpointError) as e:
        run(args)
    assert "No space left on device" in str(e.value) and "previous checkpoints are intact" in str(e.value)
    assert [s for s, _ in ckpt.list_checkpoints(args.output_dir)] == [2]
    ckpt.verify_checkpoint(os.path.join(args.output_dir, "checkpoint-2"))
    assert not [n for n in os.listdir(args.output_dir) if n.startswith(".checkpoint-")]


def _can_mount_tmpfs(path) -> bool:
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=72m", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def test_really_full_disk(tmp_path):
    """The same on a real 72 MB filesystem: the first checkpoint (~48 MB) fits, the second does not."""
    mnt = tmp_path / "small"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); the simulated ENOSPC test covers the logic")
    try:
        out = mnt / "run"
        r = subprocess.run([sys.executable, "-m", "llmpre.cli", "train", "--model", "llama-tiny",
                            "--num_hidden_layers", "1", "--max_seq_length", "32",
                            "--per_device_train_batch_size", "2", "--max_steps", "4",
                            "--save_steps", "2", "--save_total_limit", "1", "--do_eval", "false",
                            "--num_threads", "1", "--report_to", "none", "--output_dir", str(out)],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "No space left on device" in r.stderr and "intact" in r.stderr
        assert [s for s, _ in ckpt.list_checkpoints(str(out))] == [2]
        ckpt.verify_checkpoint(str(out / "checkpoint-2"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_run_directory_of_another_configuration_is_refused(tmp_path):
    out = tmp_path / "run"
    base = ["train", *sum(([f"--{k}", v] for k, v in FAST.items()), []), "--max_steps", "2",
            "--save_steps", "2", "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "llmpre.cli", *base], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "llmpre.cli", *base, "--learning_rate", "1e-3"],
                       capture_output=True, text=True, env=env, timeout=300)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "different configuration" in lines[0] and "learning_rate: 0.003 -> 0.001" in lines[0]
    r = subprocess.run([sys.executable, "-m", "llmpre.cli", *base, "--learning_rate", "1e-3",
                        "--overwrite_output_dir", "true"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    identity = json.load(open(out / "run_config.json"))
    assert identity["training"]["learning_rate"] == 1e-3

    # and the run can be plotted
    r = subprocess.run([sys.executable, "-m", "llmpre.cli", "report", str(out)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("loss.png", "learning_rate.png", "throughput.png", "memory.png", "summary.txt"):
        assert (out / "report" / name).stat().st_size > 0
    assert "status: finished" in r.stdout and "last_logged_step: 2" in r.stdout
