"""The planner on mixture-of-experts and latent-attention models: parameters per device
(routed experts split by expert parallelism, router replicated, shared experts and MLA's
heads split by tp), activated vs total parameters, the sparse layer's activations, and
`--materialize` building one rank of an MoE layout with exactly the planned bytes."""

from __future__ import annotations

import pytest

from llmpre.errors import ConfigError
from llmpre.models import get_config
from llmpre.plan import PlanSettings, plan_memory
from llmpre.plan.memory import activated_params, layer_inventory, layer_params

MOE_PRESETS = ["mixtral-8x7b", "qwen1.5-moe-a2.7b", "qwen2-57b-a14b", "deepseek-v2", "deepseek-v2-lite",
               "deepseek-v3"]


def _tiny_v3(**kw):
    return get_config("deepseek-v3").replace(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        head_dim=24, vocab_size=256, mla=dict(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                              v_head_dim=16, q_lora_rank=24),
        moe=dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                 scoring_func="sigmoid", topk_method="noaux_tc", n_group=2, topk_group=1,
                 routed_scaling_factor=2.5, aux_loss_type="seq", first_k_dense_replace=1), **kw)


@pytest.mark.parametrize("name", MOE_PRESETS)
def test_every_moe_preset_is_planned_with_its_exact_parameter_count(name):
    """plan_memory checks that its per-layer counts at tp = pp = ep = 1 sum to
    ModelConfig.num_parameters() (else a ConfigError)."""
    p = plan_memory(PlanSettings(model=get_config(name), seq_length=4096, micro_batch=1, dtype="bfloat16",
                                 opt_level="O2", flash_attention=True))
    assert p.total_params == get_config(name).num_parameters()
    assert p.stages[0].params == p.total_params
    assert 0 < p.activated_params < p.total_params


def test_deepseek_v3_activated_parameters_match_the_published_figure():
    """DeepSeek-V3's README_WEIGHTS.md: 671B total, 36.6B activated (main model, head included)."""
    m = get_config("deepseek-v3")
    assert m.num_parameters() == pytest.approx(671e9, rel=0.001)
    assert activated_params(m) == pytest.approx(36.6e9, rel=0.01)


def test_expert_parallelism_divides_only_the_routed_experts():
    m = get_config("deepseek-v3")
    one = PlanSettings(model=m, seq_length=4096, micro_batch=1, dp=64)
    ep = one.replace(ep=64)
    for layer in (0, 3, 60):                                  # dense (first_k_dense_replace 3), sparse
        a, b = layer_params(one, layer), layer_params(ep, layer)
        assert b.routed * 64 == a.routed
        assert (a.attention, a.router, a.shared, a.mlp) == (b.attention, b.router, b.shared, b.mlp)
    e = m.moe
    routed = 58 * e.num_experts * 3 * m.hidden_size * e.moe_intermediate_size
    assert plan_memory(one).stages[0].params - plan_memory(ep).stages[0].params == routed * 63 // 64
    inv = layer_inventory(ep, 60)
    assert inv["all-to-all buffers (rows in, outputs back)"] == 4 * 2 * 8 * m.hidden_size   # fp32, k = 8
    assert "all-to-all buffers (rows in, outputs back)" not in layer_inventory(one, 60)
    assert "down input" in layer_inventory(one, 0) and "expert rows (k per token)" not in layer_inventory(one, 0)


def test_tensor_parallelism_replicates_the_router_and_latent_projections():
    m = _tiny_v3()
    one = PlanSettings(model=m, seq_length=64, micro_batch=1)
    tp = one.replace(tp=2)
    a, b = layer_params(one, 1), layer_params(tp, 1)
    assert b.router == a.router == 8 * 64 + 8                   # gate weight + correction bias
    assert b.routed * 2 == a.routed and b.shared * 2 == a.shared
    latent = 64 * 24 + 24 + 64 * (32 + 8) + 32                   # q_a + its norm, kv_a + its norm
    assert a.attention - latent == 2 * (b.attention - latent)


@pytest.mark.parametrize("kw, message", [
    (dict(dp=4, ep=3), "must divide 4"),
    (dict(dp=6, ep=3), "must divide the 8 experts"),
])
def test_bad_expert_parallel_degrees_are_one_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        PlanSettings(model=_tiny_v3(), seq_length=64, micro_batch=1, **kw)
    with pytest.raises(ConfigError, match="dense model"):
        PlanSettings(model=get_config("llama-tiny"), seq_length=64, micro_batch=1, dp=2, ep=2)


MATERIALIZE = {
    "pp2": dict(pp=2),
    "tp2": dict(tp=2),
    "ep2 (dp2)": dict(dp=2, ep=2),
    "ep2 x sharding2 stage1, bf16 O2": dict(sharding=2, stage=1, ep=2, dtype="bfloat16", opt_level="O2"),
}


@pytest.mark.parametrize("name", list(MATERIALIZE))
def test_materialized_moe_ranks_hold_the_planned_bytes(name):
    pytest.importorskip("paddle")
    from llmpre.plan.materialize import materialize

    s = PlanSettings(model=_tiny_v3(), seq_length=64, micro_batch=1, **MATERIALIZE[name])
    for rank in range(s.world_size):
        m = materialize(s, rank)
        assert m.params == m.planned["params"], (name, rank, m.params, m.planned["params"])
        for key in ("weights", "gradients"):
            assert getattr(m, key) == m.planned[key], (name, rank, key)
        assert m.optimizer - m.optimizer_padding == pytest.approx(m.planned["optimizer"], abs=12 * s.sharding), \
            (name, rank, m.optimizer, m.planned["optimizer"])


