"""Decoder building blocks: RoPE tables (every scaling), ALiBi slopes, sliding windows,
MoE routing and auxiliary losses, initialisation and the loss."""

import math
from pathlib import Path

import numpy as np
import paddle
import pytest

from llmpre.models import MoEConfig, ModelConfig, RopeScaling, build_model, causal_lm_loss, from_pretrained
from llmpre.models.layers import alibi_slopes
from llmpre.models.moe import Router, seq_aux_loss, switch_aux_loss

OWN = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hf"


def test_explicit_positions_match_implicit_and_are_shift_invariant():
    model = from_pretrained(OWN / "mistral")
    ids = paddle.to_tensor(np.load(OWN / "mistral" / "input_ids.npy"))
    base = model(ids).numpy()
    positions = paddle.arange(32, dtype="int64").unsqueeze(0).expand([2, 32])
    np.testing.assert_array_equal(model(ids, position_ids=positions).numpy(), base)
    # RoPE scores depend only on q-k distance, so shifting every position is a no-op
    # up to fp32 rounding of the larger angles.
    np.testing.assert_allclose(model(ids, position_ids=positions + 7).numpy(), base, atol=1e-4)


# ----------------------------------------------------------------------------- RoPE tables

def _rope_config(scaling=None, max_pos=64, head_dim=16, theta=10000.0, **extra):
    return ModelConfig(vocab_size=32, hidden_size=4 * head_dim, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos,
                       rope_theta=theta, rope_scaling=scaling, **extra)


def _np_inv_freq(d, theta):
    return 1.0 / theta ** (np.arange(0, d, 2) / d)


def test_rope_default_tables():
    rotary = build_model(_rope_config(), seed=0).rotary
    inv = _np_inv_freq(16, 1e4)
    np.testing.assert_allclose(rotary.inv_freq(10).numpy(), inv, rtol=1e-6)
    cos, sin = rotary(10)
    assert cos.shape[1] == 8 and cos.shape[0] >= 10
    angles = np.arange(10)[:, None] * inv[None]
    np.testing.assert_allclose(cos.numpy()[:10], np.cos(angles), atol=1e-6)
    np.testing.assert_allclose(sin.numpy()[:10], np.sin(angles), atol=1e-6)


def test_partial_rotary_tables_cover_the_rotated_features_only():
    rotary = build_model(_rope_config(partial_rotary_factor=0.5), seed=0).rotary
    assert rotary(10)[0].shape[1] == 4                                   # r/2 for r = 8 of head_dim 16
    np.testing.assert_allclose(rotary.inv_freq(10).numpy(), _np_inv_freq(8, 1e4), rtol=1e-6)


def test_rope_tables_grow_past_the_cache_and_stay_out_of_the_state_dict():
    model = build_model(_rope_config(max_pos=8), seed=0)
    assert model.rotary.cos.shape[0] == 8
    model(paddle.zeros([1, 20], dtype="int64"))
    assert model.rotary.cos.shape[0] == 20
    angles = 19 * _np_inv_freq(16, 1e4)
    np.testing.assert_allclose(model.rotary.cos.numpy()[19], np.cos(angles), atol=1e-5)
    assert not any("cos" in k or "sin" in k or "alibi" in k for k in model.state_dict())


def test_rope_linear_scaling_divides_positions():
    rotary = build_model(_rope_config(RopeScaling("linear", 4.0)), seed=0).rotary
    np.testing.assert_allclose(rotary.inv_freq(10).numpy(), _np_inv_freq(16, 1e4) / 4, rtol=1e-6)


def test_rope_llama3_scaling_per_band():
    d, theta, factor, low, high, orig = 64, 500000.0, 8.0, 1.0, 4.0, 8192
    rotary = build_model(_rope_config(RopeScaling("llama3", factor, low, high, orig), head_dim=d, theta=theta),
                         seed=0).rotary
    inv = _np_inv_freq(d, theta)
    wavelen = 2 * np.pi / inv
    smooth = (orig / wavelen - low) / (high - low)
    want = np.where(wavelen < orig / high, inv,
                    np.where(wavelen > orig / low, inv / factor, (1 - smooth) * inv / factor + smooth * inv))
    got = rotary.inv_freq(10).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] == pytest.approx(inv[0]) and got[-1] == pytest.approx(inv[-1] / factor)  # both bands present
    assert ((wavelen > orig / high) & (wavelen < orig / low)).any()                    # and the blend


