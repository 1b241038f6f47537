"""The decoder against HuggingFace transformers (fixtures), plus RoPE, init and loss behaviour."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from llmpre.models import ModelConfig, RopeScaling, build_model, causal_lm_loss, from_pretrained
from llmpre.models.hf import _linear_weights, hf_name

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "hf"


def fixture_dir(name):
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"HF parity fixtures absent: {path}")
    return path


def checkpoint(name, style, tmp_path):
    """The fixture directory, or a copy whose config.json is the transformers-4 config.v4.json."""
    path = fixture_dir(name)
    if style == "v5":
        return path
    shutil.copy(path / "config.v4.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
    return tmp_path


# Tolerances suggested by the fixtures' README for float32 (HF ran in float32 on CPU too).
@pytest.mark.parametrize("style", ["v5", "v4"])
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_logits_loss_and_every_gradient_match_transformers(name, style, tmp_path):
    ref = fixture_dir(name)
    expected = json.loads((ref / "expected.json").read_text())
    model = from_pretrained(checkpoint(name, style, tmp_path))
    ids = paddle.to_tensor(np.load(ref / "input_ids.npy"))

    logits = model(ids)
    assert logits.shape == [2, 48, 512] and logits.dtype == paddle.float32
    np.testing.assert_allclose(logits.numpy(), np.load(ref / "logits.npy"), atol=1e-4, rtol=0)

    loss = causal_lm_loss(logits[:, :-1], ids[:, 1:])  # HF shifts inside its loss
    np.testing.assert_allclose(loss.item(), expected["loss"], atol=1e-5, rtol=0)

    loss.backward()
    grads = load_file(str(ref / "grads.safetensors"))
    transposed = _linear_weights(model)
    seen = set()
    for pname, p in model.named_parameters():
        got = p.grad.numpy()
        got = got.T if pname in transposed else got  # Paddle [in, out] -> HF [out, in]
        np.testing.assert_allclose(got, grads[hf_name(pname)], atol=1e-5, rtol=1e-3, err_msg=pname)
        seen.add(hf_name(pname))
    assert seen == set(grads)


def test_explicit_positions_match_implicit_and_are_shift_invariant():
    model = from_pretrained(fixture_dir("llama"))
    ids = paddle.to_tensor(np.load(fixture_dir("llama") / "input_ids.npy"))
    base = model(ids).numpy()
    positions = paddle.arange(48, dtype="int64").unsqueeze(0).expand([2, 48])
    np.testing.assert_array_equal(model(ids, position_ids=positions).numpy(), base)
    # RoPE scores depend only on q-k distance, so shifting every position is a no-op
    # up to fp32 rounding of the larger angles.
    np.testing.assert_allclose(model(ids, position_ids=positions + 7).numpy(), base, atol=1e-4)


# ----------------------------------------------------------------------------- RoPE tables

def _rope_config(scaling=None, max_pos=64, head_dim=16, theta=10000.0):
    return ModelConfig(vocab_size=32, hidden_size=4 * head_dim, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos,
                       rope_theta=theta, rope_scaling=scaling)


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


def test_rope_tables_grow_past_the_cache_and_stay_out_of_the_state_dict():
    model = build_model(_rope_config(max_pos=8), seed=0)
    assert model.rotary.cos.shape[0] == 8
    model(paddle.zeros([1, 20], dtype="int64"))
    assert model.rotary.cos.shape[0] == 20
    angles = 19 * _np_inv_freq(16, 1e4)
    np.testing.assert_allclose(model.rotary.cos.numpy()[19], np.cos(angles), atol=1e-5)
    assert not any("cos" in k or "sin" in k for k in model.state_dict())


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
