"""Generate tests/fixtures/hf/<family>/: tiny HF transformers models with seeded, non-trivial
weights, and what transformers computes for them (logits, loss, every gradient).

Needs torch + transformers, which llmpre itself does not use; run it from a separate venv:

    python3 -m venv /work/hfvenv && /work/hfvenv/bin/pip install torch==2.13.0 transformers safetensors numpy
    /work/hfvenv/bin/python tools/make_hf_fixtures.py [family ...]

Per family: ``config.json`` (transformers-5 keys) and ``model.safetensors`` as
``save_pretrained`` writes them, ``input_ids.npy`` int64 [2, 32], ``logits.npy`` float32
[2, 32, vocab], ``grads.safetensors`` (the gradient of every parameter under its on-disk
name) and ``expected.json`` (loss, MoE auxiliary loss, versions).  Weights: 2-D weights
N(0, 0.5/sqrt(fan_in)) (embeddings N(0, 1)), norm weights 1 + 0.2 N(0, 1) (Gemma's
offset-style norms 0.2 N(0, 1)), biases 0.2 N(0, 1).  Loss = HF causal-LM loss
(``labels=input_ids``: logits[:, :-1] vs ids[:, 1:], mean over all 62 positions); for MoE
models run with ``output_router_logits=True`` the reported ``total_loss`` (whose gradients
are stored) adds ``router_aux_loss_coef * aux_loss``.  Model in eval mode, eager attention,
float32, positions arange(32).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hf"
VOCAB, HIDDEN, SEQ, BATCH = 256, 32, 32, 2
COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, initializer_range=0.02, bos_token_id=1, eos_token_id=2, pad_token_id=0)

FAMILIES = {
    # LLaMA with Llama-3.1 RoPE scaling (small original length so all three bands are used) and GQA.
    "llama3": lambda: transformers.LlamaConfig(
        **COMMON, intermediate_size=64, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    # Mistral: a sliding window shorter than the sequence.
    "mistral": lambda: transformers.MistralConfig(
        **COMMON, intermediate_size=64, num_key_value_heads=2, sliding_window=12, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # Qwen2 with q/k/v biases, YaRN scaling and untied embeddings.
    "qwen2": lambda: transformers.Qwen2Config(
        **COMMON, intermediate_size=64, num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                         "original_max_position_embeddings": 16}),
    # Gemma: multi-query attention, head_dim 16 (q width 64 != hidden 32), GeGLU, (1+w) norms.
    "gemma": lambda: transformers.GemmaConfig(
        **COMMON, intermediate_size=64, num_key_value_heads=1, head_dim=16, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "mixtral": lambda: transformers.MixtralConfig(
        **COMMON, intermediate_size=32, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        router_aux_loss_coef=0.02, rms_norm_eps=1e-5, sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    # Qwen-MoE: layer 0 dense (mlp_only_layers), layer 1 sparse with a gated shared expert.
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        **COMMON, intermediate_size=64, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=24, shared_expert_intermediate_size=40, norm_topk_prob=False,
        mlp_only_layers=[0], router_aux_loss_coef=0.001, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    # DeepSeek-V2-Lite style: no query bottleneck, group-limited greedy routing, YaRN with mscale.
    "deepseek_v2": lambda: transformers.DeepseekV2Config(
        **COMMON, intermediate_size=64, num_key_value_heads=4, moe_intermediate_size=24, n_routed_experts=4,
        num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, topk_method="group_limited_greedy",
        n_group=2, topk_group=1,
        routed_scaling_factor=2.0, q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=8,
        v_head_dim=12, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale": 0.707,
                         "mscale_all_dim": 0.707, "original_max_position_embeddings": 16,
                         "beta_fast": 32, "beta_slow": 1}),
    # DeepSeek-V3: query bottleneck, sigmoid router with score-correction bias, grouped top-k.
    "deepseek_v3": lambda: transformers.DeepseekV3Config(
        **COMMON, intermediate_size=64, num_key_value_heads=4, moe_intermediate_size=24, n_routed_experts=4,
        num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=2, topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5, q_lora_rank=16, kv_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=8,
        v_head_dim=12, rms_norm_eps=1e-6, rope_interleave=True,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 32}),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64, n_inner=None,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=2),
    "opt": lambda: transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=HIDDEN, do_layer_norm_before=True, bos_token_id=1,
        eos_token_id=2, pad_token_id=0),
    # OPT-350m style: post-norm blocks and embeddings narrower than the hidden size.
    "opt_postnorm": lambda: transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=16, do_layer_norm_before=False, bos_token_id=1,
        eos_token_id=2, pad_token_id=0),
    # Bloom with 6 heads: ALiBi slopes for a head count that is not a power of two.
    "bloom": lambda: transformers.BloomConfig(
        vocab_size=VOCAB, hidden_size=36, n_layer=2, n_head=6, layer_norm_epsilon=1e-5, bos_token_id=1,
        eos_token_id=2, pad_token_id=0),
}


def _is_norm(name: str) -> bool:
    return any(k in name for k in ("norm", "ln_", "layernorm")) or name.startswith("transformer.ln_f")


@torch.no_grad()
def seed_weights(model, family: str, gen: torch.Generator) -> None:
    for name, p in model.named_parameters():
        if p.ndim == 1 and _is_norm(name) and name.endswith("weight"):
            offset = 0.0 if family == "gemma" else 1.0
            p.copy_(offset + 0.2 * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1:
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        elif "embed" in name or "wte" in name or "wpe" in name:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
        else:
            fan_in = p.shape[-1]
            p.copy_(0.5 / math.sqrt(fan_in) * torch.randn(p.shape, generator=gen))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.1 * torch.randn(b.shape, generator=gen))


def disk_grads(model, family: str) -> dict:
    """Every parameter's gradient under the name save_pretrained writes (per-expert tensors
    for the stacked expert parameters transformers 5 keeps in memory)."""
    out = {}
    w = ("w1", "w3", "w2") if family == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    for name, p in model.named_parameters():
        g = p.grad.detach().clone()
        if name.endswith("experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            if family == "mixtral":
                prefix = prefix.replace(".mlp.", ".block_sparse_moe.")
            half = g.shape[1] // 2
            for e in range(g.shape[0]):
                out[f"{prefix}{e}.{w[0]}.weight"] = g[e, :half].contiguous()
                out[f"{prefix}{e}.{w[1]}.weight"] = g[e, half:].contiguous()
        elif name.endswith("experts.down_proj"):
            prefix = name[: -len("down_proj")]
            if family == "mixtral":
                prefix = prefix.replace(".mlp.", ".block_sparse_moe.")
            for e in range(g.shape[0]):
                out[f"{prefix}{e}.{w[2]}.weight"] = g[e].contiguous()
        else:
            if family == "mixtral":
                name = name.replace(".mlp.gate.", ".block_sparse_moe.gate.")
            out[name] = g.contiguous()
    return out


def make(family: str) -> dict:
    torch.manual_seed(0)
    config = FAMILIES[family]()
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    gen = torch.Generator().manual_seed(1234)
    seed_weights(model, family, gen)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    ids = torch.from_numpy(np.random.RandomState(20240917).randint(3, VOCAB, size=(BATCH, SEQ)).astype(np.int64))
    moe = hasattr(config, "router_aux_loss_coef") and family in ("mixtral", "qwen2_moe")
    kwargs = {"output_router_logits": True} if moe else {}
    out = model(input_ids=ids, labels=ids, **kwargs)
    lm_loss = transformers.loss.loss_utils.ForCausalLMLoss(out.logits, ids, vocab_size=config.vocab_size)
    total = out.loss
    total.backward()

    target = OUT / family
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in ("config.json", "model.safetensors"):
            os.replace(Path(tmp) / name, target / name)
    np.save(target / "input_ids.npy", ids.numpy())
    np.save(target / "logits.npy", out.logits.detach().numpy().astype(np.float32))
    grads = disk_grads(model, family)
    with safe_open(str(target / "model.safetensors"), "pt") as f:
        on_disk = set(f.keys())
    buffers = {n for n in on_disk if n.endswith("e_score_correction_bias")}
    missing, extra = on_disk - buffers - set(grads), set(grads) - on_disk
    assert not missing and not extra, (family, missing, extra)
    save_file(grads, str(target / "grads.safetensors"))
    expected = {
        "family": family, "class": type(model).__name__, "loss": float(lm_loss),
        "total_loss": float(total), "aux_loss": float(out.aux_loss) if getattr(out, "aux_loss", None) is not None
        else None, "router_aux_loss_coef": getattr(config, "router_aux_loss_coef", None) if moe else None,
        "input_shape": list(ids.shape), "torch": torch.__version__, "transformers": transformers.__version__,
        "weights": "2-D N(0, 0.5/sqrt(fan_in)), embeddings N(0, 1/sqrt(width)), norms 1+0.2N (gemma 0.2N), "
                   "biases 0.2N; "
                   "generator seed 1234; ids RandomState(20240917).randint(3, vocab)",
    }
    (target / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    return expected


if __name__ == "__main__":
    for fam in sys.argv[1:] or list(FAMILIES):
        e = make(fam)
        print(f"{fam:14s} {e['class']:24s} loss {e['loss']:.6f} total {e['total_loss']:.6f}")
