"""Fault injection on real runs: lost final weights, damaged checkpoints, a full disk
during the final save, two runs on one output_dir, SIGTERM/SIGINT (one process and a
parallel launch). Each case is a row of docs/crash_safety.md's table."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from llmpre.train import checkpoint as ckpt
from llmpre.train.args import parse_arguments

FAST = {"model": "llama-tiny", "num_hidden_layers": "2", "max_seq_length": "64",
        "per_device_train_batch_size": "4", "per_device_eval_batch_size": "4", "eval_iters": "2",
        "disable_tqdm": "true", "num_threads": "1", "report_to": "none", "do_eval": "false",
        "learning_rate": "3e-3", "min_learning_rate": "3e-4", "warmup_steps": "1",
        "decay_steps": "20"}   # a pinned schedule: max_steps may grow between runs


def make_args(out, **kw):
    return parse_arguments(None, {**FAST, "output_dir": str(out), **{k: str(v) for k, v in kw.items()}})


def cli_args(out, **kw):
    values = {**FAST, "output_dir": str(out), **{k: str(v) for k, v in kw.items()}}
    return ["train"] + [x for k, v in values.items() for x in (f"--{k}", v)]


def final_step(out):
    from llmpre.models.hf import weights_metadata

    meta = weights_metadata(out)
    return None if meta is None else int(meta["llmpre_step"])


class Proc:
    """``llmpre`` in a subprocess whose output is collected by a thread."""

    def __init__(self, argv, env=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "llmpre.cli", *argv], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, text, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for line in list(self.lines)):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"never printed {text!r}:\n{self.output()}")

    def finish(self, timeout=240):
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.proc.returncode, self.output()

    def output(self):
        return "".join(self.lines)


# ---- 1 + 5: final weights -------------------------------------------------------------

def test_final_weights_are_written_by_a_rerun_after_a_lost_or_failed_final_save(tmp_path, monkeypatch):
    from llmpre.models import hf_stream
    from llmpre.train.trainer import FinalSaveError, run

    out = tmp_path / "run"
    run(make_args(out, max_steps=4, save_steps=2))
    assert final_step(out) == 4

    # A disk-full final save: one error line, the previous final weights (step 4) intact.
    real_write = hf_stream.write_safetensors

    def full_disk(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf_stream, "write_safetensors", full_disk)
    with pytest.raises(FinalSaveError) as e:
        run(make_args(out, max_steps=6, save_steps=2))
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg
    assert "previous final weights there are intact" in msg and "checkpoint-6" in msg
    assert final_step(out) == 4 and not [n for n in os.listdir(out) if ".tmp" in n]

    # Killed inside the final save (a temporary left behind, no final weights of step 6):
    def killed(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"x" * 1000)
        raise KeyboardInterrupt   # stands for SIGKILL: nothing after this line runs

    monkeypatch.setattr(hf_stream, "write_safetensors", killed)
    with pytest.raises(KeyboardInterrupt):
        run(make_args(out, max_steps=6, save_steps=2))
    monkeypatch.setattr(hf_stream, "write_safetensors", real_write)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = out / f".model.safetensors.tmp{dead.pid}"     # a killed writer's temporary
    leftover.write_bytes(b"y" * 1000)
    for name in ("model.safetensors", "config.json"):
        os.unlink(out / name)

    # The rerun has nothing left to train and still writes the final weights of step 6.
    run(make_args(out, max_steps=6, save_steps=2))
    assert final_step(out) == 6 and not leftover.exists()
    from llmpre.models import from_pretrained

    from_pretrained(str(out))
    # Final weights already current: a rerun writes nothing.
    before = os.stat(out / "model.safetensors").st_mtime_ns
    run(make_args(out, max_steps=6, save_steps=2))
    assert os.stat(out / "model.safetensors").st_mtime_ns == before


def test_kill_during_final_save_then_rerun_writes_final_weights(tmp_path):
    """The reported case: SIGKILL just after the last checkpoint, inside the final save."""
    out = tmp_path / "run"
    p = Proc(cli_args(out, max_steps=4, save_steps=2, logging_steps=1),
             env={"LLMPRE_FAULT_FINAL_SAVE_DELAY": "30"})
    p.wait_for(f"Saving checkpoint to {out}/checkpoint-4")
    deadline = time.time() + 60
    while not [n for n in os.listdir(out) if n.startswith(".model.safetensors.tmp")]:
        assert time.time() < deadline and p.proc.poll() is None, p.output()
        time.sleep(0.02)
    p.proc.send_signal(signal.SIGKILL)
    p.finish()
    assert not (out / "model.safetensors").exists()
    code, text = Proc(cli_args(out, max_steps=4, save_steps=2)).finish()
    assert code == 0, text
    assert "Nothing to do" in text and "writing them" in text
    assert final_step(out) == 4
    assert not [n for n in os.listdir(out) if ".tmp" in n], os.listdir(out)


# ---- 2: damaged checkpoints ---------------------------------------------------------------

def test_all_checkpoints_damaged_stops_with_the_list_and_keeps_them(tmp_path):
    out = tmp_path / "run"
    code, text = Proc(cli_args(out, max_steps=4, save_steps=2, save_total_limit=2)).finish()
    assert code == 0, text
    for step in (2, 4):
        weights = sorted((out / f"checkpoint-{step}").glob("model*.safetensors"))[0]
        with open(weights, "r+b") as fh:
            fh.seek(200)
            byte = fh.read(1)
            fh.seek(200)
            fh.write(bytes([byte[0] ^ 0xFF]))
    code, text = Proc(cli_args(out, max_steps=8, save_steps=2, save_total_limit=2)).finish()
    assert code == 2, text
    assert "none of them verifies" in text and "checkpoint-2" in text and "checkpoint-4" in text
    assert "resume_from_checkpoint" in text and "overwrite_output_dir" in text
    assert "global_step:" not in text                    # nothing trained
    assert [s for s, _ in ckpt.list_checkpoints(str(out))] == [2, 4]


# ---- 3: skipped steps ------------------------------------------------------------------------

def test_skipped_steps_are_visible_in_log_metrics_and_report(tmp_path, monkeypatch, capsys):
    from llmpre.report import write_report
    from llmpre.train.monitor import read_metrics
    from llmpre.train.trainer import run

    from .test_guards_e2e import poison_step

    poison_step(monkeypatch, {2, 3, 4})
    out = tmp_path / "run"
    run(make_args(out, max_steps=6, save_steps=100, logging_steps=2, max_nonfinite_skips=3))
    lines = [l for l in capsys.readouterr().out.splitlines() if "global_step:" in l]
    # steps 1-2: one good, one skipped; 3-4: both skipped; 5-6 good
    assert "skipped_steps: 1" in lines[0] and "loss: nan" not in lines[0]
    assert "loss: nan" in lines[1] and "skipped_steps: 2" in lines[1]
    assert "skipped_steps" not in lines[2]
    train = {e["step"]: e for e in read_metrics(str(out))["train"]}
    assert train[4]["loss"] is None and train[4]["nonfinite_loss"] == "nan"
    assert train[4]["interval_skipped_steps"] == 2 and train[6]["skipped_steps"] == 3
    summary = write_report(str(out))
    assert summary["skipped_steps"] == 3 and summary["skipped_at_steps"] == "2, 3, 4"
    assert isinstance(summary["min_loss"], float) and summary["min_loss"] > 1.0


def test_skipped_steps_reach_visualdl_as_a_count_not_a_zero_loss(tmp_path, monkeypatch):
    pytest.importorskip("visualdl", reason="VisualDL is an optional dependency (pip install visualdl)")
    from visualdl import LogReader

    from llmpre.train.trainer import run

    from .test_guards_e2e import poison_step

    poison_step(monkeypatch, {2})
    out = tmp_path / "run"
    run(make_args(out, max_steps=3, save_steps=100, logging_steps=1, max_nonfinite_skips=1,
                  report_to="visualdl"))
    logdir = out / "runs"
    reader = LogReader(file_path=str(logdir / sorted(os.listdir(logdir))[0]))
    loss_steps = [r.id for r in reader.get_data("scalar", "train/loss")]
    skips = {r.id: r.value for r in reader.get_data("scalar", "train/skipped_steps")}
    assert loss_steps == [1, 3]                  # no point for the skipped step
    assert skips == {1: 0.0, 2: 1.0, 3: 1.0}


# ---- 4: one run per output_dir ------------------------------------------------------------

def test_second_run_on_the_same_output_dir_exits_naming_the_first(tmp_path):
    out = tmp_path / "run"
    first = Proc(cli_args(out, max_steps=400, save_steps=5, logging_steps=1),
                 env={"LLMPRE_FAULT_SAVE_DELAY": "0.5"})
    first.wait_for("global_step: 2,")
    started = time.time()
    code, text = Proc(cli_args(out, max_steps=400, save_steps=5, logging_steps=1)).finish()
    assert code == 2 and time.time() - started < 60, text
    assert f"pid {first.proc.pid}" in text and "in use by another llmpre run" in text
    assert "global_step:" not in text and "Removed" not in text
    assert first.proc.poll() is None                      # the first run is untouched
    first.wait_for("Saving checkpoint to")
    # The first run dies without releasing the lock: the next run takes it over.
    first.proc.send_signal(signal.SIGKILL)
    first.finish()
    code, text = Proc(cli_args(out, max_steps=6, save_steps=5, logging_steps=1)).finish()
    assert code == 0, text
    assert f"pid {first.proc.pid}" in text and "no longer running" in text
    assert "Resuming from" in text


# ---- 8: SIGTERM / SIGINT ---------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits_with_one_line(tmp_path, signum):
    out = tmp_path / "run"
    argv = cli_args(out, max_steps=400, save_steps=1000, logging_steps=1)
    p = Proc(argv)
    p.wait_for("global_step: 3,")
    p.proc.send_signal(signum)
    code, text = p.finish()
    name = signal.Signals(signum).name
    assert code == 128 + signum, text
    assert "Termination signal" not in text and "Traceback" not in text, text
    stop = [l for l in text.splitlines() if l.startswith(f"llmpre: stopped by {name} at step")]
    assert len(stop) == 1, text
    step = int(stop[0].split("at step ")[1].split(";")[0])
    assert step >= 3 and f"checkpoint-{step} saved" in stop[0]
    assert ckpt.latest_checkpoint(str(out)).endswith(f"checkpoint-{step}")
    ckpt.verify_checkpoint(ckpt.latest_checkpoint(str(out)))
    code, text = Proc(argv[:] + ["--max_steps", str(step + 2)]).finish()
    assert code == 0 and f"Resuming from {out}/checkpoint-{step} at global_step {step}" in text, text


def test_second_signal_aborts_at_once(tmp_path):
    out = tmp_path / "run"
    p = Proc(cli_args(out, max_steps=400, save_steps=1000, logging_steps=1),
             env={"LLMPRE_FAULT_SAVE_DELAY": "20"})   # the stop's checkpoint save is slow
    p.wait_for("global_step: 2,")
    p.proc.send_signal(signal.SIGTERM)
    p.wait_for("stopping after the current step")
    time.sleep(1.5)
    sent = time.time()
    p.proc.send_signal(signal.SIGTERM)
    code, text = p.finish(timeout=60)
    assert code == 128 + signal.SIGTERM and time.time() - sent < 10, text
    assert "received again: aborting" in text
    assert ckpt.list_checkpoints(str(out)) == []          # the interrupted save never counts


def test_sigterm_stops_every_rank_of_a_parallel_launch(tmp_path):
    out = tmp_path / "run"
    argv = cli_args(out, max_steps=400, save_steps=1000, logging_steps=1) + ["--nproc-per-node", "2"]
    p = Proc(argv)
    p.wait_for("global_step: 2,", timeout=300)
    p.proc.send_signal(signal.SIGTERM)
    code, text = p.finish(timeout=300)
    assert code == 128 + signal.SIGTERM, text
    logs = {r: open(out / "launch_logs" / f"workerlog.{r}").read() for r in (0, 1)}
    steps = set()
    for r, log in logs.items():
        stop = [l for l in log.splitlines() if "llmpre: stopped by SIGTERM at step" in l]
        assert len(stop) == 1 and "Termination signal" not in log, log
        steps.add(int(stop[0].split("at step ")[1].split(";")[0]))
    assert len(steps) == 1                                # every rank stopped at the same step
    step = steps.pop()
    path = ckpt.latest_checkpoint(str(out))
    assert path.endswith(f"checkpoint-{step}")
    ckpt.verify_checkpoint(path)
