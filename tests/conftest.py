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
