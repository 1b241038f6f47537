"""PaddleNLP 2.8.1 checkpoints: ``config.json`` keys and tensor names/layouts, per family.

PaddleNLP saves a causal LM under its own class names, config keys and tensor names, with
every ``nn.Linear`` weight in Paddle's ``[in, out]`` layout (the layout llmpre's parameters
have) and the base model under a family prefix:

==============  ===================  ===========  =================================================
llmpre          PaddleNLP            prefix       fused tensors (``[in, out]``, output columns)
==============  ===================  ===========  =================================================
llama           llama                ``llama.``   ``qkv_proj`` (``fuse_attention_qkv``): per KV head
                                                  ``[its G query heads | key | value]``;
                                                  ``gate_up_fused_proj``: ``[gate | up]``
baichuan        llama, ``alibi``     ``llama.``   as llama (Baichuan-13B: ALiBi, no NormHead)
qwen            qwen (v1)            ``qwen.``    ``c_attn``: ``[q | k | v]``
gpt2            gpt                  ``gpt.``     ``qkv_proj``: per head ``[q | k | v]``; the tied
                                                  ``lm_head.weight`` is saved as a copy
mixtral         mixtral              ``mixtral.`` none
chatglm         chatglm_v2           ``chatglm_v2.``  ``query_key_value``: ``[q | k | v]``;
                                                  ``dense_h_to_4h``: ``[gate | up]``
bloom           bloom                ``bloom.``   ``query_key_value``: per head ``[q | k | v]``
glm             chatglm (v1)         ``chatglm.``  ``transformer.layers.{i}.attention.query_key_value``:
                                                  per head ``[q | k | v]``; the head is the embedding
opt             opt                  ``opt.``     ``qkv_proj`` as gpt; ``lm_head.decoder_weight``
                                                  is its own ``[vocab, hidden]`` matrix
==============  ===================  ===========  =================================================

Rules are :class:`llmpre.models.hf_names.Rule` s whose ``hf`` names are PaddleNLP's, with the
kinds ``copy``, ``linear`` (stored transposed), ``cols`` (blocks concatenated on the output
axis) and ``grouped_cols`` (the per-head interleavings above, :func:`fused_columns`).
PaddleNLP 2.8.1 has no Mistral, Qwen2, Qwen2-MoE, Gemma, Yuan or DeepSeek model: those
families have no PaddleNLP form.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from llmpre.errors import ConfigError
from llmpre.models.config import ModelConfig
from llmpre.models.hf_config import ARCHITECTURES, from_hf_dict
from llmpre.models.hf_names import Rule

# llmpre model_type -> (PaddleNLP model_type, architecture, tensor prefix)
FAMILIES = {
    "llama": ("llama", "LlamaForCausalLM", "llama."),
    "baichuan": ("llama", "LlamaForCausalLM", "llama."),
    "qwen": ("qwen", "QWenForCausalLM", "qwen."),
    "gpt2": ("gpt", "GPTForCausalLM", "gpt."),
    "mixtral": ("mixtral", "MixtralForCausalLM", "mixtral."),
    "chatglm": ("chatglm_v2", "ChatGLMv2ForCausalLM", "chatglm_v2."),
    "bloom": ("bloom", "BloomForCausalLM", "bloom."),
    "opt": ("opt", "OPTForCausalLM", "opt."),
    "glm": ("chatglm", "ChatGLMForCausalLM", "chatglm."),
}
PADDLENLP_TYPES = sorted({f[0] for f in FAMILIES.values()})
# Keys only PaddleNLP's configs carry (it always writes paddlenlp_version).
_MARKERS = ("paddlenlp_version", "fuse_attention_qkv", "fuse_attention_ffn", "use_fused_rope", "use_fused_rms_norm",
            "rope_scaling_type", "tensor_parallel_output", "use_flash_attention", "recompute_granularity")
# The class defaults PaddleNLP 2.8.1 fills in for keys a config.json leaves out.
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "llama": dict(max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, initializer_range=0.02),
    "qwen": dict(layer_norm_epsilon=1e-6, max_position_embeddings=8192, kv_channels=128, rotary_pct=1.0,
                 rotary_emb_base=10000, no_bias=True, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    "gpt": dict(hidden_activation="gelu", max_position_embeddings=512, layer_norm_eps=1e-5, normalize_before=True,
                bos_token_id=0, eos_token_id=7, initializer_range=0.02),
    "mixtral": dict(max_position_embeddings=4096 * 32, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=1e6,
                    tie_word_embeddings=False, num_experts_per_tok=2, num_local_experts=8,
                    router_aux_loss_coef=0.001, bos_token_id=1, eos_token_id=2),
    "chatglm_v2": dict(kv_channels=128, max_sequence_length=2048, layernorm_epsilon=1e-5, rmsnorm=True,
                       apply_residual_connection_post_layernorm=False, post_layer_norm=True, add_bias_linear=False,
                       add_qkv_bias=False, multi_query_group_num=1, eos_token_id=2),
    "bloom": dict(layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=2),
    "opt": dict(hidden_act="relu", max_position_embeddings=2048, normalize_before=True, word_embed_proj_dim=2048,
                enable_bias=True, initializer_range=0.02, bos_token_id=2, eos_token_id=2),
    "chatglm": dict(vocab_size=130528, layernorm_epsilon=1e-5, bos_token_id=130004, eos_token_id=130005,
                    mask_token_id=130000, gmask_token_id=130001, max_sequence_length=2048, inner_hidden_size=16384,
                    position_encoding_2d=True, activation="gelu", attention_scale=True, quantization_bit=0),
}


def is_paddlenlp_config(d: Mapping[str, Any]) -> bool:
    """Whether a config.json dict was written by PaddleNLP (its model types, class names or keys)."""
    archs = set(d.get("architectures") or [])
    return (d.get("model_type") in ("gpt", "chatglm_v2") or bool(archs & {"GPTForCausalLM", "QWenForCausalLM",
                                                                           "ChatGLMv2ForCausalLM",
                                                                           "ChatGLMForCausalLM"})
            or any(k in d for k in _MARKERS))


# ---------------------------------------------------------------- config.json -> ModelConfig
def _refuse(d, key, bad, why) -> None:
    if d.get(key) is not None and bad(d[key]):
        raise ConfigError(f"PaddleNLP config.json has {key}={d[key]!r}: {why}")


def _pick(d, *keys):
    """The value of the first of ``keys`` present (PaddleNLP accepts attribute_map aliases)."""
    for k in keys:
        if k in d:
            return d[k]
    raise KeyError(keys[0])


def _llama(d) -> dict:
    heads, hidden = d["num_attention_heads"], d["hidden_size"]
    head_dim = hidden // heads
    theta, scaling = float(d["rope_theta"]), None
    kind, factor = d.get("rope_scaling_type"), float(d.get("rope_scaling_factor") or 1.0)
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": factor}
    elif kind == "ntk":            # PaddleNLP's static NTK: a larger base, nothing else
        theta *= factor ** (head_dim / (head_dim - 2))
    elif kind == "dynamic_ntk":
        scaling = {"rope_type": "dynamic", "factor": factor}
    elif kind is not None:
        raise ConfigError(f"PaddleNLP config.json has rope_scaling_type={kind!r}: PaddleNLP 2.8.1 knows linear, "
                          "ntk and dynamic_ntk")
    hf = dict(model_type="llama", vocab_size=d["vocab_size"], hidden_size=hidden,
              intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
              num_attention_heads=heads, num_key_value_heads=d.get("num_key_value_heads") or heads,
              max_position_embeddings=d["max_position_embeddings"], rms_norm_eps=d["rms_norm_eps"],
              rope_theta=theta, rope_scaling=scaling, tie_word_embeddings=d["tie_word_embeddings"],
              initializer_range=d["initializer_range"], hidden_act="silu", bos_token_id=d.get("bos_token_id"),
              eos_token_id=d.get("eos_token_id"))
    if d.get("alibi"):             # Baichuan-13B as PaddleNLP runs it: ALiBi, a plain lm_head
        hf.update(model_type="baichuan", alibi=True, lm_head_norm=False)
    return hf


def _qwen(d) -> dict:
    return {**d, "model_type": "qwen"}


def _gpt(d) -> dict:
    _refuse(d, "normalize_before", lambda v: not v, "llmpre's GPT is pre-norm (normalize_before=true)")
    _refuse(d, "hidden_activation", lambda v: v != "gelu",
            "PaddleNLP's GPT calls its activation with approximate=True, which only gelu takes")
    return dict(model_type="gpt2", vocab_size=d["vocab_size"], n_embd=d["hidden_size"],
                n_inner=d["intermediate_size"], n_layer=d["num_hidden_layers"], n_head=d["num_attention_heads"],
                n_positions=d["max_position_embeddings"], layer_norm_epsilon=d["layer_norm_eps"],
                activation_function="gelu_new", initializer_range=d["initializer_range"],
                bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"))


def _mixtral(d) -> dict:
    return {**d, "model_type": "mixtral"}


def _chatglm_v2(d) -> dict:
    # PaddleNLP's rotary base is always 10000 (no rope_ratio); q/k/v biases follow either flag
    return dict(model_type="chatglm", num_layers=_pick(d, "num_hidden_layers", "num_layers"),
                padded_vocab_size=_pick(d, "vocab_size", "padded_vocab_size"), hidden_size=d["hidden_size"],
                ffn_hidden_size=d["ffn_hidden_size"], kv_channels=d["kv_channels"],
                num_attention_heads=d["num_attention_heads"], multi_query_attention=True,
                multi_query_group_num=d["multi_query_group_num"],
                seq_length=_pick(d, "max_sequence_length", "seq_length"), layernorm_epsilon=d["layernorm_epsilon"],
                rmsnorm=d["rmsnorm"], add_qkv_bias=bool(d["add_qkv_bias"] or d["add_bias_linear"]),
                add_bias_linear=d["add_bias_linear"], post_layer_norm=d["post_layer_norm"],
                apply_residual_connection_post_layernorm=d["apply_residual_connection_post_layernorm"],
                bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"))


def _chatglm(d) -> dict:
    # ChatGLM-6B (GLM v1). PaddleNLP's "geglu" activation does not run in 2.8.1 (a misspelt method) and its
    # 1-D positions are derived wrongly (position_ids[context:] indexes samples): both refused.
    _refuse(d, "activation", lambda v: v != "gelu", "PaddleNLP 2.8.1's ChatGLM runs only gelu")
    _refuse(d, "position_encoding_2d", lambda v: not v, "PaddleNLP 2.8.1 derives 1-D GLM positions wrongly; "
            "llmpre reads its ChatGLM with 2-D positions only")
    _refuse(d, "pre_seq_len", lambda v: True, "P-tuning v2 prefix encoders are not implemented")
    _refuse(d, "quantization_bit", bool, "quantized checkpoints are not read")
    _refuse(d, "attention_scale", lambda v: not v, "llmpre always scales attention scores by 1/sqrt(head_dim)")
    return dict(model_type="chatglm", vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                num_layers=_pick(d, "num_hidden_layers", "num_layers"), num_attention_heads=d["num_attention_heads"],
                inner_hidden_size=d["inner_hidden_size"], max_sequence_length=d["max_sequence_length"],
                layernorm_epsilon=d["layernorm_epsilon"], position_encoding_2d=True,
                mask_token_id=d["mask_token_id"], gmask_token_id=d["gmask_token_id"],
                bos_token_id=d["bos_token_id"], eos_token_id=d.get("eos_token_id"),
                tie_word_embeddings=True)           # PaddleNLP's head is the word embedding


def _bloom(d) -> dict:
    return {**d, "model_type": "bloom"}


def _opt(d) -> dict:
    _refuse(d, "enable_bias", lambda v: not v, "llmpre's OPT has biases")
    return dict(model_type="opt", vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                ffn_dim=_pick(d, "intermediate_size", "ffn_dim"), num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=d["num_attention_heads"], max_position_embeddings=d["max_position_embeddings"],
                word_embed_proj_dim=d["word_embed_proj_dim"], do_layer_norm_before=d["normalize_before"],
                activation_function=_pick(d, "hidden_act", "activation_function"),
                tie_word_embeddings=False,      # PaddleNLP's OPT head is its own matrix
                init_std=d["initializer_range"], bos_token_id=d.get("bos_token_id"),
                eos_token_id=d.get("eos_token_id"))


_READERS = {"llama": _llama, "qwen": _qwen, "gpt": _gpt, "mixtral": _mixtral, "chatglm_v2": _chatglm_v2,
            "bloom": _bloom, "opt": _opt, "chatglm": _chatglm}


def config_from_paddlenlp(d: Mapping[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` of a PaddleNLP config.json dict (PaddleNLP's defaults for absent keys)."""
    t = d.get("model_type")
    if t not in _READERS:
        archs = ", ".join(d.get("architectures") or []) or "none given"
        raise ConfigError(f"PaddleNLP model_type {t!r} (architectures: {archs}) is not supported; llmpre loads "
                          f"PaddleNLP's {', '.join(PADDLENLP_TYPES)}")
    if d.get("use_long_sequence_strategies"):
        raise ConfigError("PaddleNLP config.json has use_long_sequence_strategies=true: not implemented by llmpre")
    full = {**DEFAULTS[t], **d}
    try:
        hf = _READERS[t](full)
    except KeyError as e:
        raise ConfigError(f"PaddleNLP config of model_type {t!r} is missing {e.args[0]}") from None
    hf["architectures"] = [ARCHITECTURES[hf["model_type"]]]
    return from_hf_dict(hf)


