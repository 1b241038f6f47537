"""Checkpoint name and layout tables: llmpre parameters <-> HF tensors, per ``model_type``.

A :class:`Rule` ties one or more HF tensors to one or more llmpre parameters
with a layout ``kind``:

=============  ==========================================================================
kind           HF tensor(s) from llmpre parameter(s)
=============  ==========================================================================
``copy``       the same array (embeddings, norms, biases, convolutions, GPT-2 ``Conv1D``)
``linear``     transpose: HF ``nn.Linear`` is ``[out, in]``, Paddle's ``[in, out]``
``rows``       fused Linear: transposes stacked on axis 0 (``W_pack``, ``c_attn``,
               ``query_key_value`` of ChatGLM, ``dense_h_to_4h``); biases concatenated
``cols``       fused GPT-2 ``Conv1D``: ``[in, out]`` blocks concatenated on axis 1
``heads3``     Bloom's and GLM's fused q/k/v: rows ordered ``[head, (q|k|v), head_dim]``
``yuan_qk``    Yuan2 ``q_proj``/``k_proj``: concatenated, their rows ``[head, (q|k), head_dim]``
               are llmpre's true query/key heads
=============  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import paddle

from llmpre.models.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    hf: Tuple[str, ...]
    ours: Tuple[str, ...]
    kind: str


def _r(hf, ours, kind="copy") -> Rule:
    return Rule(tuple([hf] if isinstance(hf, str) else hf), tuple([ours] if isinstance(ours, str) else ours), kind)


def _linear(hf_prefix: str, ours_prefix: str, bias: bool) -> List[Rule]:
    rules = [_r(f"{hf_prefix}.weight", f"{ours_prefix}.weight", "linear")]
    return rules + ([_r(f"{hf_prefix}.bias", f"{ours_prefix}.bias")] if bias else [])


def _fused(hf_prefix: str, ours: List[str], bias: bool, kind: str = "rows") -> List[Rule]:
    rules = [_r(f"{hf_prefix}.weight", tuple(f"{o}.weight" for o in ours), kind)]
    if bias:
        rules.append(_r(f"{hf_prefix}.bias", tuple(f"{o}.bias" for o in ours), "rows" if kind == "cols" else kind))
    return rules


def _norm(hf: str, ours: str, config: ModelConfig) -> List[Rule]:
    rules = [_r(f"{hf}.weight", f"{ours}.weight")]
    return rules + ([_r(f"{hf}.bias", f"{ours}.bias")] if config.norm_type == "layernorm" else [])


def _swiglu(hf: str, ours: str, names=("gate_proj", "up_proj", "down_proj")) -> List[Rule]:
    return [r for hf_n, o in zip(names, ("gate_proj", "up_proj", "down_proj"))
            for r in _linear(f"{hf}.{hf_n}", f"{ours}.{o}", False)]


def _llama_layer(c: ModelConfig, i: int) -> List[Rule]:
    t, P, L = c.model_type, f"model.layers.{i}.", f"layers.{i}."
    a, m = P + "self_attn", L + "self_attn"
    rules = _norm(P + "input_layernorm", L + "input_layernorm", c)
    rules += _norm(P + "post_attention_layernorm", L + "post_attention_layernorm", c)
    if c.mla is not None:
        if c.mla.q_lora_rank is None:
            rules += _linear(a + ".q_proj", m + ".q_proj", False)
        else:
            rules += _linear(a + ".q_a_proj", m + ".q_a_proj", False) + _linear(a + ".q_b_proj", m + ".q_b_proj", False)
            rules.append(_r(a + ".q_a_layernorm.weight", m + ".q_a_layernorm.weight"))
        rules += _linear(a + ".kv_a_proj_with_mqa", m + ".kv_a_proj_with_mqa", False)
        rules += _linear(a + ".kv_b_proj", m + ".kv_b_proj", False)
        rules.append(_r(a + ".kv_a_layernorm.weight", m + ".kv_a_layernorm.weight"))
    elif t == "baichuan":
        rules += _fused(a + ".W_pack", [m + ".q_proj", m + ".k_proj", m + ".v_proj"], False)
    elif t == "yuan":
        rules.append(_r((a + ".q_proj.weight", a + ".k_proj.weight"), (m + ".q_proj.weight", m + ".k_proj.weight"),
                        "yuan_qk"))
        rules += _linear(a + ".v_proj", m + ".v_proj", False)
        for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "output_layernorm.weight"):
            rules.append(_r(f"{a}.lf_gate.{name}", f"{m}.lf_gate.{name}"))
    else:
        for p in ("q_proj", "k_proj", "v_proj"):
            rules += _linear(f"{a}.{p}", f"{m}.{p}", c.attention_bias)
    rules += _linear(a + ".o_proj", m + ".o_proj", c.attention_out_bias)
    sparse = c.moe is not None and c.moe.is_sparse(i)
    if not sparse:
        names = ("up_proj", "gate_proj", "down_proj") if t == "yuan" else ("gate_proj", "up_proj", "down_proj")
        return rules + _swiglu(P + "mlp", L + "mlp", names)
    e = c.moe
    hf_mlp = P + ("block_sparse_moe" if t == "mixtral" else "mlp")
    rules += _linear(hf_mlp + ".gate", L + "mlp.gate", False)
    if e.topk_method == "noaux_tc":
        rules.append(_r(hf_mlp + ".gate.e_score_correction_bias", L + "mlp.gate.e_score_correction_bias"))
    names = ("w1", "w3", "w2") if t == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    for j in range(e.num_experts):
        rules += _swiglu(f"{hf_mlp}.experts.{j}", f"{L}mlp.experts.{j}", names)
    if e.shared_expert_intermediate_size:
        shared = "shared_experts" if t.startswith("deepseek") else "shared_expert"
        rules += _swiglu(f"{hf_mlp}.{shared}", L + "mlp.shared_expert")
        if e.shared_expert_gate:
            rules += _linear(hf_mlp + ".shared_expert_gate", L + "mlp.shared_expert_gate", False)
    return rules


def _qwen_layer(c: ModelConfig, i: int) -> List[Rule]:
    P, L = f"transformer.h.{i}.", f"layers.{i}."
    rules = [_r(P + "ln_1.weight", L + "input_layernorm.weight"),
             _r(P + "ln_2.weight", L + "post_attention_layernorm.weight")]
    rules += _fused(P + "attn.c_attn", [L + "self_attn.q_proj", L + "self_attn.k_proj", L + "self_attn.v_proj"], True)
    rules += _linear(P + "attn.c_proj", L + "self_attn.o_proj", c.attention_out_bias)
    # Qwen's MLP is c_proj(w1(x) * silu(w2(x))): w2 is the gate, w1 the up projection.
    return rules + [r for hf, o in (("w2", "gate_proj"), ("w1", "up_proj"), ("c_proj", "down_proj"))
                    for r in _linear(f"{P}mlp.{hf}", f"{L}mlp.{o}", c.mlp_bias)]


def _chatglm_layer(c: ModelConfig, i: int) -> List[Rule]:
    P, L = f"transformer.encoder.layers.{i}.", f"layers.{i}."
    rules = [_r(P + "input_layernorm.weight", L + "input_layernorm.weight"),
             _r(P + "post_attention_layernorm.weight", L + "post_attention_layernorm.weight")]
    rules += _fused(P + "self_attention.query_key_value",
                    [L + "self_attn.q_proj", L + "self_attn.k_proj", L + "self_attn.v_proj"], c.attention_bias)
    rules += _linear(P + "self_attention.dense", L + "self_attn.o_proj", c.attention_out_bias)
    rules += _fused(P + "mlp.dense_h_to_4h", [L + "mlp.gate_proj", L + "mlp.up_proj"], c.mlp_bias)
    return rules + _linear(P + "mlp.dense_4h_to_h", L + "mlp.down_proj", c.mlp_bias)


def _glm_layer(c: ModelConfig, i: int) -> List[Rule]:
    """THUDM's GLM names (ChatGLM-6B; GLM-130B's SAT checkpoints use the same): q/k/v fused per head;
    GLM-130B's ``dense_h_to_4h`` is ``[x1 | x2]`` with ``x1 * gelu(x2)``: x1 the up, x2 the gate projection."""
    P, L = f"transformer.layers.{i}.", f"layers.{i}."
    rules = _norm(P + "input_layernorm", L + "input_layernorm", c)
    rules += _norm(P + "post_attention_layernorm", L + "post_attention_layernorm", c)
    rules += _fused(P + "attention.query_key_value",
                    [L + "self_attn.q_proj", L + "self_attn.k_proj", L + "self_attn.v_proj"], True, "heads3")
    rules += _linear(P + "attention.dense", L + "self_attn.o_proj", True)
    if c.mlp_type == "gated":
        rules += _fused(P + "mlp.dense_h_to_4h", [L + "mlp.up_proj", L + "mlp.gate_proj"], True)
    else:
        rules += _linear(P + "mlp.dense_h_to_4h", L + "mlp.up_proj", True)
    return rules + _linear(P + "mlp.dense_4h_to_h", L + "mlp.down_proj", True)


