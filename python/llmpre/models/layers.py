"""Layers shared by the model files: norms, position encodings, attention, MLP, initialisation.

Hot ops (``rms_norm``, ``rotary``, ``attention``, ``swiglu``) come from the
:func:`llmpre.ops.select_ops` namespace.  Three ops the ops contract does not
have yet are written here in plain Paddle and should move behind the selection
point when kernels exist: LayerNorm (:class:`LayerNorm`), the non-SiLU
activations GELU/GELU-tanh/ReLU and the GeGLU gate (:class:`MLP`).
"""

from __future__ import annotations

import math
from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.nn.initializer import Constant

from llmpre.models.config import ModelConfig
from llmpre.ops.select import Ops

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,                                           # exact erf form
    "gelu_tanh": lambda x: F.gelu(x, approximate=True),       # 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))
    "relu": F.relu,
}


# ----------------------------------------------------------------------------- norms
class RMSNorm(nn.Layer):
    """``w * x / sqrt(mean(x^2) + eps)``; with ``plus_one`` (Gemma) the scale is ``1 + w``
    and ``w`` starts at 0."""

    def __init__(self, size: int, eps: float, ops: Ops, plus_one: bool = False):
        super().__init__()
        self.weight = self.create_parameter([size], default_initializer=Constant(0.0 if plus_one else 1.0))
        self.eps, self.ops, self.plus_one = eps, ops, plus_one

    def forward(self, x):
        return self.ops.rms_norm(x, 1.0 + self.weight if self.plus_one else self.weight, self.eps)