# ---------------------------------------------------------------- ModelConfig -> config.json
def config_to_paddlenlp(c: ModelConfig, dtype: str = "float32") -> dict:
    """PaddleNLP's config.json for ``c`` (ConfigError when PaddleNLP 2.8.1 has no such model)."""
    fam = FAMILIES.get(c.model_type)
    if fam is None:
        raise ConfigError(f"model_type={c.model_type!r}: PaddleNLP 2.8.1 has no such model; --style paddlenlp "
                          f"writes {', '.join(sorted(FAMILIES))}")
    t, arch, _ = fam
    eos = list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id
    d: Dict[str, Any] = {"architectures": [arch], "model_type": t, "dtype": dtype, "paddlenlp_version": None,
                         "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
                         "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
                         "initializer_range": c.initializer_range, "bos_token_id": c.bos_token_id,
                         "eos_token_id": eos, "tie_word_embeddings": c.tie_word_embeddings}
    if t in ("llama", "mixtral"):
        d.update(intermediate_size=c.intermediate_size, num_key_value_heads=c.num_key_value_heads,
                 max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
                 rope_theta=c.rope_theta)
    if t == "llama":
        d.update(alibi=c.position == "alibi", fuse_attention_qkv=False, fuse_attention_ffn=False,
                 rope_scaling_type=None, rope_scaling_factor=1.0)
        s = c.rope_scaling
        if s is not None and s.rope_type == "linear":
            d.update(rope_scaling_type="linear", rope_scaling_factor=s.factor)
        elif s is not None and s.rope_type == "dynamic" and s.original_max_position_embeddings in (
                None, c.max_position_embeddings):
            d.update(rope_scaling_type="dynamic_ntk", rope_scaling_factor=s.factor)
    elif t == "mixtral":
        e = c.moe
        d.update(intermediate_size=e.moe_intermediate_size, num_local_experts=e.num_experts,
                 num_experts_per_tok=e.num_experts_per_tok, router_aux_loss_coef=e.router_aux_loss_coef,
                 hidden_act="silu", sliding_window=None)
    elif t == "qwen":
        d.update(intermediate_size=2 * c.intermediate_size, kv_channels=c.head_dim,
                 max_position_embeddings=c.max_position_embeddings, seq_length=c.max_position_embeddings,
                 layer_norm_epsilon=c.rms_norm_eps, rotary_emb_base=c.rope_theta, rotary_pct=c.partial_rotary_factor,
                 no_bias=not c.mlp_bias, use_dynamic_ntk=False, use_logn_attn=False)
    elif t == "gpt":
        d.update(intermediate_size=c.intermediate_size, max_position_embeddings=c.max_position_embeddings,
                 layer_norm_eps=c.rms_norm_eps, hidden_activation="gelu", normalize_before=True,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, fuse_attention_qkv=False)
        d.pop("tie_word_embeddings")
    elif t == "chatglm_v2":
        d.update(ffn_hidden_size=c.intermediate_size, kv_channels=c.head_dim,
                 multi_query_group_num=c.num_key_value_heads, max_sequence_length=c.max_position_embeddings,
                 layernorm_epsilon=c.rms_norm_eps, rmsnorm=True, add_qkv_bias=c.attention_bias,
                 add_bias_linear=c.mlp_bias, post_layer_norm=True, apply_residual_connection_post_layernorm=False)
        d.pop("tie_word_embeddings")
    elif t == "chatglm":
        g = c.glm
        if c.mlp_type != "plain" or not g.position_2d or not c.tie_word_embeddings:
            raise ConfigError("model_type='glm': PaddleNLP 2.8.1's ChatGLM is ChatGLM-6B only (2-D positions, a "
                              "gelu MLP, the head tied to the embedding); GLM-130B has no PaddleNLP form")
        d.update(inner_hidden_size=c.intermediate_size, max_sequence_length=c.max_position_embeddings,
                 layernorm_epsilon=c.rms_norm_eps, position_encoding_2d=True, activation="gelu",
                 attention_scale=True, mask_token_id=g.mask_token_id, gmask_token_id=g.gmask_token_id)
        d.pop("tie_word_embeddings")
    elif t == "bloom":
        d.update(n_layer=d.pop("num_hidden_layers"), n_head=d.pop("num_attention_heads"),
                 layer_norm_epsilon=c.rms_norm_eps, seq_length=c.max_position_embeddings,
                 apply_residual_connection_post_layernorm=False)
    elif t == "opt":
        d.update(intermediate_size=c.intermediate_size, max_position_embeddings=c.max_position_embeddings,
                 word_embed_proj_dim=c.word_embed_proj_dim or c.hidden_size, normalize_before=c.pre_norm,
                 hidden_act=c.hidden_act, enable_bias=True, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)
        d.pop("tie_word_embeddings")
    if t in ("llama", "mixtral", "qwen") and c.tie_word_embeddings:
        raise ConfigError(f"model_type={c.model_type!r} with tie_word_embeddings: PaddleNLP 2.8.1's {arch} cannot "
                          "tie its output layer (a [hidden, vocab] matrix) to the [vocab, hidden] embedding")
    back = config_from_paddlenlp(d)     # what we write must read back as this exact config
    if t == "opt":                      # PaddleNLP's OPT head is a matrix of its own: a tied one is saved as a copy
        back = back.replace(tie_word_embeddings=c.tie_word_embeddings)
    if back != c:
        diff = [f for f in c.__dataclass_fields__ if getattr(back, f) != getattr(c, f)]
        raise ConfigError(f"model_type={c.model_type!r}: PaddleNLP's {t} cannot express this config (fields "
                          f"{', '.join(diff)} would change)")
    return d


