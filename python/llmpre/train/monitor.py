"""Where training metrics go: ``metrics.jsonl`` always, VisualDL or TensorBoard
when installed.

``<output_dir>/metrics.jsonl`` holds one JSON object per event
(``{"type": "train" | "eval" | "test" | "skip" | "stop" | "train_metrics", "step": N, ...}``;
a train entry has the log line's keys, memory included: the four device-memory
figures in GB on a GPU, ``cpu_mem_used``/``cpu_mem_used_peak`` in MB on a CPU;
``train_metrics`` is the end-of-training summary of train_results.json). A
non-finite value is stored as null (JSON has no nan/inf): a logging interval
whose steps were all skipped has ``"loss": null`` and its value as a string in
``nonfinite_loss``; ``interval_skipped_steps`` counts the skipped steps of the
interval and ``skipped_steps`` those of the run (also a scalar, so VisualDL and
TensorBoard show skips; a null loss is not drawn there). A resumed run
appends to it, so a step can appear twice (the second time after a restart):
readers keep the last entry per (type, step) — :func:`read_metrics` does.

Scalars go to ``report_to``: ``visualdl`` (PaddleNLP's default), ``tensorboard``
(tensorboardX, or torch's writer), ``none``, or ``auto`` (the default: VisualDL
when importable, else TensorBoard when importable, else none), under
``logging_dir`` (default ``<output_dir>/runs``).
"""

from __future__ import annotations

import json
import logging
import os

from llmpre.errors import ConfigError

logger = logging.getLogger("llmpre")

SCALARS = {
    "train": ("loss", "learning_rate", "grad_norm", "interval_tokens_per_second_per_device",
              "current_memory_allocated", "current_memory_reserved", "max_memory_allocated",
              "max_memory_reserved", "cpu_mem_used", "cpu_mem_used_peak", "loss_scale", "skipped_steps"),
    "eval": ("eval_loss",),
    "test": ("test_loss",),
}


def _scalar_writer(report_to: str, logdir: str):
    """(kind, writer) with ``add_scalar(tag, value, step)`` semantics, or (None, None)."""
    candidates = ["visualdl", "tensorboard"] if report_to == "auto" else [report_to]
    for kind in candidates:
        if kind == "none":
            return None, None
        if kind == "visualdl":
            try:
                from visualdl import LogWriter
            except ImportError:
                if report_to == "visualdl":
                    raise ConfigError("report_to=visualdl but VisualDL is not installed: "
                                      "pip install visualdl (or report_to none)") from None
                continue
            writer = LogWriter(logdir=logdir)
            return kind, _VisualDL(writer)
        if kind == "tensorboard":
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    if report_to == "tensorboard":
                        raise ConfigError("report_to=tensorboard but neither tensorboardX nor "
                                          "torch is installed: pip install tensorboardX") from None
                    continue
            return kind, _TensorBoard(SummaryWriter(logdir))
    return None, None


class _VisualDL:
    def __init__(self, writer):
        self.w = writer

    def add(self, tag, value, step):
        self.w.add_scalar(tag=tag, value=value, step=step)

    def flush(self):
        self.w.flush()

    def close(self):
        self.w.close()


class _TensorBoard:
    def __init__(self, writer):
        self.w = writer

    def add(self, tag, value, step):
        self.w.add_scalar(tag, value, step)

    def flush(self):
        self.w.flush()

    def close(self):
        self.w.close()


class Monitor:
    def __init__(self, output_dir: str, report_to: str = "auto", logging_dir: str | None = None,
                 enabled: bool = True):
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.enabled = enabled
        self.kind, self.writer = None, None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        _terminate_partial_line(self.path)
        logdir = logging_dir or os.path.join(output_dir, "runs")
        self.kind, self.writer = _scalar_writer(report_to, logdir)
        if self.kind:
            logger.info("Scalars go to %s in %s", self.kind, logdir)

    def log(self, kind: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        entry = {"type": kind, "step": step, **values}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        if self.writer is not None:
            for key in SCALARS.get(kind, ()):
                value = values.get(key)
                if isinstance(value, (int, float)):
                    self.writer.add(f"{kind}/{key}", float(value), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _terminate_partial_line(path: str) -> None:
    """A process killed mid-append leaves a partial last line; end it so the
    next entry starts on its own line (the partial one is skipped by readers)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) != b"\n":
            fh.write(b"\n")


def read_metrics(output_dir: str) -> dict[str, list[dict]]:
    """Entries of ``metrics.jsonl`` by type, one per step (the last one written
    wins, which after a resume is the recomputed one), sorted by step. Partial
    or corrupt lines (a run killed mid-write, or still running) are skipped."""
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise ConfigError(f"{output_dir}: no metrics.jsonl; is this an llmpre run directory?")
    by_kind: dict[str, dict[int, dict]] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(entry, dict) or "type" not in entry or "step" not in entry:
                continue
            by_kind.setdefault(entry["type"], {})[int(entry["step"])] = entry
    return {k: [v[s] for s in sorted(v)] for k, v in by_kind.items()}
