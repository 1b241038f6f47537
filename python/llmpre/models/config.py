"""Typed, frozen configuration of every decoder llmpre builds.

One :class:`ModelConfig` describes all families; a family is a ``model_type``
(its HF checkpoint layout) plus the architecture options it implies:

==============  ============================================================
option          values
==============  ============================================================
norm_type       ``rmsnorm``, ``rmsnorm_plus_one`` (Gemma's ``(1+w)``), ``layernorm``
position        ``rope``, ``alibi``, ``learned``
mlp_type        ``gated`` (``down(act(gate x) * up x)``) or ``plain`` (``down(act(up x))``)
hidden_act      ``silu``, ``gelu``, ``gelu_tanh``, ``relu``
moe             :class:`MoEConfig` (Mixtral, Qwen-MoE, DeepSeek) or None
mla             :class:`MLAConfig` (DeepSeek multi-head latent attention) or None
glm             :class:`GLMConfig` (ChatGLM-6B, GLM-130B: model_type ``glm``) or None
==============  ============================================================

The HF ``config.json`` forms live in :mod:`llmpre.models.hf_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

from llmpre.errors import ConfigError

ROPE_TYPES = ("linear", "dynamic", "llama3", "yarn")
NORM_TYPES = ("rmsnorm", "rmsnorm_plus_one", "layernorm")
POSITIONS = ("rope", "alibi", "learned")
MLP_TYPES = ("gated", "plain")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
# Checkpoint layouts; GPT-family ones build llmpre.models.gpt, glm llmpre.models.glm, the rest llmpre.models.llama.
GPT_TYPES = ("gpt2", "opt", "bloom")
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen", "baichuan", "gemma", "chatglm", "yuan",
               "mixtral", "qwen2_moe", "deepseek_v2", "deepseek_v3", "glm") + GPT_TYPES


def _positive_int(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling for context extension.

    * ``linear``: positions are divided by ``factor``.
    * ``dynamic`` (dynamic NTK): for sequences longer than
      ``original_max_position_embeddings`` (default: the model's
      ``max_position_embeddings``) the base becomes
      ``theta * (factor * seq / original - (factor - 1)) ** (d / (d - 2))``.
    * ``llama3``: per-frequency: wavelengths shorter than
      ``original / high_freq_factor`` keep their frequency, longer than
      ``original / low_freq_factor`` are divided by ``factor``, and the band in
      between is interpolated smoothly.
    * ``yarn``: frequencies blend between interpolated (``/factor``) and original
      along a linear ramp over the dimensions whose rotation count at
      ``original_max_position_embeddings`` lies between ``beta_slow`` and
      ``beta_fast``; cos/sin are multiplied by ``attention_factor`` (default
      ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)`` with
      ``mscale(s, m) = 0.1 m ln s + 1``).  DeepSeek also multiplies the softmax
      scale by ``mscale(factor, mscale_all_dim)**2``.
    """

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: Optional[int] = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: Optional[float] = None
    mscale_all_dim: Optional[float] = None
    attention_factor: Optional[float] = None

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(f"rope_scaling.rope_type={self.rope_type!r} is not supported; "
                              f"use one of {', '.join(ROPE_TYPES)} (or rope_scaling=None)")
        if not self.factor > 0:
            raise ConfigError(f"rope_scaling.factor must be > 0, got {self.factor}")
        if self.rope_type in ("llama3", "yarn") and self.original_max_position_embeddings is None:
            raise ConfigError(f"rope_scaling of type {self.rope_type!r} needs original_max_position_embeddings "
                              "(8192 for Llama 3.1/3.2, 4096 for DeepSeek-V2/V3)")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ConfigError("rope_scaling 'llama3' needs high_freq_factor > low_freq_factor > 0, got "
                              f"{self.high_freq_factor} and {self.low_freq_factor}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Optional["RopeScaling"]:
        """Read HF's ``rope_scaling`` / ``rope_parameters`` mapping; ``None`` for the plain RoPE."""
        kind = d.get("rope_type", d.get("type", "default"))
        if kind in (None, "default"):
            return None
        if d.get("factor") is None:
            raise ConfigError(f"rope scaling {dict(d)} has no 'factor'")
        opt = {k: float(d[k]) for k in ("mscale", "mscale_all_dim", "attention_factor") if d.get(k) is not None}
        return cls(rope_type=kind, factor=float(d["factor"]),
                   low_freq_factor=float(d.get("low_freq_factor", 1.0)),
                   high_freq_factor=float(d.get("high_freq_factor", 4.0)),
                   original_max_position_embeddings=d.get("original_max_position_embeddings"),
                   beta_fast=float(d.get("beta_fast") or 32.0), beta_slow=float(d.get("beta_slow") or 1.0), **opt)

    def to_dict(self) -> dict:
        d = {"rope_type": self.rope_type, "factor": self.factor}
        if self.rope_type == "llama3":
            d.update(low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor)
        if self.rope_type == "yarn":
            d.update(beta_fast=self.beta_fast, beta_slow=self.beta_slow)
            d.update({k: getattr(self, k) for k in ("mscale", "mscale_all_dim", "attention_factor")
                      if getattr(self, k) is not None})
        if self.original_max_position_embeddings is not None:
            d["original_max_position_embeddings"] = self.original_max_position_embeddings
        return d


@dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-experts feed-forward layers.

    Router: ``scores = softmax(x W_g)`` (or ``sigmoid`` for DeepSeek-V3); pick
    ``num_experts_per_tok`` experts per token (``topk_method``: ``greedy``;
    ``group_limited_greedy`` keeps the ``topk_group`` best of ``n_group`` groups
    by their max score; ``noaux_tc`` ranks ``scores + bias`` and groups by the sum
    of their two best); weights = chosen scores, renormalised to sum 1 when
    ``norm_topk_prob``, times ``routed_scaling_factor``.  A shared expert of width
    ``shared_expert_intermediate_size`` sees every token (scaled by
    ``sigmoid(x w_s)`` when ``shared_expert_gate``).  Layer ``i`` is sparse when
    ``i >= first_k_dense_replace``, ``(i + 1) % sparse_step == 0`` and ``i`` is
    not in ``dense_layers``; other layers use the dense MLP of width
    ``intermediate_size``.

    Auxiliary loss (added to the LM loss by the caller, see
    :mod:`llmpre.models.loss`): ``aux_loss_type="switch"`` is the Switch/Mixtral
    load-balancing loss over all sparse layers' tokens,
    ``E * sum_e f_e * P_e``; ``"seq"`` is DeepSeek's sequence-wise balance loss.
    Either is multiplied by ``router_aux_loss_coef`` (0 disables it).
    """

    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False
    norm_topk_prob: bool = True
    scoring_func: str = "softmax"
    topk_method: str = "greedy"
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    router_aux_loss_coef: float = 0.0
    aux_loss_type: str = "switch"
    first_k_dense_replace: int = 0
    sparse_step: int = 1
    dense_layers: Tuple[int, ...] = ()
    moe_capacity_factor: float = 0.0      # 0: dropless; c > 0: <= ceil(c tokens k / E) per expert (llmpre)

    def __post_init__(self):
        for name in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "n_group", "topk_group",
                     "sparse_step"):
            _positive_int("MoEConfig", name, getattr(self, name))
        if isinstance(self.dense_layers, list):
            object.__setattr__(self, "dense_layers", tuple(self.dense_layers))
        if self.num_experts_per_tok > self.num_experts:
            raise ConfigError(f"MoEConfig.num_experts_per_tok={self.num_experts_per_tok} exceeds "
                              f"num_experts={self.num_experts}")
        if self.scoring_func not in ("softmax", "sigmoid"):
            raise ConfigError(f"MoEConfig.scoring_func={self.scoring_func!r}: use 'softmax' or 'sigmoid'")
        if self.topk_method not in ("greedy", "group_limited_greedy", "noaux_tc"):
            raise ConfigError(f"MoEConfig.topk_method={self.topk_method!r}: use 'greedy', "
                              "'group_limited_greedy' or 'noaux_tc'")
        if self.num_experts % self.n_group or self.topk_group > self.n_group:
            raise ConfigError(f"MoEConfig: n_group={self.n_group} must divide num_experts={self.num_experts} "
                              f"and be >= topk_group={self.topk_group}")
        if self.aux_loss_type not in ("switch", "seq"):
            raise ConfigError(f"MoEConfig.aux_loss_type={self.aux_loss_type!r}: use 'switch' or 'seq'")
        if self.router_aux_loss_coef < 0 or self.shared_expert_intermediate_size < 0:
            raise ConfigError("MoEConfig: router_aux_loss_coef and shared_expert_intermediate_size must be >= 0")
        if not isinstance(self.moe_capacity_factor, (int, float)) or isinstance(self.moe_capacity_factor, bool) \
                or not self.moe_capacity_factor >= 0:
            raise ConfigError(f"MoEConfig.moe_capacity_factor={self.moe_capacity_factor!r} must be a number >= 0 "
                              "(0 = dropless)")

    def is_sparse(self, layer: int) -> bool:
        return (layer >= self.first_k_dense_replace and (layer + 1) % self.sparse_step == 0
                and layer not in self.dense_layers)


@dataclass(frozen=True)
class MLAConfig:
    """DeepSeek multi-head latent attention: queries through an optional low-rank
    ``q_lora_rank`` bottleneck, keys/values from a shared ``kv_lora_rank`` latent
    plus one shared rotary key of ``qk_rope_head_dim``; per head the key is
    ``[k_nope (qk_nope_head_dim) | k_rope]`` and the value ``v_head_dim`` wide."""

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: Optional[int] = None

    def __post_init__(self):
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            _positive_int("MLAConfig", name, getattr(self, name))
        if self.q_lora_rank is not None:
            _positive_int("MLAConfig", "q_lora_rank", self.q_lora_rank)
        if self.qk_rope_head_dim % 2:
            raise ConfigError(f"MLAConfig.qk_rope_head_dim={self.qk_rope_head_dim} must be even")


@dataclass(frozen=True)
class GLMConfig:
    """GLM (``model_type="glm"``, built by :mod:`llmpre.models.glm`): ChatGLM-6B (GLM v1) and GLM-130B.

    ``[MASK]`` / ``[gMASK]`` are ``mask_token_id`` / ``gmask_token_id``; ``<sop>`` is the
    model's ``bos_token_id``.  ``position_2d``: ChatGLM-6B's 2-D positions (the first half of
    each head rotated by the position id, the second half by the block position id); False:
    GLM-130B's 1-D RoPE over the whole head.  ``deepnorm_init``: GLM-130B's DeepNorm
    initialisation (Xavier normal, v/o/MLP projections scaled by ``(2 layers)^-1/2``)."""

    mask_token_id: int
    gmask_token_id: int
    position_2d: bool = True
    deepnorm_init: bool = False

    def __post_init__(self):
        for name in ("mask_token_id", "gmask_token_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"GLMConfig.{name} must be a token id (integer >= 0), got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only language model.

    ``num_key_value_heads`` defaults to ``num_attention_heads`` (plain multi-head
    attention) and ``head_dim`` to ``hidden_size // num_attention_heads``.
    ``attention_bias`` adds biases to the q/k/v projections, ``attention_out_bias``
    to the output projection, ``mlp_bias`` to the MLP.  ``rms_norm_eps`` is the
    epsilon of every norm, whatever its type.  ``rotary_dim`` is
    ``head_dim * partial_rotary_factor`` (ChatGLM rotates half of each head).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    attention_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: Optional[int] = 1
    eos_token_id: Union[None, int, Tuple[int, ...]] = 2
    model_type: str = "llama"
    # architecture options (defaults: LLaMA)
    norm_type: str = "rmsnorm"
    position: str = "rope"
    mlp_type: str = "gated"
    attention_out_bias: bool = False
    mlp_bias: bool = False
    partial_rotary_factor: float = 1.0
    rope_interleaved: bool = False
    sliding_window: Optional[int] = None
    scale_embeddings: bool = False        # Gemma: x = embed(ids) * sqrt(hidden)
    embedding_norm: bool = False          # Bloom: LayerNorm right after the embedding
    lm_head_norm: bool = False            # Baichuan2 NormHead: rows of W_out normalised
    localized_filtering: bool = False     # Yuan2: q/k read a causal-conv-filtered input
    pre_norm: bool = True                 # False: OPT-350m's norm after each residual add
    final_norm: bool = True
    word_embed_proj_dim: Optional[int] = None  # OPT-350m: embeddings narrower than hidden
    position_offset: int = 0              # OPT: learned position p is row p + 2
    moe: Optional[MoEConfig] = None
    mla: Optional[MLAConfig] = None
    glm: Optional[GLMConfig] = None       # GLM: post-LN blocks with alpha-scaled residuals, prefix attention
    num_nextn_predict_layers: int = 0     # DeepSeek-V3 multi-token prediction depths (llmpre.models.mtp)
    num_nextn_predict_lambda: float = 0.3  # their loss weight (PaddleNLP's key; the paper's 0.3, later 0.1)

    def __post_init__(self):
        def fix(name, value):  # frozen: normalise fields through object.__setattr__
            object.__setattr__(self, name, value)

        if isinstance(self.rope_scaling, Mapping):
            fix("rope_scaling", RopeScaling.from_dict(self.rope_scaling))
        if isinstance(self.moe, Mapping):
            fix("moe", MoEConfig(**self.moe))
        if isinstance(self.mla, Mapping):
            fix("mla", MLAConfig(**self.mla))
        if isinstance(self.glm, Mapping):
            fix("glm", GLMConfig(**self.glm))
        if isinstance(self.eos_token_id, list):
            fix("eos_token_id", tuple(self.eos_token_id))
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings"):
            _positive_int("ModelConfig", name, getattr(self, name))
        if self.num_key_value_heads is None:
            fix("num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(f"ModelConfig: hidden_size={self.hidden_size} is not divisible by "
                                  f"num_attention_heads={self.num_attention_heads}; change one of them "
                                  "or give head_dim explicitly")
            fix("head_dim", self.hidden_size // self.num_attention_heads)
        for name in ("num_key_value_heads", "head_dim"):
            _positive_int("ModelConfig", name, getattr(self, name))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"ModelConfig: num_key_value_heads={self.num_key_value_heads} must divide "
                              f"num_attention_heads={self.num_attention_heads} (grouped-query attention)")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0 or not self.initializer_range > 0:
            raise ConfigError("ModelConfig: rms_norm_eps, rope_theta and initializer_range must be > 0, got "
                              f"{self.rms_norm_eps}, {self.rope_theta}, {self.initializer_range}")
        for name, allowed in (("model_type", MODEL_TYPES), ("norm_type", NORM_TYPES), ("position", POSITIONS),
                              ("mlp_type", MLP_TYPES), ("hidden_act", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ModelConfig.{name}={getattr(self, name)!r} is not supported; "
                                  f"use one of {', '.join(allowed)}")
        if self.position == "rope" and self.mla is None and self.rotary_dim % 2:
            raise ConfigError(f"ModelConfig: the rotary dimension head_dim * partial_rotary_factor = "
                              f"{self.head_dim} * {self.partial_rotary_factor} must be even "
                              "(head_dim must be even for rotary embeddings)")
        if not 0 < self.partial_rotary_factor <= 1:
            raise ConfigError(f"ModelConfig.partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
        if self.sliding_window is not None:
            _positive_int("ModelConfig", "sliding_window", self.sliding_window)
        if self.word_embed_proj_dim is not None:
            _positive_int("ModelConfig", "word_embed_proj_dim", self.word_embed_proj_dim)
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(f"ModelConfig.rope_scaling must be None, a RopeScaling or a mapping, "
                              f"got {self.rope_scaling!r}")
        if self.is_gpt and (self.moe or self.mla or self.norm_type != "layernorm" or self.mlp_type != "plain"):
            raise ConfigError(f"ModelConfig: model_type={self.model_type!r} is a GPT-style model "
                              "(LayerNorm, plain MLP, no MoE/MLA)")
        if not self.is_gpt and (self.position == "learned" or self.embedding_norm or not self.pre_norm
                                or self.word_embed_proj_dim):
            raise ConfigError(f"ModelConfig: learned positions, embedding_norm, post-norm and "
                              f"word_embed_proj_dim need a GPT-style model_type ({', '.join(GPT_TYPES)}), "
                              f"not {self.model_type!r}")
        if self.mla is not None and self.position != "rope":
            raise ConfigError("ModelConfig: multi-head latent attention (mla) needs position='rope'")
        self._check_mtp()
        self._check_glm()

    def _check_mtp(self) -> None:
        n, lam = self.num_nextn_predict_layers, self.num_nextn_predict_lambda
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"ModelConfig.num_nextn_predict_layers={n!r} must be an integer >= 0")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < float("inf"):
            raise ConfigError(f"ModelConfig.num_nextn_predict_lambda={lam!r} must be a number >= 0")
        if n and (self.is_gpt or self.model_type == "glm"):
            raise ConfigError(f"ModelConfig: multi-token prediction (num_nextn_predict_layers={n}) is built for "
                              f"LLaMA-family decoders (DeepSeek-V3), not model_type={self.model_type!r}; set it to 0")

    def _check_glm(self) -> None:
        if (self.model_type == "glm") != (self.glm is not None):
            raise ConfigError("ModelConfig: model_type='glm' and a glm=GLMConfig(...) go together "
                              f"(got model_type={self.model_type!r}, glm={self.glm!r})")
        if self.glm is None:
            return
        if (self.norm_type != "layernorm" or self.position != "rope" or self.moe or self.mla
                or self.partial_rotary_factor != 1 or self.rope_interleaved or self.localized_filtering
                or self.sliding_window or self.scale_embeddings or self.lm_head_norm):
            raise ConfigError("ModelConfig: a GLM model has LayerNorms and RoPE over whole heads (rotate-half "
                              "pairs), no MoE/MLA, windows, partial or interleaved rotary, scaled embeddings "
                              "or a normalised head")
        if self.bos_token_id is None:
            raise ConfigError("ModelConfig: a GLM model needs bos_token_id (its <sop> token id)")
        if self.glm.position_2d and self.head_dim % 4:
            raise ConfigError(f"ModelConfig: GLM's 2-D positions rotate each half of a head, so head_dim must be "
                              f"a multiple of 4, got {self.head_dim}")

    # ---------------------------------------------------------------- derived
    @property
    def is_gpt(self) -> bool:
        """GPT-style models (GPT-2/3, OPT, Bloom) are built by :mod:`llmpre.models.gpt`."""
        return self.model_type in GPT_TYPES

    @property
    def rotary_dim(self) -> int:
        """Features rotated per head (``qk_rope_head_dim`` under MLA)."""
        if self.mla is not None:
            return self.mla.qk_rope_head_dim
        return int(self.head_dim * self.partial_rotary_factor)

    # ---------------------------------------------------------------- sizes
    def num_parameters(self) -> int:
        """Parameter count from the numbers alone (equals the built model's)."""
        h, heads, kv_heads, d = self.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim
        norm = (2 if self.norm_type == "layernorm" else 1) * h

        def linear(n_in, n_out, bias):
            return n_in * n_out + (n_out if bias else 0)

        def mlp(width):
            n = 3 if self.mlp_type == "gated" else 2
            return n * h * width + ((n - 1) * width + h if self.mlp_bias else 0)

        if self.mla is not None:
            m = self.mla
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            q = (linear(h, heads * qk, False) if m.q_lora_rank is None else
                 linear(h, m.q_lora_rank, False) + m.q_lora_rank + linear(m.q_lora_rank, heads * qk, False))
            attention = (q + linear(h, m.kv_lora_rank + m.qk_rope_head_dim, False) + m.kv_lora_rank
                         + linear(m.kv_lora_rank, heads * (m.qk_nope_head_dim + m.v_head_dim), False)
                         + linear(heads * m.v_head_dim, h, self.attention_out_bias))
        else:
            attention = (linear(h, heads * d, self.attention_bias) + 2 * linear(h, kv_heads * d, self.attention_bias)
                         + linear(heads * d, h, self.attention_out_bias))
        if self.localized_filtering:  # two (2 x 1) convolutions h -> h/2 -> h with biases, and an RMSNorm
            attention += (2 * h * (h // 2) + h // 2) + (2 * (h // 2) * h + h) + h
        total = 0
        for layer in range(self.num_hidden_layers + self.num_nextn_predict_layers):
            if layer >= self.num_hidden_layers:   # an MTP module: enorm, hnorm, eh_proj, its head's norm + a block
                total += 3 * norm + 2 * h * h
            total += 2 * norm + attention
            if self.moe is not None and self.moe.is_sparse(layer):
                e = self.moe
                total += e.num_experts * h + e.num_experts * 3 * h * e.moe_intermediate_size
                total += e.num_experts if e.topk_method == "noaux_tc" else 0        # score-correction bias
                if e.shared_expert_intermediate_size:
                    total += 3 * h * e.shared_expert_intermediate_size + (h if e.shared_expert_gate else 0)
            else:
                total += mlp(self.intermediate_size)
        embed_dim = self.word_embed_proj_dim or h
        total += self.vocab_size * embed_dim * (1 if self.tie_word_embeddings else 2)
        if self.word_embed_proj_dim:
            total += 2 * embed_dim * h                                # project_in, project_out
        if self.position == "learned":
            total += (self.max_position_embeddings + self.position_offset) * h
        total += norm if self.embedding_norm else 0
        total += norm if self.final_norm else 0
        return total

    def replace(self, **changes) -> "ModelConfig":
        """A copy with ``changes`` applied and validated.

        ``head_dim`` follows a changed ``hidden_size``/``num_attention_heads`` when it
        was the default ``hidden // heads``; ``num_key_value_heads`` follows a changed
        ``num_attention_heads`` when the config was plain multi-head attention.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"ModelConfig has no field(s) {', '.join(sorted(unknown))}")
        if "head_dim" not in changes and self.head_dim * self.num_attention_heads == self.hidden_size:
            changes["head_dim"] = None
        if "num_key_value_heads" not in changes and self.num_key_value_heads == self.num_attention_heads:
            changes["num_key_value_heads"] = None
        return dataclasses.replace(self, **changes)