# ---------------------------------------------------------------- tensor names and layouts
def _r(pnlp, ours, kind="copy") -> Rule:
    return Rule(tuple([pnlp] if isinstance(pnlp, str) else pnlp), tuple([ours] if isinstance(ours, str) else ours),
                kind)


def _lin(pnlp: str, ours: str, bias: bool) -> List[Rule]:
    return [_r(f"{pnlp}.weight", f"{ours}.weight")] + ([_r(f"{pnlp}.bias", f"{ours}.bias")] if bias else [])


def _fused(pnlp: str, ours: List[str], bias: bool, kind: str) -> List[Rule]:
    rules = [_r(f"{pnlp}.weight", tuple(f"{o}.weight" for o in ours), kind)]
    return rules + ([_r(f"{pnlp}.bias", tuple(f"{o}.bias" for o in ours), kind)] if bias else [])


def _norm(pnlp: str, ours: str, bias: bool) -> List[Rule]:
    return _lin(pnlp, ours, bias)


def _attention(c: ModelConfig, a: str, m: str, names, fused: Optional[str], kind: str = "grouped_cols") -> List[Rule]:
    """q/k/v/o of one layer: separate (``names`` q, k, v, o) or fused into ``fused``."""
    qkv = [f"{m}.q_proj", f"{m}.k_proj", f"{m}.v_proj"]
    if fused:
        rules = _fused(f"{a}.{fused}", qkv, c.attention_bias, kind)
    else:
        rules = [r for n, o in zip(names[:3], qkv) for r in _lin(f"{a}.{n}", o, c.attention_bias)]
    return rules + _lin(f"{a}.{names[3]}", f"{m}.o_proj", c.attention_out_bias)


