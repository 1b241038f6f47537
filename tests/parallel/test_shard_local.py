"""Shard-local initialisation: any rank of any layout is built in one process, without its
peers, computes only the elements it keeps, and holds exactly the single-process values of
those elements."""

from __future__ import annotations

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from llmpre.errors import ConfigError  # noqa: E402
from llmpre.models import build_model, get_config, init  # noqa: E402
from llmpre.parallel.dims import ParallelDims  # noqa: E402
from llmpre.parallel.env import detached_env  # noqa: E402
from llmpre.parallel.parallelize import parallelize  # noqa: E402
from llmpre.parallel.tensor_parallel import TP_SPLIT  # noqa: E402


def _cfg(**changes):
    base = dict(num_hidden_layers=4, vocab_size=512, hidden_size=64, intermediate_size=192,
                num_attention_heads=8, num_key_value_heads=4)
    return get_config("llama-tiny").replace(**{**base, **changes})


LAYOUTS = {
    "tp2": (ParallelDims(tp=2), _cfg()),
    "pp2": (ParallelDims(pp=2), _cfg()),
    "tp2 x pp2": (ParallelDims(tp=2, pp=2), _cfg()),
    "tp2 sp, qkv biases": (ParallelDims(tp=2, sequence_parallel=True), _cfg(attention_bias=True, model_type="qwen2")),
    "tp4, 2 kv heads (replicated k/v)": (ParallelDims(tp=4), _cfg(num_key_value_heads=2)),
    "tied embedding, tp2 x pp2": (ParallelDims(tp=2, pp=2), _cfg(tie_word_embeddings=True)),
    "sharding2 stage1 x tp2": (ParallelDims(tp=2, sharding=2, sharding_stage=1), _cfg()),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_rank_holds_the_single_process_values_of_its_shard_and_computes_nothing_else(name, monkeypatch):
    dims, cfg = LAYOUTS[name]
    single = {n: p.numpy() for n, p in build_model(cfg, seed=9).named_parameters()}
    generated = []
    real = init.generate

    def counting(p, region=None, dtype=None):
        t = real(p, region, dtype)
        generated.append(int(np.prod(t.shape)))
        return t

    monkeypatch.setattr(init, "generate", counting)
    for rank in range(dims.world_size):
        generated.clear()
        env = detached_env(dims, rank)
        model = parallelize(build_model(cfg, seed=9, lazy=True), env).model
        params = dict(model.named_parameters())
        assert params and not any(init.is_lazy(p) for p in params.values())
        for n, p in params.items():
            want = single[n]
            split = getattr(p, TP_SPLIT, None)
            if split is not None:
                axis, full = split
                assert want.shape[axis] == full
                size = p.shape[axis]
                want = np.take(want, range(env.tp.index * size, (env.tp.index + 1) * size), axis=axis)
            assert np.array_equal(p.numpy(), want), (name, rank, n)
        # nothing beyond this rank's own elements was ever computed
        assert sum(generated) == sum(int(np.prod(p.shape)) for p in params.values()), (name, rank)


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ConfigError, match=r"--rank 8: the layout has 8 ranks \(0 to 7\)"):
        detached_env(ParallelDims(tp=2, pp=4), 8)
