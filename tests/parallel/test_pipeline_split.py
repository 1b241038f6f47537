"""The one pipeline split (llmpre.parallel.dims.pipeline_split): even when the layers
divide, floor/ceil shares with the short ones on the last, then the first chunks when they
do not, an explicit ``pipeline_layers`` checked before any worker starts."""

from __future__ import annotations

import types

import pytest

from llmpre.errors import ConfigError
from llmpre.models import get_config
from llmpre.parallel.dims import ParallelDims, dims_from_args, pipeline_counts, pipeline_split
from llmpre.train.args import parse_arguments


@pytest.mark.parametrize("layers,pp,vpp", [(L, pp, vpp) for L in (1, 2, 3, 4, 5, 7, 12, 32, 61)
                                           for pp in (1, 2, 3, 4, 16) for vpp in (1, 2, 3) if L >= pp * vpp
                                           and (pp > 1 or vpp == 1)])
def test_every_layer_in_one_chunk_in_order_with_floor_or_ceil_shares(layers, pp, vpp):
    ranges = pipeline_split(layers, pp, vpp)
    chunks = pp * vpp
    assert len(ranges) == chunks
    assert [i for r in ranges for i in r] == list(range(layers))       # consecutive, each layer once
    sizes = [len(r) for r in ranges]
    assert set(sizes) <= {layers // chunks, -(-layers // chunks)}
    if layers % chunks == 0:      # the even split as it always was: chunk g holds [g L/C, (g+1) L/C)
        per = layers // chunks
        assert ranges == tuple(range(g * per, (g + 1) * per) for g in range(chunks))
    else:                         # the short shares: the last chunk, then the first, then 1, 2, ...
        short = chunks - layers % chunks
        expected = ([chunks - 1] + list(range(chunks - 1)))[:short]
        assert sorted(g for g, n in enumerate(sizes) if n == layers // chunks) == sorted(expected)


def test_deepseek_v3_on_pp16():
    counts = pipeline_counts(61, 16)
    assert counts == (3, 3) + (4,) * 13 + (3,)
    dims = ParallelDims(pp=16)
    assert dims.stage_chunks(61, 0) == [(0, range(0, 3))]
    assert dims.stage_chunks(61, 15) == [(15, range(58, 61))]


def test_interleaved_ranks_take_chunks_c_pp_plus_p():
    dims = ParallelDims(pp=2, vpp=2)
    assert pipeline_counts(5, 2, 2) == (1, 1, 2, 1)
    assert dims.stage_chunks(5, 0) == [(0, range(0, 1)), (2, range(2, 4))]
    assert dims.stage_chunks(5, 1) == [(1, range(1, 2)), (3, range(4, 5))]


def test_explicit_counts_override_even_and_uneven_defaults():
    assert pipeline_split(4, 2, explicit=(1, 3)) == (range(0, 1), range(1, 4))
    assert pipeline_counts(61, 16, explicit=(4,) * 15 + (1,)) == (4,) * 15 + (1,)
    assert ParallelDims(pp=2, vpp=2, pipeline_layers=(2, 1, 1, 1)).stage_chunks(5, 0) == \
        [(0, range(0, 2)), (2, range(3, 4))]


@pytest.mark.parametrize("layers,pp,vpp,explicit,match", [
    (4, 2, 1, (1, 1, 2), r"pipeline_layers 1,1,2 lists 3 layer counts but the 2 pipeline stages \(pp 2\) "
                         r"need one each .* give 2 numbers that add up to 4"),
    (5, 2, 2, (2, 3), r"lists 2 layer counts but pp 2 x virtual pp 2 = 4 pipeline chunks need one each"),
    (4, 2, 1, (0, 4), r"pipeline_layers 0,4: chunk 0 has 0 layers; every pipeline chunk needs at least one"),
    (2, 2, 1, (3, -1), r"chunk 1 has -1 layers"),
    (4, 2, 1, (1, 2), r"pipeline_layers 1,2 add up to 3 layers but the model has 4 \(num_hidden_layers\); "
                      r"change the counts so they sum to 4"),
    (3, 4, 1, (), r"3 layers cannot fill the 4 pipeline stages \(pp 4\): each needs at least one layer"),
    (5, 3, 2, (), r"5 layers cannot fill pp 3 x virtual pp 2 = 6 pipeline chunks"),
])
def test_bad_splits_are_one_error_naming_the_argument_and_the_fix(layers, pp, vpp, explicit, match):
    with pytest.raises(ConfigError, match=match):
        pipeline_split(layers, pp, vpp, explicit)


def _args(**kw):
    base = dict(tensor_parallel_degree=-1, pipeline_parallel_degree=2, sharding="", sharding_parallel_degree=-1,
                virtual_pp_degree=1, sequence_parallel=False, recompute=False, recompute_granularity="full",
                no_recompute_layers=None, pipeline_layers=None)
    return types.SimpleNamespace(**{**base, **kw})


def test_training_arguments_carry_the_counts_to_the_layout_check():
    args = parse_arguments(None, {"model": "llama-tiny", "pp": "2", "pipeline_layers": "1, 3"})
    assert args.pipeline_layers == "1,3"
    dims = dims_from_args(args, 2)
    assert dims.pipeline_layers == (1, 3)
    dims.validate(2, get_config("llama-tiny").replace(num_hidden_layers=4), 1)
    with pytest.raises(ConfigError, match="add up to 4 layers but the model has 3"):
        dims.validate(2, get_config("llama-tiny").replace(num_hidden_layers=3), 1)
    with pytest.raises(ConfigError, match="pipeline_layers` must list the layer count of every pipeline chunk"):
        parse_arguments(None, {"model": "llama-tiny", "pipeline_layers": "1,x"})
    assert parse_arguments(None, {"pipeline_layers": [2, 2]}).pipeline_layers == "2,2"   # a JSON list
    assert dims_from_args(_args(), 2).pipeline_layers == ()
