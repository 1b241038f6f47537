"""HF ``config.json`` <-> :class:`ModelConfig`, one reader and one writer per ``model_type``.

Readers accept transformers-5 keys (``rope_parameters``, ``dtype``) and
transformers-4 / remote-code keys (``rope_theta``, ``rope_scaling``,
``torch_dtype``); anything a family's config turns on that llmpre does not
implement raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses

from typing import Any, Callable, Dict, Mapping

from llmpre.errors import ConfigError
from llmpre.models.config import MODEL_TYPES, GLMConfig, MLAConfig, ModelConfig, MoEConfig, RopeScaling

ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen": "QWenLMHeadModel", "baichuan": "BaichuanForCausalLM", "gemma": "GemmaForCausalLM",
    "chatglm": "ChatGLMModel", "yuan": "YuanForCausalLM", "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM", "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM", "gpt2": "GPT2LMHeadModel", "opt": "OPTForCausalLM",
    "bloom": "BloomForCausalLM", "glm": "ChatGLMModel",
}
# Other spellings of the same architecture found in published checkpoints.
_ALSO = {"baichuan": {"BaiChuanForCausalLM"}, "chatglm": {"ChatGLMForConditionalGeneration"},
         "glm": {"ChatGLMForConditionalGeneration"},
         "qwen": {"QWenLMHeadModel"}}
_ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
         "gelu_fast": "gelu_tanh", "relu": "relu"}
_HF_ACT = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def _rope(d: Mapping[str, Any], theta_key: str = "rope_theta", default: float = 10000.0):
    """(theta, RopeScaling or None) from either key style."""
    params = d.get("rope_parameters")
    if isinstance(params, Mapping) and "rope_theta" in params:  # transformers 5
        return float(params["rope_theta"]), RopeScaling.from_dict(params)
    scaling = d.get("rope_scaling")
    return float(d.get(theta_key, default)), (RopeScaling.from_dict(scaling) if scaling else None)


def _act(d, key="hidden_act", default="silu") -> str:
    name = d.get(key) or default
    if name not in _ACTS:
        raise ConfigError(f"{key}={name!r} is not supported; llmpre implements {', '.join(sorted(_ACTS))}")
    return _ACTS[name]


def _eos(d, default=2):
    eos = d.get("eos_token_id", default)
    return tuple(eos) if isinstance(eos, list) else eos


def _refuse(d, **checks) -> None:
    """Raise for keys whose value turns on something llmpre does not implement."""
    for key, (bad, why) in checks.items():
        if key in d and d[key] is not None and bad(d[key]):
            raise ConfigError(f"config.json has {key}={d[key]!r}: {why}")


def _common(d, **extra) -> dict:
    theta, scaling = _rope(d)
    kw = dict(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
              num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
              num_key_value_heads=d.get("num_key_value_heads"), head_dim=d.get("head_dim"),
              max_position_embeddings=d.get("max_position_embeddings", 2048),
              rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
              tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
              initializer_range=float(d.get("initializer_range", 0.02)), hidden_act=_act(d),
              bos_token_id=d.get("bos_token_id"), eos_token_id=_eos(d))
    kw.update(extra)
    return kw


def _full_attention(d, model_type) -> None:
    window = d.get("sliding_window")
    if model_type in ("qwen2", "qwen2_moe"):
        uses = bool(d.get("use_sliding_window")) and window is not None
    else:
        uses = window is not None and window < d.get("max_position_embeddings", 2048)
    if uses or any(t != "full_attention" for t in d.get("layer_types") or []):
        raise ConfigError(f"{model_type} config uses sliding-window attention (sliding_window={window}) on some "
                          "layers only; llmpre implements one window for all layers (Mistral) or none")


# ---------------------------------------------------------------- readers
def _llama(d):
    _refuse(d, mlp_bias=(bool, "llmpre's LLaMA has no MLP biases"),
            attention_bias=(bool, "HF LLaMA's attention_bias also biases o_proj; llmpre supports q/k/v biases "
                                  "only (Qwen2 style)"))
    _full_attention(d, "llama")
    return _common(d)


def _mistral(d):
    kw = _common(d)
    kw["sliding_window"] = d.get("sliding_window")
    return kw


def _qwen2(d):
    _full_attention(d, "qwen2")
    return _common(d, attention_bias=True)


def _gemma(d):
    # Released Gemma configs say hidden_act="gelu" but mean the tanh approximation (as transformers reads it).
    act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    act = "gelu_pytorch_tanh" if act == "gelu" else act
    return _common(d, hidden_act=_act({"a": act}, "a"), norm_type="rmsnorm_plus_one", scale_embeddings=True,
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", True)))


def _qwen(d):  # Qwen v1 (remote code): intermediate_size is twice the MLP width
    theta = float(d.get("rotary_emb_base", 10000.0))
    return dict(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"] // 2,
                num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
                head_dim=d.get("kv_channels"), max_position_embeddings=d.get("max_position_embeddings", 8192),
                rms_norm_eps=float(d.get("layer_norm_epsilon", 1e-6)), rope_theta=theta,
                partial_rotary_factor=float(d.get("rotary_pct", 1.0)), attention_bias=True,
                attention_out_bias=not d.get("no_bias", True), mlp_bias=not d.get("no_bias", True),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                initializer_range=float(d.get("initializer_range", 0.02)),
                bos_token_id=d.get("bos_token_id"), eos_token_id=_eos(d, None))


def _baichuan(d):
    # Published Baichuan configs carry no position flag: the 13B models (hidden 5120) use ALiBi, the
    # 7B ones RoPE; Baichuan2 (vocabulary 125696) normalises its lm_head.  PaddleNLP's `alibi` key
    # and llmpre's `lm_head_norm` key, when present, decide instead.
    alibi = bool(d.get("alibi", d["hidden_size"] == 5120))
    max_pos = d.get("max_position_embeddings", d.get("model_max_length", 4096))
    return _common(d, max_position_embeddings=max_pos, position="alibi" if alibi else "rope",
                   lm_head_norm=bool(d.get("lm_head_norm", d["vocab_size"] == 125696)))


def _chatglm(d):  # ChatGLM2/3 (remote code)
    _refuse(d, rmsnorm=(lambda v: not v, "llmpre's ChatGLM uses RMSNorm (ChatGLM2/3)"),
            apply_residual_connection_post_layernorm=(bool, "not implemented (ChatGLM2/3 have it false)"),
            post_layer_norm=(lambda v: not v, "llmpre's ChatGLM has a final norm (ChatGLM2/3 do)"))
    mq = d.get("multi_query_attention", True)
    heads = d["num_attention_heads"]
    bias = bool(d.get("add_bias_linear", False))
    return dict(vocab_size=d["padded_vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["ffn_hidden_size"],
                num_hidden_layers=d["num_layers"], num_attention_heads=heads,
                num_key_value_heads=d.get("multi_query_group_num", 2) if mq else heads,
                head_dim=d.get("kv_channels"), max_position_embeddings=d.get("seq_length", 32768),
                rms_norm_eps=float(d.get("layernorm_epsilon", 1e-5)),
                rope_theta=10000.0 * float(d.get("rope_ratio", 1.0)), partial_rotary_factor=0.5,
                rope_interleaved=True, attention_bias=bool(d.get("add_qkv_bias", True)),
                attention_out_bias=bias, mlp_bias=bias, tie_word_embeddings=False,
                bos_token_id=d.get("bos_token_id"), eos_token_id=_eos(d))


# HF's model_type "chatglm" names two architectures: GLM v1 (ChatGLM-6B) and ChatGLM2/3.
_GLM_V1_KEYS = ("inner_hidden_size", "position_encoding_2d")
_CHATGLM2_KEYS = ("ffn_hidden_size", "padded_vocab_size", "multi_query_attention", "kv_channels")


def _chatglm_kind(d) -> str:
    """``glm`` (ChatGLM-6B / GLM v1) or ``chatglm`` (ChatGLM2/3) for a ``model_type: chatglm`` config."""
    v1 = [k for k in _GLM_V1_KEYS if k in d]
    v2 = [k for k in _CHATGLM2_KEYS if k in d]
    if v1 and v2:
        raise ConfigError(f"config.json of model_type 'chatglm' has both ChatGLM-6B (GLM v1) keys ({', '.join(v1)}) "
                          f"and ChatGLM2/3 keys ({', '.join(v2)}); keep the keys of the one it is")
    if not v1 and not v2:
        raise ConfigError("config.json of model_type 'chatglm' has none of the keys that tell ChatGLM-6B "
                          f"({', '.join(_GLM_V1_KEYS)}) from ChatGLM2/3 ({', '.join(_CHATGLM2_KEYS)}); add "
                          "inner_hidden_size (ChatGLM-6B) or ffn_hidden_size (ChatGLM2/3)")
    return "glm" if v1 else "chatglm"


def _glm(d):  # ChatGLM-6B (GLM v1, THUDM's remote code); GLM-130B in the same keys
    _refuse(d, quantization_bit=(bool, "quantized checkpoints are not read; use the float16 weights"),
            pre_seq_len=(lambda v: True, "P-tuning v2 prefix encoders are not implemented"),
            attention_scale=(lambda v: not v, "llmpre always scales attention scores by 1/sqrt(head_dim)"),
            activation=(lambda v: v not in ("gelu", "geglu"),
                        "GLM's MLPs are gelu (ChatGLM-6B, tanh form) and geglu (GLM-130B)"))
    geglu = d.get("activation", "gelu") == "geglu"
    sop = d["bos_token_id"]
    # The first chatglm-6b config.json has no mask ids (its code fixes [MASK], [gMASK] at 150000, 150001):
    # icetk's special tokens sit at <sop> - 4 and <sop> - 3 in every GLM vocabulary.
    glm = GLMConfig(mask_token_id=d.get("mask_token_id", sop - 4), gmask_token_id=d.get("gmask_token_id", sop - 3),
                    position_2d=bool(d.get("position_encoding_2d", True)),
                    deepnorm_init=bool(d.get("deepnorm_init", False)))
    return dict(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                intermediate_size=d.get("inner_hidden_size") or 4 * d["hidden_size"],
                num_hidden_layers=d["num_hidden_layers"] if "num_hidden_layers" in d else d["num_layers"],
                num_attention_heads=d["num_attention_heads"],
                max_position_embeddings=d.get("max_sequence_length", 2048),
                rms_norm_eps=float(d.get("layernorm_epsilon", 1e-5)), norm_type="layernorm",
                mlp_type="gated" if geglu else "plain", hidden_act="gelu" if geglu else "gelu_tanh",
                attention_bias=True, attention_out_bias=True, mlp_bias=True,
                tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
                initializer_range=float(d.get("initializer_range", 0.02)), bos_token_id=sop,
                eos_token_id=_eos(d, None), glm=glm)


def _yuan(d):
    max_pos = d.get("max_position_embeddings", d.get("model_max_length", 8192))
    return _common(d, max_position_embeddings=max_pos, localized_filtering=True,
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", True)))


def _mixtral(d):
    _full_attention(d, "mixtral")
    moe = MoEConfig(num_experts=d["num_local_experts"], num_experts_per_tok=d["num_experts_per_tok"],
                    moe_intermediate_size=d["intermediate_size"], norm_topk_prob=True,
                    router_aux_loss_coef=float(d.get("router_aux_loss_coef", 0.02)))
    return _common(d, moe=moe)


def _qwen2_moe(d):
    _full_attention(d, "qwen2_moe")
    moe = MoEConfig(num_experts=d["num_experts"], num_experts_per_tok=d["num_experts_per_tok"],
                    moe_intermediate_size=d["moe_intermediate_size"],
                    shared_expert_intermediate_size=d.get("shared_expert_intermediate_size", 0),
                    shared_expert_gate=True, norm_topk_prob=bool(d.get("norm_topk_prob", False)),
                    router_aux_loss_coef=float(d.get("router_aux_loss_coef", 0.001)),
                    sparse_step=d.get("decoder_sparse_step", 1), dense_layers=tuple(d.get("mlp_only_layers") or ()))
    return _common(d, attention_bias=bool(d.get("qkv_bias", True)), moe=moe)


def _deepseek(d, v3: bool):
    _refuse(d, attention_bias=(bool, "llmpre's multi-head latent attention has no biases"),
            moe_layer_freq=(lambda v: v != 1, "llmpre makes every layer past first_k_dense_replace sparse"))
    mla = MLAConfig(kv_lora_rank=d["kv_lora_rank"], qk_nope_head_dim=d["qk_nope_head_dim"],
                    qk_rope_head_dim=d["qk_rope_head_dim"], v_head_dim=d["v_head_dim"],
                    q_lora_rank=d.get("q_lora_rank"))
    experts = d.get("n_routed_experts") or d.get("num_experts")
    moe = MoEConfig(num_experts=experts, num_experts_per_tok=d["num_experts_per_tok"],
                    moe_intermediate_size=d["moe_intermediate_size"],
                    shared_expert_intermediate_size=d.get("n_shared_experts", 0) * d["moe_intermediate_size"],
                    norm_topk_prob=bool(d.get("norm_topk_prob", v3)),
                    scoring_func=d.get("scoring_func", "sigmoid" if v3 else "softmax"),
                    topk_method=d.get("topk_method") or ("noaux_tc" if v3 else "greedy"),
                    n_group=d.get("n_group") or 1, topk_group=d.get("topk_group") or 1,
                    routed_scaling_factor=float(d.get("routed_scaling_factor", 1.0)),
                    router_aux_loss_coef=float(d.get("aux_loss_alpha", 0.0)), aux_loss_type="seq",
                    first_k_dense_replace=d.get("first_k_dense_replace", 0))
    kw = _common(d, mla=mla, moe=moe, rope_interleaved=bool(d.get("rope_interleave", True)))
    kw["head_dim"] = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    kw["num_nextn_predict_layers"] = int(d.get("num_nextn_predict_layers") or 0)    # MTP depths
    if d.get("num_nextn_predict_lambda") is not None:                               # PaddleNLP's key
        kw["num_nextn_predict_lambda"] = float(d["num_nextn_predict_lambda"])
    return kw


def _gpt2(d):
    _refuse(d, scale_attn_weights=(lambda v: not v, "llmpre always scales attention by 1/sqrt(head_dim)"),
            scale_attn_by_inverse_layer_idx=(bool, "not implemented"),
            reorder_and_upcast_attn=(bool, "not implemented"))
    h = d.get("n_embd", d.get("hidden_size"))
    return dict(vocab_size=d["vocab_size"], hidden_size=h, intermediate_size=d.get("n_inner") or 4 * h,
                num_hidden_layers=d.get("n_layer", d.get("num_hidden_layers")),
                num_attention_heads=d.get("n_head", d.get("num_attention_heads")),
                max_position_embeddings=d.get("n_positions", d.get("max_position_embeddings", 1024)),
                rms_norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
                hidden_act=_act(d, "activation_function", "gelu_new"), tie_word_embeddings=True,
                initializer_range=float(d.get("initializer_range", 0.02)),
                bos_token_id=d.get("bos_token_id"), eos_token_id=_eos(d, None))


def _opt(d):
    _refuse(d, enable_bias=(lambda v: not v, "llmpre's OPT has biases"),
            layer_norm_elementwise_affine=(lambda v: not v, "llmpre's OPT LayerNorms have weights"))
    pre = bool(d.get("do_layer_norm_before", True))
    proj = d.get("word_embed_proj_dim")
    return dict(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["ffn_dim"],
                num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
                max_position_embeddings=d.get("max_position_embeddings", 2048), rms_norm_eps=1e-5,
                hidden_act=_act(d, "activation_function", "relu"),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", True)), pre_norm=pre,
                final_norm=pre and not d.get("_remove_final_layer_norm", False),
                word_embed_proj_dim=proj if proj and proj != d["hidden_size"] else None,
                initializer_range=float(d.get("init_std", 0.02)),
                bos_token_id=d.get("bos_token_id"), eos_token_id=_eos(d))


def _bloom(d):
    _refuse(d, apply_residual_connection_post_layernorm=(bool, "not implemented (Bloom checkpoints have it false)"))
    h = d.get("hidden_size", d.get("n_embed"))
    return dict(vocab_size=d["vocab_size"], hidden_size=h, intermediate_size=4 * h,
                num_hidden_layers=d.get("n_layer", d.get("num_hidden_layers")),
                num_attention_heads=d.get("n_head", d.get("num_attention_heads")),
                max_position_embeddings=d.get("seq_length", 2048),
                rms_norm_eps=float(d.get("layer_norm_epsilon", 1e-5)), tie_word_embeddings=True,
                initializer_range=float(d.get("initializer_range", 0.02)),
                bos_token_id=d.get("bos_token_id"), eos_token_id=_eos(d))


# Family option defaults that each reader's result is layered on.
FAMILY = {
    "gemma": dict(norm_type="rmsnorm_plus_one", scale_embeddings=True, hidden_act="gelu_tanh"),
    "gpt2": dict(norm_type="layernorm", position="learned", mlp_type="plain", hidden_act="gelu_tanh",
                 attention_bias=True, attention_out_bias=True, mlp_bias=True),
    "opt": dict(norm_type="layernorm", position="learned", mlp_type="plain", hidden_act="relu", position_offset=2,
                attention_bias=True, attention_out_bias=True, mlp_bias=True),
    "bloom": dict(norm_type="layernorm", position="alibi", mlp_type="plain", hidden_act="gelu_tanh",
                  embedding_norm=True, attention_bias=True, attention_out_bias=True, mlp_bias=True),
}
READERS: Dict[str, Callable[[Mapping[str, Any]], dict]] = {
    "llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "gemma": _gemma, "qwen": _qwen,
    "baichuan": _baichuan, "chatglm": _chatglm, "yuan": _yuan, "mixtral": _mixtral, "qwen2_moe": _qwen2_moe,
    "deepseek_v2": lambda d: _deepseek(d, False), "deepseek_v3": lambda d: _deepseek(d, True),
    "gpt2": _gpt2, "opt": _opt, "bloom": _bloom, "glm": _glm,
}


def from_hf_dict(d: Mapping[str, Any]) -> ModelConfig:
    model_type = d.get("model_type")
    if model_type not in READERS or model_type == "glm":     # "glm" is llmpre's name; HF says "chatglm"
        archs = ", ".join(d.get("architectures") or []) or "none given"
        raise ConfigError(f"model_type {model_type!r} (architectures: {archs}) is not supported; llmpre loads "
                          f"{', '.join(t for t in MODEL_TYPES if t != 'glm')}")
    if model_type == "chatglm":
        model_type = _chatglm_kind(d)
    allowed = {ARCHITECTURES[model_type]} | _ALSO.get(model_type, set())
    for arch in d.get("architectures") or []:
        if arch not in allowed:
            raise ConfigError(f"architecture {arch!r} is not supported for model_type {model_type!r}; "
                              f"expected {ARCHITECTURES[model_type]}")
    try:
        kw = READERS[model_type](d)
    except KeyError as e:
        raise ConfigError(f"HF config of model_type {d.get('model_type')!r} is missing {e.args[0]}") from None
    if kw.get("moe") is not None and d.get("moe_capacity_factor"):   # llmpre's key (HF has none): 0/absent = dropless
        kw["moe"] = dataclasses.replace(kw["moe"], moe_capacity_factor=float(d["moe_capacity_factor"]))
    return ModelConfig(**{**FAMILY.get(model_type, {}), **kw, "model_type": model_type})


# ---------------------------------------------------------------- writers
def _check_expressible(c: ModelConfig) -> None:
    """Refuse configs whose options the model_type's HF layout cannot carry."""
    t = c.model_type
    want_bias = {"qwen2": (True, False), "qwen2_moe": (True, False)}.get(t)
    if t in ("llama", "mistral", "gemma", "mixtral", "yuan", "baichuan", "deepseek_v2", "deepseek_v3"):
        want_bias = (False, False)
    if want_bias is not None and (c.attention_bias, c.attention_out_bias) != want_bias:
        raise ConfigError(f"model_type={t!r} with attention_bias={c.attention_bias}, "
                          f"attention_out_bias={c.attention_out_bias} has no HF equivalent: q/k/v-only biases are "
                          "model_type='qwen2', bias-free is 'llama' or 'mistral'; use config.replace(model_type=...)")
    if t in ("llama", "mistral", "qwen2") and (c.moe or c.mla or c.position != "rope" or c.norm_type != "rmsnorm"
                                               or c.mlp_type != "gated" or c.localized_filtering
                                               or c.partial_rotary_factor != 1 or c.lm_head_norm):
        raise ConfigError(f"model_type={t!r} cannot express this config's architecture options")
    if c.sliding_window is not None and t != "mistral":
        raise ConfigError(f"sliding_window={c.sliding_window} is only expressible as model_type='mistral'")
    if (t in ("mixtral", "qwen2_moe", "deepseek_v2", "deepseek_v3")) != (c.moe is not None):
        raise ConfigError(f"model_type={t!r} and moe={c.moe is not None} disagree")