class LayerNorm(nn.Layer):
    """``w * (x - mean) / sqrt(var + eps) + b`` over the last axis, statistics in fp32."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = self.create_parameter([size], default_initializer=Constant(1.0))
        self.bias = self.create_parameter([size], is_bias=True, default_initializer=Constant(0.0))
        self.eps = eps

    def forward(self, x):
        y = F.layer_norm(x.astype("float32"), x.shape[-1:], self.weight.astype("float32"),
                         self.bias.astype("float32"), self.eps)
        return y.astype(x.dtype)


def make_norm(config: ModelConfig, ops: Ops, size: Optional[int] = None) -> nn.Layer:
    size = size or config.hidden_size
    if config.norm_type == "layernorm":
        return LayerNorm(size, config.rms_norm_eps)
    return RMSNorm(size, config.rms_norm_eps, ops, plus_one=config.norm_type == "rmsnorm_plus_one")


# ----------------------------------------------------------------------------- positions
def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


class RotaryEmbedding(nn.Layer):
    """RoPE angle tables ``cos``, ``sin``: ``[positions, r / 2]`` float32, ``r`` = ``config.rotary_dim``.

    ``inv_freq[i] = theta^(-2i/r)`` (rescaled per ``config.rope_scaling``) and
    ``angle[p, i] = p * inv_freq[i]``; YaRN also scales both tables by its
    attention factor.  Tables are non-persistable buffers, rebuilt when a longer
    sequence arrives (or, for dynamic NTK, when the length changes which base applies).
    """

    def __init__(self, config: ModelConfig, dim: Optional[int] = None):
        """``dim``: the rotary dimension when not ``config.rotary_dim`` (GLM's 2-D halves)."""
        super().__init__()
        self.dim, self.theta, self.scaling = dim or config.rotary_dim, config.rope_theta, config.rope_scaling
        self.original_length = config.max_position_embeddings
        if self.scaling is not None and self.scaling.original_max_position_embeddings:
            self.original_length = self.scaling.original_max_position_embeddings
        self.attention_factor = 1.0
        s = self.scaling
        if s is not None and s.rope_type == "yarn":
            self.attention_factor = s.attention_factor or (
                yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim)
                if s.mscale and s.mscale_all_dim else yarn_mscale(s.factor))
        self._build(min(config.max_position_embeddings, 4096))  # grows on demand

    def _base(self, length: int) -> float:
        """The RoPE base; only dynamic NTK changes it, and only past the trained length."""
        s = self.scaling
        if s is None or s.rope_type != "dynamic" or length <= self.original_length:
            return self.theta
        alpha = s.factor * length / self.original_length - (s.factor - 1)
        return self.theta * alpha ** (self.dim / (self.dim - 2))

    def inv_freq(self, length: int) -> paddle.Tensor:
        """``[r / 2]`` float32 rotation frequencies for sequences of ``length``."""
        exponent = paddle.arange(0, self.dim, 2, dtype="float32") / self.dim   # [r/2]
        inv_freq = 1.0 / (self._base(length) ** exponent)                      # [r/2]
        s = self.scaling
        if s is not None and s.rope_type == "linear":
            inv_freq = inv_freq / s.factor
        elif s is not None and s.rope_type == "llama3":
            wavelen = 2 * math.pi / inv_freq
            long_wave = self.original_length / s.low_freq_factor    # longer: slow down by factor
            short_wave = self.original_length / s.high_freq_factor  # shorter: keep
            smooth = (self.original_length / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
            blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
            inv_freq = paddle.where(wavelen > long_wave, inv_freq / s.factor,
                                    paddle.where(wavelen < short_wave, inv_freq, blended))
        elif s is not None and s.rope_type == "yarn":
            def correction_dim(rotations):  # dimension whose wavelength fits `rotations` times in the original
                turns = self.original_length / (rotations * 2 * math.pi)
                return self.dim * math.log(turns) / (2 * math.log(self.theta))
            low = max(math.floor(correction_dim(s.beta_fast)), 0)
            high = min(math.ceil(correction_dim(s.beta_slow)), self.dim - 1)
            ramp = ((paddle.arange(self.dim // 2, dtype="float32") - low) / max(high - low, 0.001)).clip(0, 1)
            keep = 1 - ramp                                          # 1: original frequency, 0: interpolated
            inv_freq = inv_freq / s.factor * (1 - keep) + inv_freq * keep
        return inv_freq

    def _build(self, length: int):
        positions = paddle.arange(length, dtype="float32")
        angles = positions.unsqueeze(1) * self.inv_freq(length).unsqueeze(0)  # [length, r/2]
        self.register_buffer("cos", angles.cos() * self.attention_factor, persistable=False)
        self.register_buffer("sin", angles.sin() * self.attention_factor, persistable=False)
        self.base = self._base(length)

    def forward(self, seq_len: int, position_ids: Optional[paddle.Tensor] = None):
        """The ``[positions, r / 2]`` tables, covering ``position_ids`` (``[batch, seq]``)
        or positions ``0..seq_len-1``."""
        needed = seq_len if position_ids is None else int(position_ids.max()) + 1
        if needed > self.cos.shape[0] or self._base(needed) != self.base:
            self._build(needed)
        return self.cos, self.sin


def alibi_slopes(num_heads: int) -> paddle.Tensor:
    """ALiBi head slopes (Press et al.; Bloom/Baichuan): ``2^(-8(i+1)/n)`` for a power of two
    ``n``; otherwise the slopes of the nearest lower power of two followed by every other
    slope of the next power of two.  ``[heads]`` float32."""
    def powers(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = powers(closest) + powers(2 * closest)[0::2][: num_heads - closest]
    return paddle.to_tensor(slopes, dtype="float32")


# ----------------------------------------------------------------------------- attention
class LocalizedFiltering(nn.Layer):
    """Yuan2's localized filter on the attention input:
    ``y = RMSNorm(conv2(conv1(x)) + x)`` where both convolutions are causal with a
    window of 2 tokens (``conv1``: hidden -> hidden/2, ``conv2``: hidden/2 -> hidden,
    biases), i.e. ``conv(x)_t = W_0 x_{t-1} + W_1 x_t + b``."""

    def __init__(self, config: ModelConfig, ops: Ops):
        super().__init__()
        h = config.hidden_size
        self.conv1 = nn.Conv2D(h, h // 2, (2, 1), padding=(1, 0))       # weight [h/2, h, 2, 1]
        self.conv2 = nn.Conv2D(h // 2, h, (2, 1), padding=(1, 0))       # weight [h, h/2, 2, 1]
        self.output_layernorm = RMSNorm(h, config.rms_norm_eps, ops)

    def forward(self, x):
        seq = x.shape[1]
        y = x.transpose([0, 2, 1]).unsqueeze(-1)                       # [b, h, s, 1]
        y = self.conv1(y)[:, :, :seq]                                   # [b, h/2, s, 1]: drop the look-ahead row
        y = self.conv2(y)[:, :, :seq]                                   # [b, h, s, 1]
        return self.output_layernorm(y.squeeze(-1).transpose([0, 2, 1]) + x)  # [b, s, h]


class Attention(nn.Layer):
    """Causal self-attention: GQA/MQA, optional q/k/v and output biases, RoPE (full,
    partial or interleaved) or ALiBi, an optional sliding window, and Yuan2's
    localized filter on the q/k input."""

    def __init__(self, config: ModelConfig, ops: Ops):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        h, q_size, kv_size = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        qkv_bias = None if config.attention_bias else False  # None: Paddle's default (zero) bias
        self.q_proj = nn.Linear(h, q_size, bias_attr=qkv_bias)
        self.k_proj = nn.Linear(h, kv_size, bias_attr=qkv_bias)
        self.v_proj = nn.Linear(h, kv_size, bias_attr=qkv_bias)
        self.o_proj = nn.Linear(q_size, h, bias_attr=None if config.attention_out_bias else False)
        self.lf_gate = LocalizedFiltering(config, ops) if config.localized_filtering else None
        self.interleaved, self.window = config.rope_interleaved, config.sliding_window
        self.ops = ops
        self.dropout_p = 0.0   # on the probabilities (GPT: set_dropout), with dropout keys given

    def forward(self, x, cos=None, sin=None, position_ids=None, alibi=None, dropout_keys=None,
                dropout_site=0):
        qk_in = x if self.lf_gate is None else self.lf_gate(x)
        # reshape's 0 keeps that axis: [b, s, heads * d] -> [b, s, heads, d]
        q = self.q_proj(qk_in).reshape([0, 0, self.num_heads, self.head_dim])     # [b, s, heads, d]
        k = self.k_proj(qk_in).reshape([0, 0, self.num_kv_heads, self.head_dim])  # [b, s, kv_heads, d]
        v = self.v_proj(x).reshape([0, 0, self.num_kv_heads, self.head_dim])      # [b, s, kv_heads, d]
        if cos is not None:
            q, k = self.ops.rotary(q, k, cos, sin, position_ids, interleaved=self.interleaved)
        if dropout_keys is not None and self.dropout_p > 0 and self.training:
            # written out: the fused kernels have no dropout; this rank's heads start at head_offset
            from llmpre.models.dropout import attention_with_dropout

            group = getattr(self.q_proj, "group", None)   # a tensor-parallel projection's group
            head_offset = group.index * self.num_heads if group is not None else 0
            out = attention_with_dropout(q, k, v, self.dropout_p, dropout_keys, dropout_site, head_offset,
                                         self.window, alibi)                   # [b, s, heads, d]
        else:
            out = self.ops.attention(q, k, v, causal=True, window=self.window, alibi_slopes=alibi)
        return self.o_proj(out.reshape([0, 0, self.num_heads * self.head_dim]))  # [b, s, hidden]


# ----------------------------------------------------------------------------- MLP
class MLP(nn.Layer):
    """Gated: ``down(act(gate x) * up x)`` (SwiGLU for silu, GeGLU for gelu);
    plain: ``down(act(up x))`` (GPT/OPT/Bloom)."""

    def __init__(self, config: ModelConfig, ops: Ops, width: Optional[int] = None):
        super().__init__()
        h, i = config.hidden_size, width or config.intermediate_size
        bias = None if config.mlp_bias else False
        self.gated = config.mlp_type == "gated"
        if self.gated:
            self.gate_proj = nn.Linear(h, i, bias_attr=bias)
        self.up_proj = nn.Linear(h, i, bias_attr=bias)
        self.down_proj = nn.Linear(i, h, bias_attr=bias)
        self.act_name, self.act = config.hidden_act, ACTIVATIONS[config.hidden_act]
        self.ops = ops

    def forward(self, x):
        if not self.gated:
            return self.down_proj(self.act(self.up_proj(x)))
        if self.act_name == "silu":
            return self.down_proj(self.ops.swiglu(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


# ----------------------------------------------------------------------------- output head
class LMHead(nn.Layer):
    """``logits = x @ W_out``: the head's own ``[in, vocab]`` matrix (its columns
    unit-normalised for Baichuan2's NormHead) or, when tied, the input embedding's
    ``[vocab, in]`` rows transposed (held by reference, not as a parameter)."""

    normal_init = ("weight",)   # llmpre.models.init: N(0, initializer_range) (when untied)

    def __init__(self, config: ModelConfig, embedding: nn.Embedding, in_features: Optional[int] = None):
        super().__init__()
        self.normalize = config.lm_head_norm
        self.tied = [embedding] if config.tie_word_embeddings else None  # a list: not a sublayer
        if self.tied is None:
            self.weight = self.create_parameter([in_features or config.hidden_size, config.vocab_size])

    def forward(self, x):
        if self.tied is not None:
            return paddle.matmul(x, self.tied[0].weight, transpose_y=True)   # [..., vocab]
        w = F.normalize(self.weight, axis=0) if self.normalize else self.weight
        return paddle.matmul(x, w)                                           # [..., vocab]


# ----------------------------------------------------------------------------- init


def init_weights(model: nn.Layer, config: ModelConfig) -> None:
    """PaddleNLP's initialisation: N(0, initializer_range) for linear and embedding
    weights (and MoE router weights), zero biases, norms at identity; every
    projection writing into the residual stream (``o_proj``, ``down_proj``, experts
    included) drawn with ``initializer_range / sqrt(2 * layers)``; convolutions
    N(0, sqrt(2 / fan_in)) (Paddle's default). The values come from the counter-based
    scheme of :mod:`llmpre.models.init` (any slice computable alone); a model built
    by :func:`llmpre.models.build_model` is initialised there (with its seed), one
    built directly with a seed drawn from Paddle's generator (``paddle.seed``)."""
    from llmpre.models import init

    if not init.is_deferred():
        init.initialize(model, config)
