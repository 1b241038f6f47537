"""sep / cp in the layout: PaddleNLP's order (dp, pp, sharding, sep|cp, tp innermost), the
seq groups, what each rank keeps of a sequence, and the checks."""

from __future__ import annotations

import numpy as np
import pytest

from llmpre.errors import ConfigError
from llmpre.models import get_config
from llmpre.parallel.context import local_positions
from llmpre.parallel.dims import ParallelDims


def test_cp_sits_between_sharding_and_tp():
    d = ParallelDims(dp=2, tp=2, cp=2)
    assert d.world_size == 8
    for rank in range(8):
        assert d.rank_of(**d.coords(rank)) == rank
    assert d.coords(3) == {"dp": 0, "pp": 0, "sharding": 0, "sep": 0, "cp": 1, "tp": 1}
    assert d.group_ranks("seq") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert d.group_ranks("tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # cp ranks read the same samples: the data rank ignores cp
    assert [d.data_rank(r) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_each_rank_keeps_its_chunks():
    cp4 = ParallelDims(cp=4)
    parts = [local_positions(32, cp4, r) for r in range(4)]
    assert parts[0].tolist() == [0, 1, 2, 3, 28, 29, 30, 31]          # chunks 0 and 7 of 8
    assert parts[3].tolist() == [12, 13, 14, 15, 16, 17, 18, 19]      # chunks 3 and 4
    assert sorted(np.concatenate(parts).tolist()) == list(range(32))
    sep2 = ParallelDims(sep=2)
    assert local_positions(8, sep2, 1).tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize("dims,seq,match", [
    (ParallelDims(cp=4), 36, "2 x 4 = 8 equal chunks, but max_seq_length 36"),
    (ParallelDims(sep=3), 36, r"\(4 heads, 2 KV heads after tp 1\)"),
    (ParallelDims(sep=2, cp=2), 32, "are both > 1"),
    (ParallelDims(sep=2), 33, "max_seq_length 33 is not a multiple of 2"),
])
def test_bad_layouts(dims, seq, match):
    with pytest.raises(ConfigError, match=match):
        dims.validate(dims.world_size, get_config("llama-tiny"), seq_length=seq)


def test_what_the_split_cannot_do_is_refused_by_name():
    from llmpre.models import build_model
    from llmpre.parallel import context
    from llmpre.parallel.env import detached_env

    dims = ParallelDims(cp=2)
    with pytest.raises(ConfigError, match="mixtral: context_parallel_degree > 1 is not available: not built "
                                          "for mixture-of-experts"):
        context.check_supported(get_config("mixtral-8x7b"), dims)
    model = build_model(get_config("llama-tiny").replace(num_hidden_layers=1), seed=1)
    model.layers[0].self_attn.dropout_p = 0.1
    with pytest.raises(ConfigError, match="attention dropout"):
        context.apply(model, detached_env(dims, 0))