def test_building_a_rank_makes_no_whole_fp32_copy_of_a_parameter(monkeypatch):
    """What keeps --materialize's peak near the planned state (DeepSeek-V3 rank 0 holds a
    0.93B-element embedding): a deferred parameter is drawn in row blocks straight into its
    dtype, and the optimizer copies only the elements of its shard. Both give the values of
    the whole-tensor path."""
    paddle = pytest.importorskip("paddle")
    import numpy as np

    from llmpre.models import init
    from llmpre.parallel.optimizer import _owned_values

    with paddle.LazyGuard():
        p = paddle.create_parameter([37, 11], "float32")
    setattr(p, init.ATTR, init.Source(12345, "normal", 0.02, "bfloat16", None))
    whole = init.generate(p)
    monkeypatch.setattr(init, "GENERATE_CHUNK_BYTES", 200)        # blocks of 4 rows
    for region in (None, [(3, 30), (2, 9)]):
        r = [(0, 37), (0, 11)] if region is None else region
        want = paddle.to_tensor(init.normal_region(12345, [37, 11], r, 0.02)).astype("bfloat16")
        got = init.generate(p, region)
        assert got.dtype == paddle.bfloat16
        np.testing.assert_array_equal(got.astype("float32").numpy(), want.astype("float32").numpy())
    np.testing.assert_array_equal(init.generate(p).astype("float32").numpy(), whole.astype("float32").numpy())
    for dtype in ("float32", "bfloat16"):
        q = paddle.to_tensor(np.random.RandomState(0).randn(7, 13).astype("float32")).astype(dtype)
        flat = q.astype("float32").numpy().reshape(-1)
        for a, b in ((0, 91), (5, 40), (90, 91)):
            np.testing.assert_array_equal(_owned_values(q, a, b), flat[a:b])


def test_multi_token_prediction_modules_sit_on_the_last_stage():
    m = _tiny_v3(num_nextn_predict_layers=1)
    one = PlanSettings(model=m, seq_length=64, micro_batch=1)
    p = plan_memory(one)                                       # its count check: num_parameters() with MTP
    assert p.stages[0].params == m.num_parameters()
    base = plan_memory(one.replace(model=_tiny_v3()))
    assert p.stages[0].params - base.stages[0].params == layer_params(one, 4).total == \
        layer_params(one, 3).total + 3 * 64 + 2 * 64 * 64
    assert p.stages[0].logits == 2 * base.stages[0].logits     # the MTP depth's logits too
    assert p.activated_params == base.activated_params         # DeepSeek counts MTP apart
    pp = plan_memory(one.replace(pp=2))
    assert pp.stages[0].params == plan_memory(one.replace(model=_tiny_v3(), pp=2)).stages[0].params


def test_multi_token_prediction_depths_run_on_the_whole_sequence_under_sp():
    """Under tensor sequence parallelism the decoder layers keep 1/tp of the sequence, but the
    MTP depths shift it, so they run on all of it (plain tp): what a depth adds to the last
    stage's activations is the same with sp as without."""
    m, base = _tiny_v3(num_nextn_predict_layers=1), _tiny_v3()
    added = {}
    for sp in (False, True):
        s = PlanSettings(model=m, seq_length=64, micro_batch=1, tp=2, sequence_parallel=sp)
        added[sp] = plan_memory(s).stages[0].activations - plan_memory(s.replace(model=base)).stages[0].activations
    assert added[True] == added[False] > 0
    s = PlanSettings(model=base, seq_length=64, micro_batch=1, tp=2)
    assert plan_memory(s.replace(sequence_parallel=True)).stages[0].activations < plan_memory(s).stages[0].activations


def test_materialized_mtp_rank_holds_the_planned_bytes():
    pytest.importorskip("paddle")
    from llmpre.plan.materialize import materialize

    s = PlanSettings(model=_tiny_v3(num_nextn_predict_layers=1), seq_length=64, micro_batch=1, sharding=2, stage=1)
    for rank in range(2):
        m = materialize(s, rank)
        assert m.params == m.planned["params"] and m.weights == m.planned["weights"], rank
        assert m.gradients == m.planned["gradients"], rank
        assert m.optimizer - m.optimizer_padding == pytest.approx(m.planned["optimizer"], abs=24), rank


@pytest.mark.parametrize("kw", [dict(pp=2), dict(tp=2), dict(tp=2, pp=2)])
def test_materialized_mtp_layouts_hold_the_planned_bytes(kw):
    """Under pipeline parallelism the last stage also keeps a copy of the embedding for the
    MTP depths; under tp their blocks are split like the layers, eh_proj replicated."""
    pytest.importorskip("paddle")
    from llmpre.plan.materialize import materialize

    s = PlanSettings(model=_tiny_v3(num_nextn_predict_layers=1), seq_length=64, micro_batch=1, **kw)
    for rank in range(s.world_size):
        m = materialize(s, rank)
        assert m.params == m.planned["params"], (kw, rank, m.params, m.planned["params"])
        assert m.weights == m.planned["weights"] and m.gradients == m.planned["gradients"], (kw, rank)
