"""Golden loss curves: a rerun follows the checked-in curve (tests/assets/losses/).

The default quick run (`llmpre train --model llama-tiny`, 200 steps) takes
minutes on two cores, so CI trains its first 12 steps (~10 s): the same
quickstart configuration on one thread, with decay_steps pinned at its default
200 so the shortened run keeps the full run's schedule (the train split is one
epoch either way, so the batches are the same too: the 12 losses equal the full
run's bit for bit), and compares each logged loss with the checked-in 200-step
curve within a relative 1e-5.

Why 12 steps and 1e-5 (measured; tests/assets/losses/README.md has the table):
runs are bitwise repeatable on one machine and thread count. Changes with equal
math (two threads instead of one; the parallel engine with its own AdamW;
gradient accumulation 2 x 4 instead of 1 x 8) move steps 1..12 by at most
6.9e-8, so 1e-5 leaves a factor ~145. From step 13 the run turns chaotic: the
same changes give up to 1.9e-6 at step 13 and 2.1e-5 at step 18, so no per-step
tolerance past step 12 separates equal math from a real change. A learning rate
1% higher or lower moves each of steps 2..12 by 8.2e-5 to 2.1e-3 (step 1 comes
before any update): both fail on 11 of 12 steps. Steps past 12 are checked as
50-step means (rel. 1e-2) by `tools/golden_curves.py --check`.
"""

from __future__ import annotations

import pytest

import golden


def test_quickstart_first_steps_follow_the_golden_curve(tmp_path):
    curve = golden.QUICKSTART
    golden.run(curve, tmp_path, steps=curve.tight_steps)
    got = golden.read_run(tmp_path)
    golden.assert_matches(curve, got["loss"])
    want = golden.load(curve)["learning_rate"]
    assert got["learning_rate"] == {s: want[s] for s in got["learning_rate"]}, \
        "the shortened run's learning-rate schedule differs from the golden run's"


@pytest.mark.parametrize("curve", list(golden.CURVES.values()), ids=list(golden.CURVES))
def test_golden_file_records_its_run(curve):
    """Each file holds steps 1..N, the command the curve definition runs now, and its provenance."""
    data = golden.load(curve)
    assert sorted(data["loss"]) == list(range(1, curve.steps + 1))
    assert sorted(data["learning_rate"]) == sorted(data["loss"])
    assert data["steps"] == curve.steps
    assert data["command"].split()[2:-4] == list(curve.flags), \
        f"{curve.path.name} was written with other flags than tests/golden.py runs: regenerate it"
    for key in ("llmpre_commit", "paddle_version", "model_log_line", "generated"):
        assert data.get(key), key
    assert "1 CPU threads" in data["model_log_line"]


def test_comparison_catches_one_step_just_over_tolerance():
    """The comparison itself: a copy of the golden curve passes, nudged by half the
    tolerance it passes, and one step nudged by twice the tolerance fails naming that step;
    past tight_steps only window means count."""
    curve = golden.QUICKSTART
    want = golden.load(curve)["loss"]
    prefix = {s: want[s] for s in range(1, curve.tight_steps + 1)}
    golden.assert_matches(curve, prefix)
    golden.assert_matches(curve, {s: v * (1 + curve.rtol / 2) for s, v in prefix.items()})
    with pytest.raises(AssertionError, match=r"1 over tolerance(.|\n)* 7 .*FAIL"):
        golden.assert_matches(curve, {**prefix, 7: prefix[7] * (1 + 2 * curve.rtol)})
    full = dict(want)
    full[100] *= 1.05            # one late step: its window's mean moves 1e-3 (tolerance 1e-2)
    golden.assert_matches(curve, full)
    shifted = {s: v * (1.02 if 101 <= s <= 150 else 1) for s, v in want.items()}   # a window 2% off
    with pytest.raises(AssertionError, match="101-150"):
        golden.assert_matches(curve, shifted)
    with pytest.raises(AssertionError, match="not 1..N"):
        golden.assert_matches(curve, {s: want[s] for s in (10, 20)})