def test_rope_yarn_ramp_and_attention_factor():
    d, theta, factor, orig = 16, 10000.0, 4.0, 16
    scaling = RopeScaling("yarn", factor, original_max_position_embeddings=orig)
    rotary = build_model(_rope_config(scaling, head_dim=d, theta=theta), seed=0).rotary
    inv = _np_inv_freq(d, theta)

    def corr(rot):
        return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(theta))
    low, high = max(math.floor(corr(32)), 0), min(math.ceil(corr(1)), d - 1)
    ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
    want = inv / factor * ramp + inv * (1 - ramp)
    np.testing.assert_allclose(rotary.inv_freq(10).numpy(), want, rtol=1e-5)
    mscale = 0.1 * math.log(factor) + 1.0                     # attention factor without mscale keys
    np.testing.assert_allclose(rotary(4)[0].numpy()[0], np.full(d // 2, mscale), rtol=1e-6)


def test_rope_dynamic_ntk_changes_base_only_past_the_trained_length():
    d, orig, factor = 16, 32, 2.0
    model = build_model(_rope_config(RopeScaling("dynamic", factor), max_pos=orig, head_dim=d), seed=0)
    rotary = model.rotary
    np.testing.assert_allclose(rotary.inv_freq(orig).numpy(), _np_inv_freq(d, 1e4), rtol=1e-6)
    length = 80
    base = 1e4 * (factor * length / orig - (factor - 1)) ** (d / (d - 2))
    np.testing.assert_allclose(rotary.inv_freq(length).numpy(), _np_inv_freq(d, base), rtol=1e-5)
    short = model(paddle.zeros([1, 8], dtype="int64")).numpy()
    model(paddle.zeros([1, length], dtype="int64"))             # rebuilds with the larger base
    assert rotary.base == pytest.approx(base)
    np.testing.assert_array_equal(model(paddle.zeros([1, 8], dtype="int64")).numpy(), short)  # and back
    assert rotary.base == 1e4


# ----------------------------------------------------------------------------- ALiBi, windows

@pytest.mark.parametrize("heads", [4, 6, 12])
def test_alibi_slopes(heads):
    closest = 2 ** int(math.floor(math.log2(heads)))
    want = [2 ** (-8 * (i + 1) / closest) for i in range(closest)]
    want += [2 ** (-8 * (i + 1) / (2 * closest)) for i in range(0, 2 * (heads - closest), 2)]
    np.testing.assert_allclose(alibi_slopes(heads).numpy(), want, rtol=1e-6)


def test_sliding_window_hides_old_tokens_only():
    config = _rope_config(sliding_window=4, model_type="mistral")
    model = build_model(config, seed=0)
    ids = paddle.to_tensor(np.random.RandomState(0).randint(0, 32, (1, 12)))
    full = build_model(config.replace(sliding_window=None), seed=0)
    a, b = model(ids).numpy(), full(ids).numpy()
    np.testing.assert_array_equal(a[:, :4], b[:, :4])            # positions that see < 4 keys are unaffected
    assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-4
    changed = ids.numpy().copy()
    changed[0, 0] = (changed[0, 0] + 1) % 32                     # token 0 is outside position 8's window...
    np.testing.assert_allclose(model(paddle.to_tensor(changed)).numpy()[:, 8:], a[:, 8:], atol=1e-6)


# ----------------------------------------------------------------------------- MoE

def _router(**moe):
    config = ModelConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, moe={"num_experts": 8, "num_experts_per_tok": 2,
                                                     "moe_intermediate_size": 4, **moe})
    paddle.seed(0)
    router = Router(config)
    router.weight.set_value(paddle.randn(router.weight.shape))
    return router


def test_group_limited_routing_picks_inside_the_best_groups():
    router = _router(topk_method="group_limited_greedy", n_group=4, topk_group=2, norm_topk_prob=False,
                     routed_scaling_factor=3.0)
    x = paddle.randn([64, 8])
    weights, experts, scores = router(x)
    s = scores.numpy()
    best_groups = np.argsort(-s.reshape(64, 4, 2).max(-1), axis=-1)[:, :2]
    allowed = np.zeros((64, 8), bool)
    for t in range(64):
        for g in best_groups[t]:
            allowed[t, 2 * g: 2 * g + 2] = True
    masked = np.where(allowed, s, -1)
    np.testing.assert_array_equal(np.sort(experts.numpy(), -1), np.sort(np.argsort(-masked, -1)[:, :2], -1))
    np.testing.assert_allclose(weights.numpy(), 3.0 * np.take_along_axis(s, experts.numpy(), -1), rtol=1e-6)


def test_noaux_routing_uses_the_bias_to_choose_but_not_to_weigh():
    router = _router(scoring_func="sigmoid", topk_method="noaux_tc", n_group=2, topk_group=1,
                     norm_topk_prob=True, routed_scaling_factor=2.5)
    router.e_score_correction_bias.set_value(paddle.to_tensor([5.0, 0, 0, 0, 0, 0, 0, 5.0]))
    x = paddle.randn([32, 8])
    weights, experts, scores = router(x)
    e = experts.numpy()
    assert ((e == 0) | (e == 7)).any(-1).all()                   # the biased experts win their groups
    s = scores.numpy()
    want = np.take_along_axis(s, e, -1)
    np.testing.assert_allclose(weights.numpy(), 2.5 * want / want.sum(-1, keepdims=True), rtol=1e-5)
    assert router.e_score_correction_bias.stop_gradient


def test_seq_aux_loss_matches_deepseek_formula():
    rng = np.random.default_rng(0)
    batch, seq, e, k = 2, 5, 4, 2
    logits = rng.standard_normal((batch * seq, e)).astype("float32")
    scores = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    experts = np.argsort(-scores, -1)[:, :k]
    got = seq_aux_loss([(paddle.to_tensor(experts), paddle.to_tensor(scores))], e, batch).item()
    want = 0.0
    for b in range(batch):
        rows = slice(b * seq, (b + 1) * seq)
        counts = np.bincount(experts[rows].ravel(), minlength=e)
        want += (counts * e / (seq * k) * scores[rows].mean(0)).sum() / batch
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # The Switch loss is E * sum_e f_e P_e with f, P averaged over every routed token.
    counts = np.bincount(experts.ravel(), minlength=e) / (batch * seq)
    switch = switch_aux_loss([(paddle.to_tensor(experts), paddle.to_tensor(scores))], e).item()
    np.testing.assert_allclose(switch, e * (counts * scores.mean(0)).sum(), rtol=1e-6)


def test_aux_loss_is_exposed_after_forward_and_reaches_the_router():
    config = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, model_type="mixtral",
                         moe={"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
                              "router_aux_loss_coef": 0.02})
    model = build_model(config, seed=0)
    assert model.aux_loss is None
    ids = paddle.to_tensor([[1, 2, 3, 4, 5, 6]])
    logits = model(ids)
    assert model.aux_loss is not None and model.aux_loss.shape == []
    lm = causal_lm_loss(logits, ids)
    total = causal_lm_loss(logits, ids, aux_loss=model.aux_loss)
    np.testing.assert_allclose(total.item(), lm.item() + model.aux_loss.item(), rtol=1e-6)
    model.aux_loss.backward()
    assert np.abs(model.layers[0].mlp.gate.weight.grad.numpy()).max() > 0
    dense = build_model(config.replace(moe=None, model_type="llama"), seed=0)
    dense(ids)
    assert dense.aux_loss is None


