"""examples/use_llmpre_ops.py (another Paddle project using llmpre.ops) runs and trains."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import llmpre.ops as ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(bool(ops.status()["unavailable"]), reason=f"ops missing: {ops.status()['unavailable']}")
def test_use_llmpre_ops_example_trains():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "use_llmpre_ops.py")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = [float(x) for x in re.findall(r"step \d+: loss ([0-9.]+)", proc.stdout)]
    assert len(losses) == 5 and losses[-1] < losses[0], proc.stdout
    diff = float(re.search(r"max \|difference\| ([0-9.e+-]+)", proc.stdout).group(1))
    assert diff < 1e-5, proc.stdout
