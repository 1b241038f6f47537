"""Flat-buffer layout for gradient reduction and optimizer sharding (a pure function).

Parameters (in a fixed order) are packed back to back into one flat buffer,
grouped into buckets of about ``bucket_numel`` elements (a parameter never
spans two buckets; one larger than the cap gets a bucket of its own). Each
bucket is padded so it splits into ``num_shards`` equal parts; rank ``r`` owns
part ``r`` of every bucket (Megatron's distributed-optimizer layout), so one
reduce-scatter per bucket leaves each rank exactly the gradient elements it
updates, and one all-gather per bucket returns the updated parameters.

    |------- bucket 0 -------|---------- bucket 1 ----------|
    | p0 | p1 | p2 |pad| ... | p3           | p4  |pad      |
    |  r0  |  r1  |  r2 |    |   r0    |   r1   |   r2   |    (num_shards = 3)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bucket:
    start: int            # flat offset of the bucket
    end: int              # exclusive; (end - start) % num_shards == 0
    params: tuple         # indices of the parameters inside, in order


@dataclass(frozen=True)
class Piece:
    param: int            # parameter index
    param_start: int      # element range inside the flattened parameter
    param_end: int
    flat_start: int       # where it sits in the flat buffer
    local_start: int      # where it sits in the rank's concatenated shard


@dataclass(frozen=True)
class FlatLayout:
    numels: tuple
    offsets: tuple        # flat start of each parameter
    total: int            # flat buffer length (with padding)
    num_shards: int
    buckets: tuple

    def shard_ranges(self, rank: int) -> list[tuple[int, int]]:
        """The flat ranges rank ``rank`` owns, one per bucket, in order."""
        out = []
        for b in self.buckets:
            part = (b.end - b.start) // self.num_shards
            out.append((b.start + rank * part, b.start + (rank + 1) * part))
        return out

    def shard_numel(self, rank: int) -> int:
        return sum(e - s for s, e in self.shard_ranges(rank))

    def pieces(self, rank: int) -> list[Piece]:
        """The parts of parameters rank ``rank`` owns, in shard order."""
        out, local = [], 0
        for (lo, hi), b in zip(self.shard_ranges(rank), self.buckets):
            for i in b.params:
                p_lo, p_hi = self.offsets[i], self.offsets[i] + self.numels[i]
                a, z = max(lo, p_lo), min(hi, p_hi)
                if a < z:
                    out.append(Piece(i, a - p_lo, z - p_lo, a, local + a - lo))
            local += hi - lo
        return out


def flat_layout(numels, num_shards: int = 1, bucket_numel: int | None = None,
                align: int = 1, boundaries=()) -> FlatLayout:
    """Pack parameters of ``numels`` elements; see the module docstring.
    ``boundaries``: parameter indices that must start a new bucket (stage 3
    gathers one bucket per decoder layer)."""
    if num_shards < 1 or align < 1:
        raise ValueError("num_shards and align must be >= 1")
    numels = tuple(int(n) for n in numels)
    if any(n < 0 for n in numels):
        raise ValueError("parameter sizes must be >= 0")
    cap = bucket_numel if bucket_numel and bucket_numel > 0 else max(1, sum(numels))
    unit = num_shards * align
    offsets = [0] * len(numels)
    buckets = []
    current: list = []
    start = 0
    filled = 0
    cuts = set(boundaries)
    for i, n in enumerate(numels):
        if current and (filled + n > cap or i in cuts):
            end = start + -(-filled // unit) * unit
            buckets.append(Bucket(start, end, tuple(current)))
            start, current, filled = end, [], 0
        offsets[i] = start + filled
        filled += n
        current.append(i)
    if current or not buckets:
        end = start + max(1, -(-filled // unit)) * unit
        buckets.append(Bucket(start, end, tuple(current)))
    return FlatLayout(numels, tuple(offsets), buckets[-1].end, num_shards, tuple(buckets))
