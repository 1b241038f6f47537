"""llmpre report's memory figures: device memory (GB) for a GPU run, process
memory (MB) for a CPU run, and runs logged before the CPU names existed."""

from __future__ import annotations

import json

import pytest


def write_run(run_dir, memory: dict):
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for step in (1, 2, 3):
            entry = {"type": "train", "step": step, "loss": 9.0 - step, "learning_rate": 3e-4,
                     "consumed_tokens": step * 64, "interval_tokens_per_second_per_device": 100.0,
                     **{k: v * step for k, v in memory.items()}}
            fh.write(json.dumps(entry) + "\n")


@pytest.mark.parametrize("memory,keys,unit,summary", [
    ({"current_memory_allocated": 1.0, "current_memory_reserved": 1.5, "max_memory_allocated": 2.0,
      "max_memory_reserved": 2.5}, ["current_memory_allocated", "current_memory_reserved",
                                    "max_memory_allocated", "max_memory_reserved"], "GB",
     {"peak_memory_gb": 6.0, "peak_memory_reserved_gb": 7.5}),
    ({"cpu_mem_used": 400, "cpu_mem_used_peak": 500}, ["cpu_mem_used", "cpu_mem_used_peak"], "MB",
     {"peak_cpu_mem_mb": 1500}),
    ({"current_memory_allocated": 0.4, "max_memory_allocated": 0.5},     # an older run's metrics.jsonl
     ["current_memory_allocated", "max_memory_allocated"], "GB", {"peak_memory_gb": 1.5}),
])
def test_memory_plot_and_summary(tmp_path, monkeypatch, memory, keys, unit, summary):
    pytest.importorskip("matplotlib", reason="llmpre report needs matplotlib")
    import matplotlib.pyplot as plt

    from llmpre.report import plots

    write_run(tmp_path, memory)
    axes = []
    real_subplots = plt.subplots

    def subplots(*a, **k):
        fig, ax = real_subplots(*a, **k)
        axes.append(ax)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", subplots)
    out = plots.write_report(str(tmp_path))
    memory_ax = axes[-1]          # loss, learning_rate, throughput, then memory
    assert [line.get_label() for line in memory_ax.get_lines()] == keys
    assert memory_ax.get_ylabel() == unit
    assert {k: out[k] for k in summary} == summary
    assert not {"peak_memory_gb", "peak_memory_reserved_gb", "peak_cpu_mem_mb"} - set(summary) & set(out)
    assert (tmp_path / "report" / "memory.png").exists()