def rules(c: ModelConfig, fused_qkv: bool = False, fused_ffn: bool = False, write: bool = False) -> List[Rule]:
    """Every tensor of ``c``'s PaddleNLP checkpoint and the llmpre parameters it holds.
    ``fused_qkv``/``fused_ffn``: the checkpoint has PaddleNLP's fused projections; ``write``:
    also the tensors PaddleNLP saves as copies of others (GPT's tied ``lm_head.weight``)."""
    t = c.model_type
    if t not in FAMILIES:
        raise ConfigError(f"model_type={t!r}: PaddleNLP 2.8.1 has no such model")
    p = FAMILIES[t][2]
    ln = c.norm_type == "layernorm"
    lm_head = [] if c.tie_word_embeddings else [_r("lm_head.weight", "lm_head.weight")]
    out: List[Rule] = []
    for i in range(c.num_hidden_layers):
        L = f"layers.{i}."
        if t in ("llama", "baichuan", "mixtral"):
            P = f"{p}layers.{i}."
            out += _norm(P + "input_layernorm", L + "input_layernorm", ln)
            out += _norm(P + "post_attention_layernorm", L + "post_attention_layernorm", ln)
            out += _attention(c, P + "self_attn", L + "self_attn", ("q_proj", "k_proj", "v_proj", "o_proj"),
                              "qkv_proj" if fused_qkv else None)
            if t == "mixtral":
                out += _lin(P + "block_sparse_moe.gate", L + "mlp.gate", False)
                for j in range(c.moe.num_experts):
                    E, O = f"{P}block_sparse_moe.experts.{j}.", f"{L}mlp.experts.{j}."
                    out += [_r(E + w + ".weight", O + o + ".weight")
                            for w, o in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj"))]
            else:
                if fused_ffn:
                    out += _fused(P + "mlp.gate_up_fused_proj", [L + "mlp.gate_proj", L + "mlp.up_proj"], False, "cols")
                else:
                    out += _lin(P + "mlp.gate_proj", L + "mlp.gate_proj", False)
                    out += _lin(P + "mlp.up_proj", L + "mlp.up_proj", False)
                out += _lin(P + "mlp.down_proj", L + "mlp.down_proj", False)
        elif t == "qwen":
            P = f"{p}h.{i}."
            out += _norm(P + "ln_1", L + "input_layernorm", False)
            out += _norm(P + "ln_2", L + "post_attention_layernorm", False)
            out += _attention(c, P + "attn", L + "self_attn", (None, None, None, "c_proj"), "c_attn", "cols")
            # Qwen's MLP is c_proj(w1(x) * silu(w2(x))): w2 is the gate, w1 the up projection
            out += [r for n, o in (("w2", "gate_proj"), ("w1", "up_proj"), ("c_proj", "down_proj"))
                    for r in _lin(f"{P}mlp.{n}", f"{L}mlp.{o}", c.mlp_bias)]
        elif t == "chatglm":
            P = f"{p}encoder.layers.{i}."
            out += _norm(P + "input_layernorm", L + "input_layernorm", False)
            out += _norm(P + "post_attention_layernorm", L + "post_attention_layernorm", False)
            out += _attention(c, P + "self_attention", L + "self_attn", (None, None, None, "dense"),
                              "query_key_value", "cols")
            out += _fused(P + "mlp.dense_h_to_4h", [L + "mlp.gate_proj", L + "mlp.up_proj"], c.mlp_bias, "cols")
            out += _lin(P + "mlp.dense_4h_to_h", L + "mlp.down_proj", c.mlp_bias)
        elif t == "glm":
            P = f"{p}transformer.layers.{i}."
            out += _norm(P + "input_layernorm", L + "input_layernorm", True)
            out += _norm(P + "post_attention_layernorm", L + "post_attention_layernorm", True)
            out += _attention(c, P + "attention", L + "self_attn", (None, None, None, "dense"), "query_key_value")
            out += _lin(P + "mlp.dense_h_to_4h", L + "mlp.up_proj", True)
            out += _lin(P + "mlp.dense_4h_to_h", L + "mlp.down_proj", True)
        elif t == "bloom":
            P = f"{p}h.{i}."
            out += _norm(P + "input_layernorm", L + "input_layernorm", True)
            out += _norm(P + "post_attention_layernorm", L + "post_attention_layernorm", True)
            out += _attention(c, P + "self_attention", L + "self_attn", (None, None, None, "dense"),
                              "query_key_value")
            out += _lin(P + "mlp.dense_h_to_4h", L + "mlp.up_proj", True)
            out += _lin(P + "mlp.dense_4h_to_h", L + "mlp.down_proj", True)
        else:                                                  # gpt2 (PaddleNLP's gpt), opt
            P = f"{p}decoder.layers.{i}."
            out += _norm(P + "norm1", L + "input_layernorm", True)
            out += _norm(P + "norm2", L + "post_attention_layernorm", True)
            out += _attention(c, P + "self_attn", L + "self_attn", ("q_proj", "k_proj", "v_proj", "out_proj"),
                              "qkv_proj" if fused_qkv else None)
            out += _lin(P + "linear1", L + "mlp.up_proj", True) + _lin(P + "linear2", L + "mlp.down_proj", True)
    if t in ("llama", "baichuan", "mixtral"):
        top = [_r(p + "embed_tokens.weight", "embed_tokens.weight"), _r(p + "norm.weight", "norm.weight")]
    elif t == "qwen":
        top = [_r(p + "wte.weight", "embed_tokens.weight"), _r(p + "ln_f.weight", "norm.weight")]
    elif t == "chatglm":
        top = [_r(p + "embedding.word_embeddings.weight", "embed_tokens.weight"),
               _r(p + "encoder.final_layernorm.weight", "norm.weight")]
        lm_head = [_r(p + "output_layer.weight", "lm_head.weight")]
    elif t == "glm":
        top = [_r(p + "transformer.word_embeddings.weight", "embed_tokens.weight")]
        top += _norm(p + "transformer.final_layernorm", "norm", True)
    elif t == "bloom":
        top = [_r(p + "word_embeddings.weight", "embed_tokens.weight")]
        top += _norm(p + "word_embeddings_layernorm", "embed_norm", True) + _norm(p + "ln_f", "norm", True)
    else:
        top = [_r(p + "embeddings.word_embeddings.weight", "embed_tokens.weight"),
               _r(p + "embeddings.position_embeddings.weight", "embed_positions.weight")]
        if t == "gpt2":
            top += _norm(p + "decoder.norm", "norm", True)
            lm_head = [_r("lm_head.weight", "embed_tokens.weight")] if write else []
        else:
            top += _norm(p + "decoder.final_layer_norm", "norm", True) if c.final_norm else []
            if c.word_embed_proj_dim:
                top += [_r(p + "embeddings.project_in.weight", "project_in.weight"),
                        _r(p + "decoder.project_out.weight", "project_out.weight")]
            lm_head = ([_r("lm_head.decoder_weight", "embed_tokens.weight")] if write else []) \
                if c.tie_word_embeddings else [_r("lm_head.decoder_weight", "lm_head.weight", "linear")]
    return top + out + lm_head


# Buffers PaddleNLP saves that the model recomputes.
IGNORABLE = re.compile(r".*(rotary_emb\.inv_freq|rotary_pos_emb\.inv_freq)$")


def buffers(c: ModelConfig) -> Dict[str, np.ndarray]:
    """Non-parameter tensors PaddleNLP saves and expects back (else it warns they are newly
    initialised): ChatGLM2's rotary inverse frequencies, ``10000^(-2i/(head_dim/2))``."""
    if c.model_type != "chatglm":
        return {}
    dim = c.head_dim // 2
    inv = 1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    return {FAMILIES["chatglm"][2] + "rotary_pos_emb.inv_freq": inv.astype(np.float32)}
_LAYER = re.compile(r"\.(?:layers|h)\.(\d+)\.")


def layer_index(name: str) -> Optional[int]:
    """The decoder layer a tensor (PaddleNLP or HF name) belongs to, or None."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def fused_columns(kind: str, j: int, features: np.ndarray, offsets: List[int], c: ModelConfig) -> np.ndarray:
    """Output columns of a fused ``[in, out]`` tensor holding output ``features`` of part ``j``
    (``offsets``: the summed widths of the parts before each)."""
    if kind == "cols":
        return offsets[j] + features
    if kind != "grouped_cols":
        raise ValueError(f"unknown layout kind {kind!r}")
    d, g = c.head_dim, c.num_attention_heads // c.num_key_value_heads    # g query heads per KV head
    h, i = np.divmod(features, d)
    if j == 0:                        # query head h sits in block h // g, at place h % g
        return (h // g) * (g + 2) * d + (h % g) * d + i
    return h * (g + 2) * d + (g + j - 1) * d + i                           # key (j=1), value (j=2)
