"""The flat-buffer bucket layout (pure function)."""

from __future__ import annotations

import numpy as np
import pytest

from llmpre.parallel.flat import flat_layout


@pytest.mark.parametrize("numels,shards,cap", [
    ([5, 3, 7, 1], 1, None), ([5, 3, 7, 1], 3, None), ([5, 3, 7, 1], 2, 8), ([100], 4, 10),
    ([1, 1, 1, 1, 1], 4, 2), ([0, 6, 0, 5], 3, 6), ([13, 2, 9, 4, 4, 30, 1], 4, 16),
])
def test_layout_covers_every_element_once(numels, shards, cap):
    lay = flat_layout(numels, shards, cap)
    # parameters are back to back inside buckets, never crossing one
    for b in lay.buckets:
        assert (b.end - b.start) % shards == 0
        for i in b.params:
            assert b.start <= lay.offsets[i] and lay.offsets[i] + numels[i] <= b.end
    assert lay.buckets[0].start == 0 and lay.buckets[-1].end == lay.total
    assert all(a.end == b.start for a, b in zip(lay.buckets, lay.buckets[1:]))
    # the shards partition the buffer and the pieces partition every parameter
    owned = np.zeros(lay.total, int)
    covered = [np.zeros(n, int) for n in numels]
    for r in range(shards):
        for lo, hi in lay.shard_ranges(r):
            owned[lo:hi] += 1
        local = 0
        for p in lay.pieces(r):
            covered[p.param][p.param_start:p.param_end] += 1
            assert p.flat_start == lay.offsets[p.param] + p.param_start
        assert sum(p.param_end - p.param_start for p in lay.pieces(r)) <= lay.shard_numel(r)
    assert (owned == 1).all()
    assert all((c == 1).all() for c in covered)
    assert len({lay.shard_numel(r) for r in range(shards)}) == 1  # equal shards


def test_round_trip_through_shards():
    """Scatter parameters into per-rank shards with the pieces and gather them back."""
    rng = np.random.default_rng(0)
    numels = [7, 3, 12, 5]
    params = [rng.standard_normal(n) for n in numels]
    lay = flat_layout(numels, 3, bucket_numel=10)
    shards = []
    for r in range(3):
        shard = np.zeros(lay.shard_numel(r))
        for p in lay.pieces(r):
            shard[p.local_start:p.local_start + p.param_end - p.param_start] = params[p.param][p.param_start:p.param_end]
        shards.append(shard)
    flat = np.zeros(lay.total)
    for r in range(3):
        pos = 0
        for lo, hi in lay.shard_ranges(r):
            flat[lo:hi] = shards[r][pos:pos + hi - lo]
            pos += hi - lo
    for i, n in enumerate(numels):
        assert np.array_equal(flat[lay.offsets[i]:lay.offsets[i] + n], params[i])


def test_big_parameter_gets_its_own_bucket_and_alignment():
    lay = flat_layout([3, 50, 2], 2, bucket_numel=10, align=4)
    assert [b.params for b in lay.buckets] == [(0,), (1,), (2,)]
    assert all((b.end - b.start) % 8 == 0 for b in lay.buckets)
    with pytest.raises(ValueError):
        flat_layout([1], 0)


def test_boundaries_start_new_buckets():
    lay = flat_layout([4, 4, 4, 4, 4], 2, bucket_numel=100, boundaries=[2, 3])
    assert [b.params for b in lay.buckets] == [(0, 1), (2,), (3, 4)]
