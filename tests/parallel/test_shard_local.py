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


def _family(preset: str, **changes):
    """A tiny model of ``preset``'s family (GPT family, ChatGLM2): 4 layers, hidden 64, 4 heads."""
    base = dict(num_hidden_layers=4, vocab_size=512, hidden_size=64, intermediate_size=128,
                num_attention_heads=4, num_key_value_heads=4, head_dim=16, max_position_embeddings=64)
    return get_config(preset).replace(**{**base, **changes})


def _moe_family(preset: str, q_lora_rank=16):
    """A tiny MoE model of ``preset``'s family: 2 layers, hidden 64, 4 heads, 4 experts of width 32
    (a shared expert of 48, expert groups, a dense first layer and MLA as the family has them)."""
    import dataclasses

    c = get_config(preset)
    kw = dict(num_hidden_layers=2, vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4,
              num_key_value_heads=4, max_position_embeddings=64)
    if c.mla is not None:
        kw["mla"] = dataclasses.replace(c.mla, kv_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=8,
                                        v_head_dim=12, q_lora_rank=q_lora_rank)
        kw["head_dim"] = 16
    m = c.moe
    kw["moe"] = dataclasses.replace(m, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                    shared_expert_intermediate_size=48 if m.shared_expert_intermediate_size else 0,
                                    n_group=2 if m.n_group > 1 else 1, topk_group=1,
                                    first_k_dense_replace=min(m.first_k_dense_replace, 1))
    return c.replace(**kw)


def _count_generated(monkeypatch, which=lambda p: True) -> list:
    """Element counts of every region computed from a seed (not a deferred slice reading its
    parent's region, which would count twice) for parameters ``which`` accepts."""
    counts: list = []
    real = init.generate

    def counting(p, region=None, dtype=None):
        t = real(p, region, dtype)
        if getattr(p, init.ATTR).kind != "read" and which(p):
            counts.append(int(np.prod(t.shape)))
        return t

    monkeypatch.setattr(init, "generate", counting)
    return counts


LAYOUTS = {
    "tp2": (ParallelDims(tp=2), _cfg()),
    "pp2": (ParallelDims(pp=2), _cfg()),
    "tp2 x pp2": (ParallelDims(tp=2, pp=2), _cfg()),
    "tp2 sp, qkv biases": (ParallelDims(tp=2, sequence_parallel=True), _cfg(attention_bias=True, model_type="qwen2")),
    "tp4, 2 kv heads (replicated k/v)": (ParallelDims(tp=4), _cfg(num_key_value_heads=2)),
    "tied embedding, tp2 x pp2": (ParallelDims(tp=2, pp=2), _cfg(tie_word_embeddings=True)),
    "sharding2 stage1 x tp2": (ParallelDims(tp=2, sharding=2, sharding_stage=1), _cfg()),
    "OPT projected embeddings, tp2 x pp2": (ParallelDims(tp=2, pp=2), _family("opt-350m", word_embed_proj_dim=32)),
    "OPT projected embeddings, tp2 sp": (ParallelDims(tp=2, sequence_parallel=True),
                                         _family("opt-350m", word_embed_proj_dim=32)),
    "Bloom tp2 x pp2": (ParallelDims(tp=2, pp=2), _family("bloom-560m")),
    "GPT-2 tp2 sp x pp2": (ParallelDims(tp=2, pp=2, sequence_parallel=True), _family("gpt2-en")),
    "ChatGLM2 tp2, one KV head (replicated k/v)": (ParallelDims(tp=2), _family("chatglm2-6b", num_key_value_heads=1)),
    "ChatGLM2 tp4, two KV heads (replicated k/v)": (ParallelDims(tp=4), _family("chatglm2-6b", num_key_value_heads=2)),
    "ChatGLM-6B (GLM v1) tp2 sp x pp2": (ParallelDims(tp=2, pp=2, sequence_parallel=True), _family("chatglm-6b")),
    # MoE: every expert (and the shared expert) split like an MLP, routers whole; MLA: columns by head
    "Mixtral tp2 x pp2": (ParallelDims(tp=2, pp=2), _moe_family("mixtral-8x7b")),
    "Qwen-MoE (shared expert, gate) tp2 sp": (ParallelDims(tp=2, sequence_parallel=True),
                                              _moe_family("qwen1.5-moe-a2.7b")),
    "DeepSeek-V3 (MLA, query bottleneck) tp2 sp x pp2": (ParallelDims(tp=2, pp=2, sequence_parallel=True),
                                                        _moe_family("deepseek-v3")),
    "DeepSeek-V2 (MLA, no query bottleneck) tp4": (ParallelDims(tp=4), _moe_family("deepseek-v2", None)),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_rank_holds_the_single_process_values_of_its_shard_and_computes_nothing_else(name, monkeypatch):
    dims, cfg = LAYOUTS[name]
    single = {n: p.numpy() for n, p in build_model(cfg, seed=9).named_parameters()}
    generated = _count_generated(monkeypatch)
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


@pytest.mark.parametrize("dims", [ParallelDims(sharding=2, sharding_stage=3),
                                  ParallelDims(tp=2, sharding=2, sharding_stage=3)],
                         ids=["sharding2 stage3", "tp2 x sharding2 stage3"])
def test_stage3_ranks_compute_only_their_shard_of_the_layers(dims, monkeypatch):
    """Under stage 3 a decoder layer's parameters are never whole on a rank: the optimizer
    computes its own elements (whole rows around them), which equal the single-process
    values; the embedding, final norm and head stay whole."""
    from llmpre.parallel import stage3
    from llmpre.parallel.optimizer import ShardedAdamW

    cfg = _cfg()
    single = {n: p.numpy() for n, p in build_model(cfg, seed=4).named_parameters()}
    layer_names: set = set()
    layer_elems = _count_generated(monkeypatch, lambda p: p.name in layer_names)
    for rank in range(dims.world_size):
        layer_elems.clear()
        env = detached_env(dims, rank)
        model = build_model(cfg, seed=4, lazy=True)
        layer_names.clear()
        layer_names.update(p.name for n, p in model.named_parameters() if n.startswith("layers."))
        model = parallelize(model, env, materialize=stage3.outside_units).model
        params = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
        layer_names |= {p.name for n, p in params if n.startswith("layers.")}
        assert all(init.is_lazy(p) == n.startswith("layers.") for n, p in params)
        opt = ShardedAdamW(params, env, boundaries=stage3.unit_boundaries(params))
        stage3.shard_parameters(model, params, opt)
        master = opt.master.numpy()
        owned_layer = 0
        for pc in opt.pieces:
            n, p = params[pc.param]
            want = single[n]
            split = getattr(p, TP_SPLIT, None)
            if split is not None:
                axis, _ = split
                size = p.shape[axis]
                want = np.take(want, range(env.tp.index * size, (env.tp.index + 1) * size), axis=axis)
            got = master[pc.local_start:pc.local_start + pc.param_end - pc.param_start]
            assert np.array_equal(got, want.reshape(-1)[pc.param_start:pc.param_end]), (rank, n)
            if n.startswith("layers."):
                owned_layer += pc.param_end - pc.param_start
        layer_total = sum(int(np.prod(p.shape)) for n, p in params if n.startswith("layers."))
        widest_row = max(int(np.prod(p.shape[1:])) for n, p in params if n.startswith("layers."))
        # its own elements, plus at most one partial row at each end of each piece
        assert owned_layer <= sum(layer_elems) <= owned_layer + 2 * widest_row * len(opt.pieces)
        assert sum(layer_elems) < layer_total, "a rank computed every layer parameter whole"