def _rope_keys(c: ModelConfig, style: str, d: dict) -> None:
    scaling = c.rope_scaling.to_dict() if c.rope_scaling else None
    if style == "v4":
        d.update(rope_theta=c.rope_theta, rope_scaling=scaling)
    else:
        d["rope_parameters"] = {"rope_type": "default", **(scaling or {}), "rope_theta": c.rope_theta}


def to_hf_dict(c: ModelConfig, style: str = "v4") -> dict:
    if style not in ("v4", "v5"):
        raise ConfigError(f"to_hf_dict(style={style!r}): use 'v4' or 'v5'")
    _check_expressible(c)
    t = c.model_type
    eos = list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id
    d = {"architectures": [ARCHITECTURES[t]], "model_type": t, "vocab_size": c.vocab_size,
         "initializer_range": c.initializer_range, "tie_word_embeddings": c.tie_word_embeddings,
         "bos_token_id": c.bos_token_id, "eos_token_id": eos}
    llama_like = dict(hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                      num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                      num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
                      max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
                      hidden_act=_HF_ACT[c.hidden_act])
    if t in ("llama", "mistral", "qwen2", "gemma", "baichuan", "yuan", "mixtral", "qwen2_moe",
             "deepseek_v2", "deepseek_v3"):
        d.update(llama_like)
        _rope_keys(c, style, d)
    if t == "llama":
        d.update(attention_bias=False, mlp_bias=False)
    elif t in ("qwen2", "mistral"):
        d.update(sliding_window=c.sliding_window, use_sliding_window=c.sliding_window is not None)
    elif t == "gemma":
        d["hidden_activation"] = d["hidden_act"]      # transformers 4 reads hidden_activation, 5 hidden_act
    elif t == "baichuan":
        d.update(alibi=c.position == "alibi", lm_head_norm=c.lm_head_norm, model_max_length=c.max_position_embeddings)
    elif t == "yuan":
        d["model_max_length"] = c.max_position_embeddings
    elif t == "mixtral":
        e = c.moe
        d.update(num_local_experts=e.num_experts, num_experts_per_tok=e.num_experts_per_tok,
                 intermediate_size=e.moe_intermediate_size, router_aux_loss_coef=e.router_aux_loss_coef,
                 sliding_window=None, output_router_logits=False)
    elif t == "qwen2_moe":
        e = c.moe
        d.update(num_experts=e.num_experts, num_experts_per_tok=e.num_experts_per_tok,
                 moe_intermediate_size=e.moe_intermediate_size,
                 shared_expert_intermediate_size=e.shared_expert_intermediate_size,
                 norm_topk_prob=e.norm_topk_prob, router_aux_loss_coef=e.router_aux_loss_coef,
                 decoder_sparse_step=e.sparse_step, mlp_only_layers=list(e.dense_layers), qkv_bias=True,
                 use_sliding_window=False)
    elif t in ("deepseek_v2", "deepseek_v3"):
        e, m = c.moe, c.mla
        d.pop("head_dim")
        d.update(n_routed_experts=e.num_experts, num_experts_per_tok=e.num_experts_per_tok,
                 moe_intermediate_size=e.moe_intermediate_size,
                 n_shared_experts=e.shared_expert_intermediate_size // e.moe_intermediate_size,
                 norm_topk_prob=e.norm_topk_prob, scoring_func=e.scoring_func, topk_method=e.topk_method,
                 n_group=e.n_group, topk_group=e.topk_group, routed_scaling_factor=e.routed_scaling_factor,
                 aux_loss_alpha=e.router_aux_loss_coef, seq_aux=True, first_k_dense_replace=e.first_k_dense_replace,
                 moe_layer_freq=1, kv_lora_rank=m.kv_lora_rank, q_lora_rank=m.q_lora_rank,
                 qk_nope_head_dim=m.qk_nope_head_dim, qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim,
                 rope_interleave=c.rope_interleaved, attention_bias=False,
                 num_nextn_predict_layers=c.num_nextn_predict_layers,
                 num_nextn_predict_lambda=c.num_nextn_predict_lambda)
    elif t == "qwen":
        d.update(hidden_size=c.hidden_size, intermediate_size=2 * c.intermediate_size,
                 num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                 kv_channels=c.head_dim, max_position_embeddings=c.max_position_embeddings,
                 seq_length=c.max_position_embeddings, layer_norm_epsilon=c.rms_norm_eps,
                 rotary_emb_base=c.rope_theta, rotary_pct=c.partial_rotary_factor, no_bias=not c.mlp_bias,
                 use_dynamic_ntk=False, use_logn_attn=False)
    elif t == "chatglm":
        d.update(num_layers=c.num_hidden_layers, padded_vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                 ffn_hidden_size=c.intermediate_size, kv_channels=c.head_dim,
                 num_attention_heads=c.num_attention_heads, multi_query_attention=True,
                 multi_query_group_num=c.num_key_value_heads, seq_length=c.max_position_embeddings,
                 layernorm_epsilon=c.rms_norm_eps, rmsnorm=True, add_qkv_bias=c.attention_bias,
                 add_bias_linear=c.mlp_bias, rope_ratio=c.rope_theta / 10000.0, post_layer_norm=True,
                 apply_residual_connection_post_layernorm=False, original_rope=True)
    elif t == "glm":
        g = c.glm
        d.update(model_type="chatglm", num_layers=c.num_hidden_layers, hidden_size=c.hidden_size,
                 num_attention_heads=c.num_attention_heads, inner_hidden_size=c.intermediate_size,
                 max_sequence_length=c.max_position_embeddings, layernorm_epsilon=c.rms_norm_eps,
                 position_encoding_2d=g.position_2d, mask_token_id=g.mask_token_id, gmask_token_id=g.gmask_token_id)
        if c.mlp_type == "gated":
            d["activation"] = "geglu"          # GLM-130B (PaddleNLP's ChatGLMConfig names the choice so)
        if g.deepnorm_init:
            d["deepnorm_init"] = True          # llmpre's key: how a fresh GLM-130B is initialised
    elif t == "gpt2":
        d.update(n_embd=c.hidden_size, n_inner=c.intermediate_size, n_layer=c.num_hidden_layers,
                 n_head=c.num_attention_heads, n_positions=c.max_position_embeddings,
                 layer_norm_epsilon=c.rms_norm_eps, activation_function="gelu_new" if c.hidden_act == "gelu_tanh"
                 else c.hidden_act, scale_attn_weights=True)
    elif t == "opt":
        d.update(hidden_size=c.hidden_size, ffn_dim=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
                 num_attention_heads=c.num_attention_heads, max_position_embeddings=c.max_position_embeddings,
                 word_embed_proj_dim=c.word_embed_proj_dim or c.hidden_size, do_layer_norm_before=c.pre_norm,
                 _remove_final_layer_norm=c.pre_norm and not c.final_norm, activation_function=c.hidden_act,
                 enable_bias=True, layer_norm_elementwise_affine=True, init_std=c.initializer_range)
    elif t == "bloom":
        d.update(hidden_size=c.hidden_size, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
                 layer_norm_epsilon=c.rms_norm_eps, seq_length=c.max_position_embeddings,
                 apply_residual_connection_post_layernorm=False)
    if c.moe is not None and c.moe.moe_capacity_factor:
        d["moe_capacity_factor"] = c.moe.moe_capacity_factor
    # Round-trip check: what we write must read back as this exact config.
    back = from_hf_dict(d)
    if back != c:
        diff = [f.name for f in c.__dataclass_fields__.values() if getattr(back, f.name) != getattr(c, f.name)]
        raise ConfigError(f"model_type={t!r} cannot express this config in HF form (fields {', '.join(diff)} "
                          "would change); choose a model_type whose layout has these options")
    return d
