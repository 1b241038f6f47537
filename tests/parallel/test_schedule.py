"""Pipeline schedules: the contract of llmpre.parallel.schedule, checked exhaustively."""

from __future__ import annotations

import pytest

from llmpre.errors import ConfigError
from llmpre.parallel.schedule import pipeline_schedule, simulate, timeline, transfers

CASES = [("1f1b", pp, m, 1) for pp in (1, 2, 3, 4) for m in (1, 2, 3, 4, 7, 8)]
CASES += [("interleaved", pp, m, v) for pp in (2, 3, 4) for v in (2, 3) for m in (pp, 2 * pp, 3 * pp)]


@pytest.mark.parametrize("kind,pp,m,v", CASES)
def test_every_microbatch_runs_forward_then_backward_once_per_chunk(kind, pp, m, v):
    for s in range(pp):
        plan = pipeline_schedule(kind, pp, m, s, v)
        assert sorted(plan) == sorted([(op, i, c) for op in "FB" for i in range(m) for c in range(v)])
        seen = set()
        for op, i, c in plan:
            if op == "B":
                assert ("F", i, c) in seen   # a backward follows its own forward on this rank
            seen.add((op, i, c))


@pytest.mark.parametrize("kind,pp,m,v", CASES)
def test_schedules_complete_without_deadlock(kind, pp, m, v):
    rounds = timeline(kind, pp, m, v)
    assert sum(len(r) for r in rounds) == 2 * pp * m * v
    for r in rounds:  # each rank runs at most one action per round
        assert len({s for s, _ in r}) == len(r)


@pytest.mark.parametrize("pp,m,v", [(2, 3, 1), (3, 4, 2), (4, 1, 3)])
def test_forward_only_schedule(pp, m, v):
    rounds = timeline("forward", pp, m, v)
    assert sum(len(r) for r in rounds) == pp * m * v
    assert all(op == "F" for r in rounds for _, (op, _, _) in r)


def test_1f1b_shape():
    # stage 0 of 4 with 8 microbatches: 3 warm-up forwards, then alternate, then drain
    plan = pipeline_schedule("1f1b", 4, 8, 0)
    assert [op for op, _, _ in plan[:5]] == ["F", "F", "F", "F", "B"]
    assert [op for op, _, _ in pipeline_schedule("1f1b", 4, 8, 3)[:4]] == ["F", "B", "F", "B"]
    # the last stage never holds more than one microbatch in flight
    in_flight, peak = 0, 0
    for op, _, _ in pipeline_schedule("1f1b", 4, 8, 3):
        in_flight += 1 if op == "F" else -1
        peak = max(peak, in_flight)
    assert peak == 1


def test_1f1b_needs_fewer_rounds_in_flight_than_gpipe_memory():
    # peak in-flight microbatches on stage 0 is pp, not m
    plan = pipeline_schedule("1f1b", 4, 16, 0)
    in_flight = peak = 0
    for op, _, _ in plan:
        in_flight += 1 if op == "F" else -1
        peak = max(peak, in_flight)
    assert peak == 4


def test_interleaving_shortens_the_bubble():
    plain = simulate("1f1b", 4, 8)
    inter = simulate("interleaved", 4, 8, 2)
    # per unit of work (actions per rank), interleaving wastes fewer rounds
    assert inter / (2 * 8 * 2) < plain / (2 * 8)


def test_transfers_follow_the_stages():
    rounds = timeline("interleaved", 2, 2, 2)
    msgs = [t for r in rounds for t in transfers(r, 2, 2)]
    # global stages 0..3 live on ranks 0,1,0,1: activations 0->1->0->1 and gradients back
    acts = sorted((src, dst, g) for src, dst, kind, mb, g in msgs if kind == "act" and mb == 0)
    assert acts == [(0, 1, 1), (0, 1, 3), (1, 0, 2)]
    grads = sorted((src, dst, g) for src, dst, kind, mb, g in msgs if kind == "grad" and mb == 0)
    assert grads == [(0, 1, 1), (1, 0, 0), (1, 0, 2)]


def test_bad_arguments():
    with pytest.raises(ConfigError, match="multiple of the pipeline degree"):
        pipeline_schedule("interleaved", 4, 6, 0, 2)
    with pytest.raises(ValueError, match="unknown"):
        pipeline_schedule("gpipe2", 2, 2, 0)
    with pytest.raises(ValueError, match="stage"):
        pipeline_schedule("1f1b", 2, 2, 5)