def _gpt2_layer(c: ModelConfig, i: int) -> List[Rule]:
    P, L = f"transformer.h.{i}.", f"layers.{i}."
    rules = _norm(P + "ln_1", L + "input_layernorm", c) + _norm(P + "ln_2", L + "post_attention_layernorm", c)
    rules += _fused(P + "attn.c_attn", [L + "self_attn.q_proj", L + "self_attn.k_proj", L + "self_attn.v_proj"],
                    True, "cols")
    for hf, o in (("attn.c_proj", "self_attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"), ("mlp.c_proj", "mlp.down_proj")):
        rules += [_r(f"{P}{hf}.weight", f"{L}{o}.weight"), _r(f"{P}{hf}.bias", f"{L}{o}.bias")]
    return rules


def _opt_layer(c: ModelConfig, i: int) -> List[Rule]:
    P, L = f"model.decoder.layers.{i}.", f"layers.{i}."
    rules = _norm(P + "self_attn_layer_norm", L + "input_layernorm", c)
    rules += _norm(P + "final_layer_norm", L + "post_attention_layernorm", c)
    for hf, o in (("self_attn.q_proj", "self_attn.q_proj"), ("self_attn.k_proj", "self_attn.k_proj"),
                  ("self_attn.v_proj", "self_attn.v_proj"), ("self_attn.out_proj", "self_attn.o_proj"),
                  ("fc1", "mlp.up_proj"), ("fc2", "mlp.down_proj")):
        rules += _linear(P + hf, L + o, True)
    return rules


