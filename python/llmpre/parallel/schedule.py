"""Pipeline schedules as one pure function.

Contract: :func:`pipeline_schedule` returns, for one pipeline rank, the
ordered list of actions it performs in one optimizer step. An action is
``("F", microbatch, chunk)`` (forward) or ``("B", microbatch, chunk)``
(backward); ``chunk`` is the virtual stage index on this rank (always 0
without interleaving). The model chunk ``chunk`` of rank ``stage`` is the
global pipeline stage ``chunk * num_stages + stage``. Communication is
implied: a forward receives its input from the previous global stage (unless
it is the first) and sends its output to the next (unless it is the last); a
backward receives the output gradient from the next global stage and sends
the input gradient to the previous one. Executing every rank's list in order,
with matching sends and receives, completes without deadlock and runs every
microbatch forward then backward through every chunk exactly once.

- ``1f1b`` (PipeDream-flush / Megatron's non-interleaved schedule): stage
  ``s`` runs ``min(pp - s - 1, m)`` warm-up forwards, then alternates one
  forward and one backward, then drains the remaining backwards. At most
  ``pp - s`` microbatches are in flight, instead of ``m`` for GPipe.
- ``interleaved`` (Megatron's virtual pipeline, ``vpp`` chunks per rank):
  microbatches go through the chunks in groups of ``pp``; warm-up is
  ``(pp - s - 1) * 2 + (vpp - 1) * pp`` forwards; needs ``m % pp == 0``.
- ``forward``: forwards only (evaluation), microbatch by microbatch.
"""

from __future__ import annotations

from llmpre.errors import ConfigError


def pipeline_schedule(kind: str, num_stages: int, num_microbatches: int, stage: int,
                      num_chunks: int = 1) -> list[tuple[str, int, int]]:
    pp, m = num_stages, num_microbatches
    if not 0 <= stage < pp:
        raise ValueError(f"stage {stage} outside 0..{pp - 1}")
    if m < 1:
        raise ValueError("need at least one microbatch")
    if kind == "forward":   # evaluation: every microbatch through every chunk, no backward
        return [("F", i, c) for i in range(m) for c in range(num_chunks)]
    if kind == "1f1b":
        if num_chunks != 1:
            raise ValueError("1f1b has one chunk per rank; use 'interleaved' for virtual stages")
        warmup = min(pp - stage - 1, m)
        actions = [("F", i, 0) for i in range(warmup)]
        f, b = warmup, 0
        while f < m:
            actions.append(("F", f, 0))
            f += 1
            actions.append(("B", b, 0))
            b += 1
        actions += [("B", i, 0) for i in range(b, m)]
        return actions
    if kind == "interleaved":
        v = num_chunks
        if m % pp:
            raise ConfigError(f"the interleaved schedule needs the number of microbatches ({m}) "
                              f"to be a multiple of the pipeline degree ({pp})")
        total = m * v

        def chunk_of(k: int, forward: bool) -> int:
            c = (k % (pp * v)) // pp
            return c if forward else v - 1 - c

        def micro_of(k: int) -> int:
            return (k // (pp * v)) * pp + k % pp

        warmup = min(total, (pp - stage - 1) * 2 + (v - 1) * pp)
        actions = [("F", micro_of(k), chunk_of(k, True)) for k in range(warmup)]
        for k in range(warmup, total):
            actions.append(("F", micro_of(k), chunk_of(k, True)))
            j = k - warmup
            actions.append(("B", micro_of(j), chunk_of(j, False)))
        for j in range(total - warmup, total):
            actions.append(("B", micro_of(j), chunk_of(j, False)))
        return actions
    raise ValueError(f"unknown pipeline schedule {kind!r} (1f1b or interleaved)")


def timeline(kind: str, num_stages: int, num_microbatches: int, num_chunks: int = 1):
    """Lock-step execution of every rank's schedule.

    Returns a list of rounds; round ``t`` holds ``(rank, action)`` for each rank
    that runs an action in it. In each round a rank runs its next action if its
    input was produced in an earlier round (inputs travel between rounds), so
    rank order is kept and nothing waits on itself. Raises RuntimeError on a
    deadlock. :func:`transfers` lists what moves between ranks after a round.
    """
    pp, v = num_stages, num_chunks
    plans = [pipeline_schedule(kind, pp, num_microbatches, s, v) for s in range(pp)]
    pos = [0] * pp
    done_f: set = set()   # (global_stage, microbatch) forwards completed
    done_b: set = set()
    last = pp * v - 1
    rounds = []
    while any(pos[s] < len(plans[s]) for s in range(pp)):
        ran = []
        for s in range(pp):
            if pos[s] >= len(plans[s]):
                continue
            op, mb, chunk = plans[s][pos[s]]
            g = chunk * pp + s
            if op == "F":
                ready = g == 0 or (g - 1, mb) in done_f
            else:
                ready = (g, mb) in done_f and (g == last or (g + 1, mb) in done_b)
            if ready:
                ran.append((s, plans[s][pos[s]]))
        if not ran:
            raise RuntimeError(f"deadlock: positions {pos} of {[len(p) for p in plans]}")
        for s, (op, mb, chunk) in ran:
            (done_f if op == "F" else done_b).add((chunk * pp + s, mb))
            pos[s] += 1
        rounds.append(ran)
    return rounds


def transfers(round_actions, num_stages: int, num_chunks: int = 1):
    """Messages after one round, in one canonical order both ends agree on:
    ``(src_rank, dst_rank, kind, microbatch, dst_global_stage)`` with ``kind``
    "act" (a forward output going to the next stage) or "grad" (an input
    gradient going to the previous stage)."""
    pp, last = num_stages, num_stages * num_chunks - 1
    out = []
    for s, (op, mb, chunk) in round_actions:
        g = chunk * pp + s
        if op == "F" and g < last:
            out.append((s, (g + 1) % pp, "act", mb, g + 1))
        elif op == "B" and g > 0:
            out.append((s, (g - 1) % pp, "grad", mb, g - 1))
    return sorted(out)


def simulate(kind: str, num_stages: int, num_microbatches: int, num_chunks: int = 1) -> int:
    """Number of lock-step rounds the schedules need (raises on a deadlock)."""
    return len(timeline(kind, num_stages, num_microbatches, num_chunks))
