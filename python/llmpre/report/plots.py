"""PNG plots and a short summary from ``<run_dir>/metrics.jsonl``.

Works on a running run (it reads what has been written so far, skipping a
partial last line) and on a resumed one (one entry per step, the last written).
"""

from __future__ import annotations

import json
import os
import statistics

from llmpre.errors import ConfigError
from llmpre.train.monitor import read_metrics


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("llmpre report needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _series(entries, key, x="step"):
    pts = [(e[x], e[key]) for e in entries if key in e and x in e and e[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _save(fig, path):
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def write_report(run_dir: str, out_dir: str | None = None) -> dict:
    """Write loss.png, learning_rate.png, throughput.png, memory.png and
    summary.txt into ``out_dir`` (default ``<run_dir>/report``); returns the
    summary as a dict."""
    metrics = read_metrics(run_dir)
    train = metrics.get("train", [])
    evals = metrics.get("eval", [])
    if not train:
        raise ConfigError(f"{run_dir}: metrics.jsonl has no training entries yet")
    per_step = _tokens_per_step(run_dir)
    if per_step:  # runs logged before consumed_tokens existed
        for e in train:
            e.setdefault("consumed_tokens", e["step"] * per_step)
    out_dir = out_dir or os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    plt = _pyplot()

    fig, (by_step, by_tokens) = plt.subplots(1, 2, figsize=(11, 4))
    by_step.plot(*_series(train, "loss"), label="train loss")
    skipped = [e["step"] for e in metrics.get("skip", [])]
    if skipped:   # skipped (non-finite) steps: marked, never drawn as a loss
        for i, step in enumerate(skipped):
            by_step.axvline(step, color="red", alpha=0.35, lw=0.8,
                            label=f"skipped step ({len(skipped)})" if i == 0 else None)
    if evals:
        by_step.plot(*_series(evals, "eval_loss"), "o-", label="eval loss")
    by_step.set_xlabel("step")
    by_step.set_ylabel("loss")
    by_step.legend()
    by_step.grid(alpha=0.3)
    tokens_of_step = {e["step"]: e.get("consumed_tokens") for e in train}
    by_tokens.plot(*_series(train, "loss", x="consumed_tokens"), label="train loss")
    eval_pts = [(tokens_of_step.get(e["step"]), e["eval_loss"]) for e in evals
                if tokens_of_step.get(e["step"]) is not None]
    if eval_pts:
        by_tokens.plot(*zip(*eval_pts), "o-", label="eval loss")
    by_tokens.set_xlabel("tokens")
    _compact_ticks(by_tokens)
    by_tokens.legend()
    by_tokens.grid(alpha=0.3)
    _save(fig, os.path.join(out_dir, "loss.png"))
    plt.close(fig)

    for name, keys, ylabel in (
        ("learning_rate", ["learning_rate"], "learning rate"),
        ("throughput", ["interval_tokens_per_second_per_device"], "tokens/s per device"),
        ("memory", *_memory_series(train)),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in keys:
            ax.plot(*_series(train, key), label=key)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend()
        _save(fig, os.path.join(out_dir, f"{name}.png"))
        plt.close(fig)

    summary = _summary(run_dir, train, evals, metrics.get("skip", []))
    text = "\n".join(f"{k}: {v}" for k, v in summary.items()) + "\n"
    tmp = os.path.join(out_dir, "summary.txt.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, os.path.join(out_dir, "summary.txt"))
    return summary


# memory keys by unit: device memory in GB (a GPU run), process memory in MB (a CPU run);
# runs logged before cpu_mem_* existed have current/max_memory_allocated in GB on either
MEMORY_GB = ("current_memory_allocated", "current_memory_reserved", "max_memory_allocated", "max_memory_reserved")
MEMORY_MB = ("cpu_mem_used", "cpu_mem_used_peak")


def _memory_series(train) -> tuple[list[str], str]:
    """The memory keys the run logged and their unit."""
    logged = {k for e in train for k in e}
    device = [k for k in MEMORY_GB if k in logged]
    if device:
        return device, "GB"
    return [k for k in MEMORY_MB if k in logged], "MB"


def _compact_ticks(ax) -> None:
    """Token counts as 1.2M / 3.4B with at most 6 ticks, so labels never overlap."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    def fmt(x, _pos):
        for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= div:
                return f"{x / div:g}{unit}"
        return f"{x:g}"

    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.xaxis.set_major_formatter(FuncFormatter(fmt))


def _tokens_per_step(run_dir: str) -> int | None:
    try:
        with open(os.path.join(run_dir, "run_config.json"), encoding="utf-8") as fh:
            t = json.load(fh)["training"]
        return (t["per_device_train_batch_size"] * t["gradient_accumulation_steps"]
                * t["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _summary(run_dir, train, evals, skips) -> dict:
    last = train[-1]
    speeds = [e["interval_tokens_per_second_per_device"] for e in train
              if "interval_tokens_per_second_per_device" in e]
    steady = speeds[1:] or speeds  # the first interval includes start-up
    max_steps = None
    try:
        with open(os.path.join(run_dir, "run_config.json"), encoding="utf-8") as fh:
            max_steps = json.load(fh)["training"].get("decay_steps")
    except (OSError, ValueError, KeyError):
        pass
    finished = os.path.exists(os.path.join(run_dir, "model.safetensors"))
    finite = [e for e in train if isinstance(e.get("loss"), (int, float))]

    def loss_of(e):   # an interval whose steps were all skipped has no loss
        return e["loss"] if e in finite else f"none (skipped: {e.get('nonfinite_loss', 'non-finite')})"

    out = {
        "run_dir": os.path.abspath(run_dir),
        "status": "finished (final weights saved)" if finished else "running or interrupted",
        "last_logged_step": last["step"],
        "tokens": last.get("consumed_tokens", "n/a"),
        "first_loss": loss_of(train[0]),
        "last_loss": loss_of(last),
        "min_loss": min(e["loss"] for e in finite) if finite else "none (every logged step was skipped)",
    }
    if max_steps:
        out["schedule_steps"] = max_steps
    if evals:
        best = min(evals, key=lambda e: e["eval_loss"])
        out["last_eval_loss"] = f"{evals[-1]['eval_loss']} (step {evals[-1]['step']})"
        out["best_eval_loss"] = f"{best['eval_loss']} (step {best['step']})"
    if speeds:
        out["tokens_per_second_per_device_median"] = round(statistics.median(steady), 2)
    for key, label, digits in (("max_memory_allocated", "peak_memory_gb", 3),
                               ("max_memory_reserved", "peak_memory_reserved_gb", 3),
                               ("cpu_mem_used_peak", "peak_cpu_mem_mb", None)):
        peaks = [e[key] for e in train if isinstance(e.get(key), (int, float))]
        if peaks:
            out[label] = round(max(peaks), digits) if digits else max(peaks)
    out["skipped_steps"] = len(skips)
    if skips:
        shown = ", ".join(str(e["step"]) for e in skips[:20]) + (", ..." if len(skips) > 20 else "")
        out["skipped_at_steps"] = shown
    with_skips = [e for e in train if e.get("interval_skipped_steps")]
    if with_skips and not skips:   # metrics without skip entries still tell
        out["skipped_steps"] = sum(e["interval_skipped_steps"] for e in with_skips)
    times = [e["time"] for e in train if "time" in e]
    if len(times) > 1:
        out["wall_time_between_first_and_last_log_s"] = round(times[-1] - times[0], 1)
    return out