def _bloom_layer(c: ModelConfig, i: int) -> List[Rule]:
    P, L = f"transformer.h.{i}.", f"layers.{i}."
    rules = _norm(P + "input_layernorm", L + "input_layernorm", c)
    rules += _norm(P + "post_attention_layernorm", L + "post_attention_layernorm", c)
    rules += _fused(P + "self_attention.query_key_value",
                    [L + "self_attn.q_proj", L + "self_attn.k_proj", L + "self_attn.v_proj"], True, "heads3")
    for hf, o in (("self_attention.dense", "self_attn.o_proj"), ("mlp.dense_h_to_4h", "mlp.up_proj"),
                  ("mlp.dense_4h_to_h", "mlp.down_proj")):
        rules += _linear(P + hf, L + o, True)
    return rules


def checkpoint_rules(c: ModelConfig) -> List[Rule]:
    """Every tensor of ``c``'s HF checkpoint and the llmpre parameters it holds."""
    t = c.model_type
    lm_head = [] if c.tie_word_embeddings else [_r("lm_head.weight", "lm_head.weight", "linear")]
    if t == "qwen":
        top = [_r("transformer.wte.weight", "embed_tokens.weight"), _r("transformer.ln_f.weight", "norm.weight")]
        layer = _qwen_layer
    elif t == "chatglm":
        top = [_r("transformer.embedding.word_embeddings.weight", "embed_tokens.weight"),
               _r("transformer.encoder.final_layernorm.weight", "norm.weight")]
        lm_head = [_r("transformer.output_layer.weight", "lm_head.weight", "linear")]
        layer = _chatglm_layer
    elif t == "glm":
        top = [_r("transformer.word_embeddings.weight", "embed_tokens.weight")]
        top += _norm("transformer.final_layernorm", "norm", c)
        layer = _glm_layer
    elif t == "gpt2":
        top = [_r("transformer.wte.weight", "embed_tokens.weight"),
               _r("transformer.wpe.weight", "embed_positions.weight")]
        top += _norm("transformer.ln_f", "norm", c)
        layer = _gpt2_layer
    elif t == "opt":
        top = [_r("model.decoder.embed_tokens.weight", "embed_tokens.weight"),
               _r("model.decoder.embed_positions.weight", "embed_positions.weight")]
        if c.final_norm:
            top += _norm("model.decoder.final_layer_norm", "norm", c)
        if c.word_embed_proj_dim:
            top += _linear("model.decoder.project_in", "project_in", False)
            top += _linear("model.decoder.project_out", "project_out", False)
        layer = _opt_layer
    elif t == "bloom":
        top = [_r("transformer.word_embeddings.weight", "embed_tokens.weight")]
        top += _norm("transformer.word_embeddings_layernorm", "embed_norm", c) + _norm("transformer.ln_f", "norm", c)
        layer = _bloom_layer
    else:
        top = [_r("model.embed_tokens.weight", "embed_tokens.weight")] + _norm("model.norm", "norm", c)
        layer = _llama_layer
        lm_head = lm_head + _mtp_rules(c)
    return top + [r for i in range(c.num_hidden_layers) for r in layer(c, i)] + lm_head


