"""Crash safety: SIGKILL at random moments (one of them inside a checkpoint save),
restart, and the run ends with exactly the loss curve of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from llmpre.train import checkpoint as ckpt
from llmpre.train.monitor import read_metrics

STEPS = 12
ARGS = ["train", "--model", "llama-tiny", "--num_hidden_layers", "2", "--max_seq_length", "64",
        "--per_device_train_batch_size", "4", "--max_steps", str(STEPS), "--logging_steps", "1",
        "--save_steps", "2", "--save_total_limit", "2", "--learning_rate", "3e-3",
        "--min_learning_rate", "3e-4", "--warmup_steps", "2", "--weight_decay", "0.1",
        "--do_eval", "false", "--disable_tqdm", "true", "--num_threads", "1", "--report_to", "none"]


def start(output_dir, delay: float):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLMPRE_FAULT_SAVE_DELAY": str(delay)}
    return subprocess.Popen([sys.executable, "-m", "llmpre.cli", *ARGS, "--output_dir", output_dir],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def debris(output_dir):
    if not os.path.isdir(output_dir):
        return []
    return [n for n in os.listdir(output_dir) if n.startswith(".checkpoint-")]


def losses(output_dir):
    return {e["step"]: e["loss"] for e in read_metrics(output_dir)["train"]}


class Run:
    """A training subprocess whose output is read by a thread (so we can watch it)."""

    def __init__(self, output_dir, delay):
        self.proc = start(output_dir, delay)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def training_started(self) -> bool:
        return any("global_step:" in l for l in self.lines)

    def finish(self):
        self.proc.wait(timeout=300)
        self.reader.join(timeout=10)
        return "".join(self.lines)


def resumed_from(out: str) -> list[str]:
    return [l.split("Resuming from ")[1].split(" at")[0] for l in out.splitlines() if "Resuming from" in l]


def test_sigkill_anywhere_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    reference = str(tmp_path / "reference")
    ref_run = Run(reference, 0.0)
    out = ref_run.finish()
    assert ref_run.proc.returncode == 0, out

    crashed = str(tmp_path / "crashed")
    rng = random.Random(1234)
    kills, mid_save_kills, resumes = 0, 0, []
    for attempt in range(12):
        run = Run(crashed, 0.2)
        deadline = time.time() + 240
        if attempt == 0:
            # First kill: wait until a checkpoint save is under way, then kill inside it.
            while not debris(crashed) and run.proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
        elif attempt < 5:
            # Then at random moments once training is under way (steps, logging, saves).
            while not run.training_started() and run.proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            wait_until = time.time() + rng.uniform(0.0, 2.5)
            while run.proc.poll() is None and time.time() < wait_until:
                time.sleep(0.01)
        if attempt >= 5 or run.proc.poll() is not None:
            out = run.finish()
            assert run.proc.returncode == 0, out
            resumes += resumed_from(out)
            break
        mid_save_kills += bool(debris(crashed))
        run.proc.send_signal(signal.SIGKILL)
        resumes += resumed_from(run.finish())
        kills += 1
        # Whatever the moment of the kill, every checkpoint that looks complete is complete.
        for _, path in ckpt.list_checkpoints(crashed):
            ckpt.verify_checkpoint(path)
    else:
        raise AssertionError("the crashed run never finished")

    assert kills >= 2 and mid_save_kills >= 1
    assert resumes and all(os.path.basename(r).startswith("checkpoint-") for r in resumes)
    assert not debris(crashed)                    # leftovers of killed saves were removed
    ref, got = losses(reference), losses(crashed)
    assert sorted(ref) == list(range(1, STEPS + 1))
    assert [got[s] for s in range(1, STEPS + 1)] == [ref[s] for s in range(1, STEPS + 1)]
    from safetensors.numpy import load_file

    a = load_file(os.path.join(reference, "model.safetensors"))
    b = load_file(os.path.join(crashed, "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
