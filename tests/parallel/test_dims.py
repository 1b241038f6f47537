"""The parallel layout: rank coordinates, groups and validation messages."""

from __future__ import annotations

import types

import pytest

from llmpre.errors import ConfigError
from llmpre.parallel.dims import ParallelDims, dims_from_args


def test_coords_and_groups_are_consistent():
    d = ParallelDims(dp=2, sharding=2, tp=2, pp=2)
    assert d.world_size == 16
    seen = set()
    for r in range(16):
        c = d.coords(r)
        assert d.rank_of(**c) == r
        seen.add(tuple(c.values()))
    assert len(seen) == 16
    for axis in ("tp", "pp", "dp", "sharding", "data"):
        groups = d.group_ranks(axis)
        members = sorted(r for g in groups for r in g)
        assert members == list(range(16))              # a partition of the world
    assert d.group_ranks("tp")[0] == [0, 1]             # tp innermost: neighbouring ranks
    assert all(len(g) == 4 for g in d.group_ranks("data"))
    assert sorted(d.data_rank(r) for r in d.group_ranks("pp")[0]) == [0, 0]


def cfg(**kw):
    base = dict(num_attention_heads=8, num_key_value_heads=2, vocab_size=1024,
                intermediate_size=64, num_hidden_layers=4)
    return types.SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("dims,world,config,match", [
    (ParallelDims(tp=2), 4, cfg(), "need.*2 ranks but 4"),
    (ParallelDims(tp=3), 3, cfg(), "8 attention heads do not divide over tp 3"),
    (ParallelDims(tp=4), 4, cfg(num_key_value_heads=3, num_attention_heads=12), "KV heads"),
    (ParallelDims(tp=2), 2, cfg(vocab_size=1001), "vocab_size 1001"),
    (ParallelDims(pp=3, pipeline_layers=(2, 2)), 3, cfg(), "pipeline_layers 2,2 lists 2 layer counts"),
    (ParallelDims(pp=2, vpp=4), 2, cfg(), "pp 2 x virtual pp 4"),
    (ParallelDims(sequence_parallel=True), 1, cfg(), "sequence_parallel needs"),
    (ParallelDims(pp=2, sharding=2, sharding_stage=2), 4, cfg(), "only with sharding stage 1"),
])
def test_validation_says_what_to_change(dims, world, config, match):
    with pytest.raises(ConfigError, match=match):
        dims.validate(world, config)


def test_kv_heads_fewer_than_tp_are_accepted():
    ParallelDims(tp=4).validate(4, cfg(num_key_value_heads=2))


def test_interleaved_needs_microbatches_multiple_of_pp():
    with pytest.raises(ConfigError, match="multiple of pipeline_parallel_degree"):
        ParallelDims(pp=2, vpp=2).validate(2, cfg(), num_microbatches=3)


def args(**kw):
    base = dict(tensor_parallel_degree=-1, pipeline_parallel_degree=-1, sharding="",
                sharding_parallel_degree=-1, virtual_pp_degree=1, sequence_parallel=False,
                recompute=False, recompute_granularity="full", no_recompute_layers=None)
    return types.SimpleNamespace(**{**base, **kw})


def test_dims_from_paddlenlp_keys():
    d = dims_from_args(args(tensor_parallel_degree=2, sharding="stage2"), 8)
    assert (d.tp, d.sharding, d.sharding_stage, d.dp) == (2, 4, 2, 1)   # sharding takes the rest
    d = dims_from_args(args(tensor_parallel_degree=2, sharding="stage1", sharding_parallel_degree=2), 8)
    assert (d.sharding, d.dp) == (2, 2)
    d = dims_from_args(args(), 4)
    assert d.dp == 4
    d = dims_from_args(args(recompute=True, no_recompute_layers="0,3"), 1)
    assert d.no_recompute_layers == (0, 3)
    with pytest.raises(ConfigError, match="offload"):
        dims_from_args(args(sharding="stage2 offload"), 2)
    with pytest.raises(ConfigError, match="cannot be split"):
        dims_from_args(args(tensor_parallel_degree=3), 4)