def _mtp_rules(c: ModelConfig) -> List[Rule]:
    """DeepSeek-V3's multi-token-prediction depth ``j`` is HF layer ``num_hidden_layers + j``:
    its decoder block, ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm``, and copies of
    the shared embedding and output head (``embed_tokens``, ``shared_head.head``), which
    DeepSeek's checkpoints store and llmpre writes from (and reads into) the one shared tensor."""
    rules: List[Rule] = []
    for j in range(c.num_nextn_predict_layers):
        i = c.num_hidden_layers + j
        P, M = f"model.layers.{i}.", f"mtp.{j}."
        rules += [Rule(r.hf, tuple(o.replace(f"layers.{i}.", M + "block.", 1) for o in r.ours), r.kind)
                  for r in _llama_layer(c, i)]
        rules += _norm(P + "enorm", M + "enorm", c) + _norm(P + "hnorm", M + "hnorm", c)
        rules += _linear(P + "eh_proj", M + "eh_proj", False) + _norm(P + "shared_head.norm", M + "norm", c)
        rules.append(_r(P + "embed_tokens.weight", "embed_tokens.weight"))
        rules.append(_r(P + "shared_head.head.weight", "embed_tokens.weight") if c.tie_word_embeddings
                     else _r(P + "shared_head.head.weight", "lm_head.weight", "linear"))
    return rules


# Tensors some published checkpoints carry that the model does not need.
IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq", "attn.bias", "attn.masked_bias")


