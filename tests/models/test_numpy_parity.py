"""Families transformers lacks (Qwen v1, Baichuan/Baichuan2, ChatGLM2/3, Yuan2) against the
independent numpy forwards in numpy_ref.py: logits and loss, and every parameter's
gradient at sampled entries against central finite differences of the numpy loss.

The model is built from an HF-style config.json dict, given seeded non-trivial weights,
saved with save_pretrained, and the numpy forward reads that HF-layout file: the layout
mapping is checked together with the math.  Tolerances: logits atol 1e-4, loss 1e-5 (as
for the transformers fixtures; the reference is float64), gradients atol 1e-5 / rtol 1e-3
(the finite difference with h = 1e-4 in float64 is accurate to ~1e-8).
"""

import json

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from llmpre.models import ModelConfig, build_model, causal_lm_loss, from_pretrained, save_pretrained
from llmpre.models.hf_config import from_hf_dict

from . import numpy_ref
from .parity import hf_grads, max_abs

CONFIGS = {
    "qwen": {"model_type": "qwen", "architectures": ["QWenLMHeadModel"], "vocab_size": 96, "hidden_size": 32,
             "intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": 4, "kv_channels": 8,
             "layer_norm_epsilon": 1e-6, "rotary_emb_base": 10000.0, "rotary_pct": 1.0, "no_bias": True,
             "max_position_embeddings": 64, "seq_length": 64, "tie_word_embeddings": False},
    "qwen_partial_rotary": {"model_type": "qwen", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 80,
                            "num_hidden_layers": 2, "num_attention_heads": 4, "kv_channels": 8,
                            "layer_norm_epsilon": 1e-6, "rotary_emb_base": 500.0, "rotary_pct": 0.5,
                            "no_bias": True, "max_position_embeddings": 64},
    "baichuan_7b": {"model_type": "baichuan", "architectures": ["BaiChuanForCausalLM"], "vocab_size": 96,
                    "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "rms_norm_eps": 1e-6, "max_position_embeddings": 64, "alibi": False, "lm_head_norm": False},
    "baichuan2_13b": {"model_type": "baichuan", "architectures": ["BaichuanForCausalLM"], "vocab_size": 96,
                      "hidden_size": 36, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 6,
                      "rms_norm_eps": 1e-6, "model_max_length": 64, "alibi": True, "lm_head_norm": True},
    "chatglm": {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "padded_vocab_size": 96,
                "hidden_size": 32, "ffn_hidden_size": 40, "num_layers": 2, "num_attention_heads": 4, "kv_channels": 8,
                "multi_query_attention": True, "multi_query_group_num": 2, "add_qkv_bias": True,
                "add_bias_linear": False, "layernorm_epsilon": 1e-5, "rmsnorm": True, "seq_length": 64,
                "post_layer_norm": True, "apply_residual_connection_post_layernorm": False, "rope_ratio": 2.0},
    "yuan": {"model_type": "yuan", "architectures": ["YuanForCausalLM"], "vocab_size": 96, "hidden_size": 32,
             "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-6,
             "model_max_length": 64, "tie_word_embeddings": False},
}


def seeded_weights(model, seed=7):
    """Non-trivial weights: norms 1 + 0.2 N, biases 0.2 N, matrices N(0, 0.5 / sqrt(fan_in))."""
    rng = np.random.default_rng(seed)
    with paddle.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if len(shape) == 1:
                base = 1.0 if name.endswith("norm.weight") else 0.0
                value = base + 0.2 * rng.standard_normal(shape)
            elif name.startswith("embed_tokens"):
                value = rng.standard_normal(shape) / np.sqrt(shape[1])
            else:
                fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
                value = 0.5 / np.sqrt(fan_in) * rng.standard_normal(shape)
            p.set_value(value.astype("float32"))


@pytest.fixture(scope="module", params=list(CONFIGS))
def family(request, tmp_path_factory):
    hf_config = CONFIGS[request.param]
    config = from_hf_dict(hf_config)
    model = build_model(config, seed=0)
    seeded_weights(model)
    path = tmp_path_factory.mktemp(request.param)
    save_pretrained(model, path)
    ids = np.random.RandomState(3).randint(0, config.vocab_size, size=(2, 12))
    return request.param, hf_config, path, ids


def test_logits_and_loss_match_numpy(family):
    name, hf_config, path, ids = family
    model = from_pretrained(path)
    tensors = load_file(str(path / "model.safetensors"))
    want = numpy_ref.logits(tensors, {**json.loads((path / "config.json").read_text()), **hf_config}, ids)
    logits = model(paddle.to_tensor(ids))
    np.testing.assert_allclose(logits.numpy(), want, atol=1e-4, rtol=0)
    loss = causal_lm_loss(logits[:, :-1], paddle.to_tensor(ids[:, 1:]))
    np.testing.assert_allclose(loss.item(), numpy_ref.loss(tensors, hf_config, ids), atol=1e-5, rtol=0)
    print(f"{name}: max |logits - numpy| = {max_abs(logits.numpy(), want):.2e}")


def test_every_gradient_matches_finite_differences(family):
    name, hf_config, path, ids = family
    model = from_pretrained(path)
    ids_t = paddle.to_tensor(ids)
    causal_lm_loss(model(ids_t)[:, :-1], ids_t[:, 1:]).backward()
    grads = hf_grads(model)
    tensors = {k: v.astype(np.float64) for k, v in load_file(str(path / "model.safetensors")).items()}
    assert set(grads) == set(tensors)
    rng = np.random.default_rng(11)
    h = 1e-4
    for tname in sorted(tensors):
        base = tensors[tname]
        for _ in range(2):
            idx = tuple(int(rng.integers(0, n)) for n in base.shape)
            plus, minus = base.copy(), base.copy()
            plus[idx] += h
            minus[idx] -= h
            fd = (numpy_ref.loss({**tensors, tname: plus}, hf_config, ids)
                  - numpy_ref.loss({**tensors, tname: minus}, hf_config, ids)) / (2 * h)
            np.testing.assert_allclose(grads[tname][idx], fd, atol=1e-5, rtol=1e-3, err_msg=f"{name} {tname}{idx}")
