"""Golden loss curves: the checked-in losses of two fixed runs, how to rerun
them, and the one comparison the tests and ``tools/golden_curves.py`` share.

The files are ``tests/assets/losses/<name>.json``; their README says what
each holds and where the tolerances come from. Regenerate them with
``tools/golden_curves.py --write`` and say in the commit message why they moved.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import layout_runner

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ROOT / "tests" / "assets" / "losses"
TIMEOUT = 900


@dataclass(frozen=True)
class Curve:
    """A checked-in curve and how closely a rerun must follow it.

    Steps 1..``tight_steps`` are compared one by one: |got - golden| <= rtol * |golden|.
    Later steps (only --check of tools/golden_curves.py runs that far) count as means
    over aligned windows of ``window`` steps, within ``window_rtol``: past the warmup
    this run is chaotic in float32, so single steps of two runs with equal math drift
    apart by up to a few percent. Eval losses are shown, not judged (4 points of
    32 sequences each: noisier than a window of 400 training sequences)."""
    name: str
    what: str
    steps: int              # the length --write records
    tight_steps: int        # per-step comparison up to here (and CI's run length)
    rtol: float
    flags: tuple = ()       # `llmpre train` flags (--output_dir and --max_steps are added)
    window: int = 50
    window_rtol: float = 0.0

    @property
    def path(self) -> Path:
        return LOSSES / f"{self.name}.json"


# The default quick run (`make train` = `llmpre train --model llama-tiny`) with
# losses logged every step instead of as 10-step means, decay_steps spelled out
# (its default is max_steps = 200) so a run cut to its first N steps keeps the same
# schedule, and one thread, so the curve does not depend on the machine's core
# count (one and two threads give different curves). Tolerances: README.md.
QUICKSTART = Curve(
    "llama-tiny-quickstart",
    "llama-tiny, quickstart values, bundled corpus, 200 steps (README's `make train`), one thread",
    steps=200, tight_steps=12, rtol=1e-5, window=50, window_rtol=1e-2,
    flags=("--model", "llama-tiny", "--logging_steps", "1", "--decay_steps", "200",
           "--num_threads", "1", "--disable_tqdm", "true", "--report_to", "none"))

# The single-process reference of tests/parallel/test_layouts.py: layout_runner.train(out, 1)
# (run() calls exactly that; the flags here record it in the file).
LAYOUT_REFERENCE = Curve(
    "layout-reference",
    "tests/layout_runner.py train(out, 1): llama-tiny cut to 4 layers, 5 steps, one process, one thread",
    steps=5, tight_steps=5, rtol=1e-5,
    flags=(*layout_runner.COMMON, "--per_device_train_batch_size", str(layout_runner.GLOBAL_BATCH)))

CURVES = {c.name: c for c in (QUICKSTART, LAYOUT_REFERENCE)}


def run(curve: Curve, output_dir, steps: int | None = None, extra: tuple = ()) -> str:
    """Train ``curve`` for ``steps`` (default: its full length) into
    ``output_dir``; returns the run's output. ``extra`` flags come last."""
    steps = curve.steps if steps is None else steps
    if curve is LAYOUT_REFERENCE:
        return layout_runner.train(output_dir, 1, *extra, steps=steps).output
    argv = [sys.executable, "-m", "llmpre.cli", "train", *curve.flags, "--max_steps", str(steps),
            "--output_dir", str(output_dir), *extra]
    env = {k: v for k, v in os.environ.items() if k != "PADDLE_TRAINER_ID"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{curve.name}: training timed out after {TIMEOUT} s:\n{out[-3000:]}")
    if proc.returncode != 0:
        raise AssertionError(f"{curve.name}: training failed (exit {proc.returncode}):\n{out[-3000:]}")
    return out


def read_run(output_dir) -> dict:
    """``{"loss": {step: loss}, "learning_rate": {...}, "eval_loss": {...}}`` of a run
    directory. Reads metrics.jsonl itself, as llmpre.train.monitor.read_metrics does
    (the last entry of a step wins, broken lines are skipped), without importing
    llmpre: tools/golden_curves.py --commit runs another build of it."""
    run: dict = {"loss": {}, "learning_rate": {}, "eval_loss": {}}
    with open(os.path.join(str(output_dir), "metrics.jsonl"), encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(e, dict) or "step" not in e:
                continue
            for key in {"train": ("loss", "learning_rate"), "eval": ("eval_loss",)}.get(e.get("type"), ()):
                run[key][int(e["step"])] = e[key]
    return {k: dict(sorted(v.items())) for k, v in run.items()}


def load(curve: Curve) -> dict:
    """The checked-in file, with integer steps."""
    data = json.loads(curve.path.read_text())
    for key in ("loss", "learning_rate", "eval_loss"):
        data[key] = {int(s): v for s, v in data.get(key, {}).items()}
    return data


def compare(curve: Curve, got: dict, want: dict) -> dict:
    """Judge a run (``read_run``'s dict; ``eval_loss`` optional) against a golden
    file (``load``'s dict): per-step rows up to ``tight_steps``, window means after
    (only windows the run completes), eval losses. ``ok`` is the verdict."""
    loss, gold = got["loss"], want["loss"]
    steps = sorted(loss)
    prefix = steps == list(range(1, len(steps) + 1)) and len(steps) <= len(gold)

    def row(label, g, w, tol):
        rel = abs(g - w) / abs(w) if w is not None else float("inf")
        return {"step": label, "golden": w, "got": g, "rel": rel, "tol": tol,
                "ok": tol is None or rel <= tol}

    rows = [row(s, loss[s], gold.get(s), curve.rtol if s <= curve.tight_steps else None)
            for s in steps]
    windows = []
    if curve.window_rtol and prefix:
        for start in range(1, len(steps) - curve.window + 2, curve.window):
            span = range(start, start + curve.window)
            if span[-1] <= curve.tight_steps:
                continue
            mean = lambda d: sum(d[s] for s in span) / curve.window  # noqa: E731
            windows.append(row(f"{span[0]}-{span[-1]}", mean(loss), mean(gold), curve.window_rtol))
    evals = [row(f"eval {s}", got["eval_loss"][s], want["eval_loss"][s], None)
             for s in sorted(set(got.get("eval_loss", {})) & set(want.get("eval_loss", {})))]
    ok = prefix and all(r["ok"] for r in rows + windows + evals)
    return {"rows": rows, "windows": windows, "evals": evals, "prefix": prefix, "ok": ok}


def table(result: dict, only_failing: bool = False) -> str:
    """Per-step (then window, then eval) table: golden, got, relative difference, tolerance."""
    lines = [f"{'step':>9} {'golden':>12} {'got':>12} {'rel. diff':>10} {'tolerance':>10}"]
    for r in result["rows"] + result["windows"] + result["evals"]:
        if only_failing and r["ok"]:
            continue
        golden = "-" if r["golden"] is None else f"{r['golden']:.8f}"
        tol = "(shown)" if r["tol"] is None else f"{r['tol']:.0e}"
        lines.append(f"{r['step']:>9} {golden:>12} {r['got']:>12.8f} {r['rel']:>10.2e} {tol:>10}"
                     f"{'' if r['ok'] else '  FAIL'}")
    return "\n".join(lines)


def summary(curve: Curve, result: dict) -> str:
    judged = [r for r in result["rows"] + result["windows"] + result["evals"] if r["tol"] is not None]
    bad = [r for r in judged if not r["ok"]]
    worst = max(judged, key=lambda r: r["rel"] / r["tol"]) if judged else None
    return (f"{curve.name}: {'OK' if result['ok'] else 'FAIL'}: {len(judged)} comparisons, {len(bad)} "
            f"over tolerance" + (f"; worst (relative to its tolerance): {worst['step']} at "
                                 f"{worst['rel']:.2e} (tolerance {worst['tol']:.0e})" if worst else "")
            + ("" if result["prefix"] else f"; logged steps are not 1..N for an N up to the golden "
               f"curve's {curve.steps} (log every step: --logging_steps 1)"))


def assert_matches(curve: Curve, got_losses: dict) -> None:
    """``got_losses`` (step -> loss, steps 1..N) follows the golden curve: the
    message shows every comparison that is off."""
    result = compare(curve, {"loss": got_losses}, load(curve))
    assert result["ok"], (
        f"{summary(curve, result)}\n{table(result, only_failing=len(result['rows']) > 30)}\n"
        f"golden: {curve.path.relative_to(ROOT)}. If the change is meant to move the curve: "
        f"tools/golden_curves.py --write {curve.name}, and say why in the commit message.")


def provenance(output: str = "") -> dict:
    """What produced a curve: the llmpre the runs imported (this checkout's commit and
    its changed source files, or the commit named by LLMPRE_GOLDEN_COMMIT when the
    runs imported a build of that commit), Paddle, the ops, the host."""
    probe = ("import json, platform, paddle, llmpre, llmpre.ops; s = llmpre.ops.status(); "
             "print(json.dumps({'file': llmpre.__file__, 'paddle': paddle.__version__, "
             "'python': platform.python_version(), 'isa': s.get('cpu_isa'), 'lib': s.get('library')}))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    info = json.loads(r.stdout.strip().splitlines()[-1])

    def git(*args):
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    if Path(info["file"]).resolve().is_relative_to(ROOT / "python"):
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--", "python", "cpp", "cuda", "paddle_ops", "CMakeLists.txt")
        dirty = dirty.splitlines() if dirty else []
        source = "this checkout (editable install)"
    else:
        commit = os.environ.get("LLMPRE_GOLDEN_COMMIT")
        dirty = []
        source = f"a build of that commit at {Path(info['file']).parent}"

    def line(key):
        return next((l.split(" - ", 1)[-1] for l in output.splitlines() if key in l), None)

    return {"llmpre_commit": commit,
            "llmpre_source": source,
            "uncommitted_source_changes": dirty,
            "paddle_version": info["paddle"],
            "python": info["python"],
            "cpu": platform.processor() or platform.machine(),
            "cpu_isa": info["isa"],
            "ops_log_line": line(" - ops: "),
            "model_log_line": line("CPU threads")}
