"""llmpre report's plots: readable axes on long runs, skipped steps marked."""

from __future__ import annotations

import json

import pytest


def write_metrics(run_dir, steps, tokens_per_step, skipped=()):
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for step in range(10, steps + 1, 10):
            entry = {"type": "train", "step": step, "loss": 9.0 - step / steps * 4,
                     "learning_rate": 3e-4, "consumed_tokens": step * tokens_per_step,
                     "interval_tokens_per_second_per_device": 1000.0,
                     "current_memory_allocated": 1.0, "max_memory_allocated": 1.5}
            fh.write(json.dumps(entry) + "\n")
        for step in skipped:
            fh.write(json.dumps({"type": "skip", "step": step, "reason": "skipped"}) + "\n")


def _overlaps(boxes):
    boxes = sorted(boxes, key=lambda b: b.x0)
    return [(a, b) for a, b in zip(boxes, boxes[1:]) if a.x1 > b.x0]


@pytest.mark.parametrize("steps,tokens_per_step", [(200, 4096), (2_000, 480), (100_000, 4_194_304)])
def test_token_axis_labels_do_not_overlap(tmp_path, monkeypatch, steps, tokens_per_step):
    pytest.importorskip("matplotlib", reason="llmpre report needs matplotlib")
    import matplotlib.pyplot as plt

    from llmpre.report import plots

    # up to ~1e6 tokens matplotlib writes every digit (819200, 960000): the labels collided
    write_metrics(tmp_path, steps, tokens_per_step, skipped=(120, 150))
    figures = []
    real_subplots = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: figures.append(real_subplots(*a, **k)) or figures[-1])
    summary = plots.write_report(str(tmp_path))
    fig, (by_step, by_tokens) = figures[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)          # write_report closed the figure: draw it again
    canvas.draw()
    renderer = canvas.get_renderer()
    lo, hi = by_tokens.get_xlim()
    labels = [t for t in by_tokens.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert 2 <= len(labels) <= 7
    assert all(t.get_text()[-1] in "kMBT" or t.get_text() == "0" for t in labels), \
        [t.get_text() for t in labels]
    assert not _overlaps([t.get_window_extent(renderer) for t in labels])
    assert summary["skipped_steps"] == 2 and summary["skipped_at_steps"] == "120, 150"
    red = [l for l in by_step.get_lines() if l.get_color() == "red"]
    assert len(red) == 2                     # one marker per skipped step
    assert (tmp_path / "report" / "loss.png").stat().st_size > 0
