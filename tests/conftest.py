"""Shared test helpers: where the reference fixtures live, and test environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
MEGATRON = FIXTURES / "megatron_data"

# Paddle reads the thread count at import; tests run single-threaded unless told.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def needs(path: Path):
    """Skip (with the path in the reason) when a reference fixture is absent."""
    return pytest.mark.skipif(not path.exists(), reason=f"reference fixture absent: {path}")


def pytest_configure(config):
    """Parallel layout tests append their throughput rows here (printed at the end)."""
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"llmpre-layouts-{os.getpid()}.jsonl")
    if os.path.exists(path):
        os.unlink(path)
    os.environ["LLMPRE_LAYOUT_REPORT"] = path


def pytest_terminal_summary(terminalreporter):
    import json

    path = os.environ.get("LLMPRE_LAYOUT_REPORT")
    if not path or not os.path.exists(path):
        return
    rows = [json.loads(line) for line in open(path)]
    terminalreporter.section("parallel layouts: throughput per device (CPU, gloo, 2 cores shared)")
    terminalreporter.write_line(f"{'layout':<28} {'ranks':>5} {'tokens/card/s':>14} {'max memory GB':>14} "
                                f"{'max rel. loss dev.':>19}")
    for r in rows:
        dev = r.get("loss_deviation")
        terminalreporter.write_line(f"{r['layout']:<28} {r['ranks']:>5} {r['tokens_per_card_per_s']:>14.1f} "
                                    f"{r['max_memory_gb']:>14.3f} {'-' if dev is None else f'{dev:.1e}':>19}")
    os.unlink(path)