# ----------------------------------------------------------------------------- init and loss

def test_init_statistics_follow_paddlenlp():
    config = ModelConfig(vocab_size=2048, hidden_size=128, intermediate_size=344, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True, model_type="qwen2")
    model = build_model(config, seed=1234)
    scaled = 0.02 / math.sqrt(2 * 8)
    for name, p in model.named_parameters():
        w = p.numpy()
        if name.endswith("norm.weight"):
            assert (w == 1).all(), name
        elif name.endswith(".bias"):
            assert (w == 0).all(), name
        else:
            std = scaled if ("o_proj" in name or "down_proj" in name) else 0.02
            # >= 16k samples each: the sample std is within ~1.1% (1 sigma) of the truth.
            assert abs(w.std() / std - 1) < 0.06, (name, w.std(), std)
            assert abs(w.mean()) < 4 * std / math.sqrt(w.size), name
    again = build_model(config, seed=1234)
    other = build_model(config, seed=1235)
    for (n, a), b, c in zip(model.named_parameters(), again.parameters(), other.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=n)
    assert not np.array_equal(model.embed_tokens.weight.numpy(), other.embed_tokens.weight.numpy())


def test_init_of_experts_routers_and_offset_norms():
    config = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, model_type="gemma", norm_type="rmsnorm_plus_one",
                         moe=MoEConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256,
                                       shared_expert_intermediate_size=256, scoring_func="sigmoid",
                                       topk_method="noaux_tc", n_group=2, topk_group=1))
    model = build_model(config, seed=3)
    scaled = 0.02 / math.sqrt(2 * 2)
    for name, p in model.named_parameters():
        w = p.numpy()
        if name.endswith("norm.weight"):
            assert (w == 0).all(), name                       # (1 + w) norms start at identity
        elif name.endswith("e_score_correction_bias"):
            assert (w == 0).all()
        elif name.endswith("down_proj.weight"):
            assert abs(w.std() / scaled - 1) < 0.1, name
        elif name.endswith("gate.weight") or name.endswith("up_proj.weight"):
            assert abs(w.std() / 0.02 - 1) < 0.2, name


def test_loss_ignores_index_and_matches_paddlenlp_mean_of_positive_losses():
    rng = np.random.default_rng(0)
    logits = paddle.to_tensor(rng.normal(size=(2, 6, 10)).astype("float32"))
    labels = rng.integers(0, 10, size=(2, 6))
    labels[0, :2] = -100
    loss = causal_lm_loss(logits, paddle.to_tensor(labels))
    per_token = paddle.nn.functional.cross_entropy(logits.reshape([-1, 10]), paddle.to_tensor(labels).reshape([-1]),
                                                   ignore_index=-100, reduction="none").numpy().ravel()
    keep = labels.ravel() != -100
    np.testing.assert_allclose(loss.item(), per_token[keep].mean(), rtol=1e-6)
    np.testing.assert_allclose(loss.item(), per_token[per_token > 0].mean(), rtol=1e-6)  # PaddleNLP's rule