def to_hf(rule: Rule, ours: List[paddle.Tensor], config: ModelConfig) -> List[paddle.Tensor]:
    """llmpre parameter values -> the rule's HF tensors."""
    k = rule.kind
    if k == "copy":
        return ours
    if k == "linear":
        return [ours[0].transpose([1, 0])]
    if k == "rows":
        return [paddle.concat([t.transpose([1, 0]) if t.ndim == 2 else t for t in ours], axis=0)]
    if k == "cols":
        return [paddle.concat(ours, axis=1)]
    heads, d = config.num_attention_heads, config.head_dim
    if k == "heads3":  # [in, H*d] x3 -> [H, 3, d, in] -> [3*H*d, in]  (biases: [H*d] x3 -> [H, 3, d])
        parts = [t.transpose([1, 0]) if t.ndim == 2 else t for t in ours]
        stacked = paddle.stack([p.reshape([heads, d, -1]) for p in parts], axis=1)        # [H, 3, d, in|1]
        return [stacked.reshape([3 * heads * d, -1]).squeeze(-1) if ours[0].ndim == 1 else
                stacked.reshape([3 * heads * d, -1])]
    if k == "yuan_qk":  # true q/k heads [in, H*d] -> rows [H, (q|k), d] -> split in halves as HF q_proj, k_proj
        q, kk = (t.transpose([1, 0]).reshape([heads, 1, d, -1]) for t in ours)
        both = paddle.concat([q, kk], axis=1).reshape([2 * heads * d, -1])                 # [2Hd, in]
        return [both[: heads * d], both[heads * d:]]
    raise ValueError(f"unknown layout kind {k!r}")


def from_hf(rule: Rule, hf: List[paddle.Tensor], config: ModelConfig) -> List[paddle.Tensor]:
    """The rule's HF tensors -> llmpre parameter values (the inverse of :func:`to_hf`)."""
    k = rule.kind
    if k == "copy":
        return hf
    if k == "linear":
        return [hf[0].transpose([1, 0])]
    heads, d = config.num_attention_heads, config.head_dim
    if k in ("rows", "cols"):
        sizes = _fused_sizes(rule, config)
        parts = paddle.split(hf[0], sizes, axis=0 if k == "rows" or hf[0].ndim == 1 else 1)
        return [p.transpose([1, 0]) if p.ndim == 2 and k == "rows" else p for p in parts]
    if k == "heads3":
        t = hf[0].reshape([heads, 3, d, -1])                                               # [H, 3, d, in|1]
        parts = [t[:, j].reshape([heads * d, -1]) for j in range(3)]
        return [p.squeeze(-1) if hf[0].ndim == 1 else p.transpose([1, 0]) for p in parts]
    if k == "yuan_qk":
        both = paddle.concat(hf, axis=0).reshape([heads, 2, d, -1])                        # [H, (q|k), d, in]
        return [both[:, j].reshape([heads * d, -1]).transpose([1, 0]) for j in range(2)]
    raise ValueError(f"unknown layout kind {k!r}")


def _fused_sizes(rule: Rule, c: ModelConfig) -> List[int]:
    """Output widths of the parameters a fused tensor holds (q | k | v, or gate | up)."""
    widths: Dict[str, int] = {"q_proj": c.num_attention_heads * c.head_dim,
                              "k_proj": c.num_key_value_heads * c.head_dim,
                              "v_proj": c.num_key_value_heads * c.head_dim,
                              "gate_proj": c.intermediate_size, "up_proj": c.intermediate_size}
    return [widths[name.split(".")[-2]] for name in rule.ours]


def hf_shapes(rule: Rule, ours_shapes: List[List[int]]) -> List[List[int]]:
    """The HF tensor shapes a rule produces from llmpre parameter shapes (no data needed)."""
    k = rule.kind
    if k == "copy":
        return [list(s) for s in ours_shapes]
    if k == "linear":
        return [list(ours_shapes[0])[::-1]]
    if k in ("rows", "heads3"):
        if len(ours_shapes[0]) == 1:
            return [[sum(s[0] for s in ours_shapes)]]
        return [[sum(s[1] for s in ours_shapes), ours_shapes[0][0]]]
    if k == "cols":
        if len(ours_shapes[0]) == 1:
            return [[sum(s[0] for s in ours_shapes)]]
        return [[ours_shapes[0][0], sum(s[1] for s in ours_shapes)]]
    if k == "yuan_qk":
        return [list(ours_shapes[0])[::-1], list(ours_shapes[1])[::-1]]
    raise ValueError(f"unknown layout kind {k!r}")
