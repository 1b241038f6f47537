"""Run llmpre training as several processes (paddle.distributed.launch on gloo)
with a timeout that kills the whole process group, and read the results."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TIMEOUT = 300
# The model and data every layout test trains: llama-tiny cut to 4 layers.
COMMON = ["--model", "llama-tiny", "--num_hidden_layers", "4", "--max_seq_length", "32",
          "--gradient_accumulation_steps", "2", "--logging_steps", "1", "--do_eval", "false",
          "--disable_tqdm", "true", "--report_to", "none", "--learning_rate", "3e-3",
          "--min_learning_rate", "3e-4", "--warmup_steps", "1", "--weight_decay", "0.1",
          "--decay_steps", "8", "--adam_epsilon", "1e-5"]
# adam_epsilon 1e-5 (PaddleNLP's default is 1e-8): Adam divides each gradient element by its
# running RMS, so an element whose gradient is pure fp32 cancellation noise (~1e-8: a sum of
# O(0.1) terms that is zero in exact arithmetic) moves by up to lr * |g| / eps per step in a
# direction that the reduction order decides (other reduction orders, not other math). With
# eps 1e-5 such an element moves by <= lr * 1e-3 per step, and the weight comparison below is
# about the layout. (At 1e-6 the first update, at the full rate since warmup is one step, moved
# one embedding element of dp2xtp2 by 5.8e-5 against one process.)
GLOBAL_BATCH = 4      # sequences per micro-batch over all data-parallel ranks


def _command(output_dir, nproc: int, extra, steps: int, data_ranks: int) -> tuple[list, dict]:
    """The command line and environment ``train`` runs."""
    argv = [sys.executable, "-m", "llmpre.cli", "train", *COMMON, "--max_steps", str(steps),
            "--per_device_train_batch_size", str(GLOBAL_BATCH // data_ranks),
            "--output_dir", str(output_dir), *map(str, extra)]
    if nproc > 1:
        argv += ["--nproc-per-node", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PADDLE_TRAINER_ID", None)
    return argv, env


def train(output_dir, nproc: int, *extra, steps: int = 5, data_ranks: int = 1):
    """Train ``steps`` steps in ``nproc`` processes (1: in one process, no launcher);
    returns the finished process (its output in ``.output``).
    Per-device batch = GLOBAL_BATCH / data_ranks."""
    argv, env = _command(output_dir, nproc, extra, steps, data_ranks)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the launcher and every worker
        out, _ = proc.communicate()
        raise AssertionError(f"training with {nproc} processes timed out:\n{out[-3000:]}")
    if proc.returncode != 0:
        logs = os.path.join(str(output_dir), "launch_logs", "workerlog.0")
        tail = open(logs).read()[-3000:] if os.path.exists(logs) else ""
        raise AssertionError(f"training failed (exit {proc.returncode}):\n{out[-3000:]}\n{tail}")
    proc.output = out
    return proc


_OUTPUT = "<output_dir>"


def _files_digest(path: str) -> str:
    """sha256 over the relative names and bytes of a file or of every file under a directory."""
    h = hashlib.sha256()
    files = [("", path)] if os.path.isfile(path) else sorted(
        (os.path.relpath(os.path.join(d, f), path), os.path.join(d, f))
        for d, _, names in os.walk(path) for f in names)
    for rel, full in files:
        h.update(rel.encode() + b"\0")
        with open(full, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def shared_run(tmp_path_factory, nproc: int, *extra, steps: int = 5, data_ranks: int = 1) -> Path:
    """The output directory of ``train(out, nproc, *extra, steps=steps, data_ranks=data_ranks)``,
    trained once per pytest session and shared by every test that asks for the same run (the
    single-process references several files compare their layouts with, a checkpoint that
    several resume tests start from). Treat it as read-only: resume in a copy (``copy_checkpoint``).

    The key is everything the run depends on that a test chooses: the whole command line
    (every flag, the step count, the per-device batch, the process count), the environment
    the workers get, and the contents (names and bytes) of every file or directory an argument
    names (a model directory's config.json, a tokenizer), so a run is never reused for another
    configuration, even one written to the same path. The run trains into a temporary
    directory beside the cache and is renamed into place only once it finished, so a failed or
    interrupted run is never found."""
    argv, env = _command(_OUTPUT, nproc, extra, steps, data_ranks)
    env = {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}   # names the asking test
    files = {a: _files_digest(a) for a in argv[4:] if a != _OUTPUT and os.path.exists(a)}
    key = json.dumps({"argv": argv, "env": env, "files": files}, sort_keys=True)
    root = Path(tmp_path_factory.getbasetemp()) / "shared-runs"
    root.mkdir(exist_ok=True)
    final = root / hashlib.sha256(key.encode()).hexdigest()[:24]
    if (final / "key.json").exists():
        assert json.loads((final / "key.json").read_text()) == json.loads(key), f"hash collision at {final}"
        return final
    partial = Path(tempfile.mkdtemp(dir=root, prefix=f"{final.name}.partial-"))
    train(partial, nproc, *extra, steps=steps, data_ranks=data_ranks)
    (partial / "key.json").write_text(key)
    try:
        os.rename(partial, final)
    except OSError:                 # another process sharing this basetemp finished it first
        if not (final / "key.json").exists():
            raise
        shutil.rmtree(partial)
    return final


def copy_checkpoint(run: Path, step: int, dst) -> None:
    """Make ``dst`` the run directory ``run`` was after step ``step``, to resume from there:
    its checkpoint-<step>, its run identity and its metrics up to that step. A longer run's
    checkpoint-<step> holds the same model, optimizer and random states, byte for byte, as the
    final checkpoint of a run that stops at ``step`` (the learning-rate schedule runs to
    decay_steps and the batches do not depend on max_steps; trainer_state.json differs in the
    output_dir and max_steps it records), so resume tests start from the layout tests' runs."""
    os.makedirs(str(dst), exist_ok=True)
    shutil.copytree(run / f"checkpoint-{step}", os.path.join(str(dst), f"checkpoint-{step}"))
    shutil.copy2(run / "run_config.json", os.path.join(str(dst), "run_config.json"))
    with open(run / "metrics.jsonl") as src, open(os.path.join(str(dst), "metrics.jsonl"), "w") as out:
        out.writelines(line for line in src if json.loads(line).get("step", 0) <= step)


def write_configs(root, configs: dict) -> dict:
    """Each HF config of ``configs`` as ``<root>/<name>/config.json``, a model directory for
    ``--model``; returns ``{name: directory}``."""
    dirs = {}
    for name, config in configs.items():
        os.makedirs(os.path.join(str(root), name))
        with open(os.path.join(str(root), name, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
        dirs[name] = os.path.join(str(root), name)
    return dirs


def losses(output_dir) -> dict:
    from llmpre.train.monitor import read_metrics

    return {e["step"]: e["loss"] for e in read_metrics(str(output_dir))["train"]}


def last_train_entry(output_dir) -> dict:
    from llmpre.train.monitor import read_metrics

    return read_metrics(str(output_dir))["train"][-1]


def weights(output_dir) -> dict:
    from safetensors.numpy import load_file

    return load_file(os.path.join(str(output_dir), "model.safetensors"))


def assert_same_losses(got: dict, want: dict, rel: float = 1e-5):
    assert sorted(got) == sorted(want)
    for step in want:
        assert abs(got[step] - want[step]) <= rel * abs(want[step]), (step, got[step], want[step])


def assert_same_weights(got: dict, want: dict):
    """Adam normalises each gradient element by its running RMS, so for the few
    elements whose gradient is ~0 (embedding rows of tokens seen once or never)
    the update direction follows fp32 rounding noise, which differs between
    reduction orders. Bound: every element within 5e-5 (1/60 of one step's
    largest update, lr 3e-3), and at most 1 in 10^4 elements off by more than 1e-6."""
    assert set(got) == set(want)
    total = off = 0
    for k in want:
        d = np.abs(got[k].astype(np.float64) - want[k].astype(np.float64))
        assert d.max() <= 5e-5, (k, float(d.max()))
        total += d.size
        off += int((d > 1e-6).sum())
    assert off <= total * 1e-4, (off, total)


def max_loss_deviation(got: dict, want: dict) -> float:
    """The largest |got - want| / |want| over the steps."""
    return max(abs(got[step] - want[step]) / abs(want[step]) for step in want)


def record(name: str, output_dir, nproc: int, loss_deviation: float | None = None) -> dict:
    """Throughput and memory of a layout, as the log line reports them, and
    its largest relative loss deviation from one process."""
    e = last_train_entry(output_dir)
    row = {"layout": name, "ranks": nproc,
           "tokens_per_card_per_s": e["interval_tokens_per_second_per_device"],
           "max_memory_gb": round(e["max_memory_allocated"] if "max_memory_allocated" in e   # a GPU run
                                  else e["cpu_mem_used_peak"] / 1024, 3),                # MB on a CPU
           "loss_deviation": loss_deviation}
    path = os.environ.get("LLMPRE_LAYOUT_REPORT")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row
