"""A LLaMA-family decoder (LLaMA 1/2/3, Qwen2, Mistral without sliding windows).

    x_0   = embed(ids)
    h_l   = x_l + Attention(RMSNorm(x_l))          attention: GQA, RoPE on q and k
    x_l+1 = h_l + MLP(RMSNorm(h_l))                MLP: down(silu(gate(x)) * up(x))
    logits = RMSNorm(x_L) @ W_out                  W_out = embed^T when tied

Parameter names are HF's without the leading ``model.`` (``embed_tokens``,
``layers.{i}.self_attn.q_proj``, ..., ``norm``, ``lm_head``); Paddle ``Linear``
weights are ``[in, out]``, the transpose of HF's.  The hot ops come from
:func:`llmpre.ops.select_ops`; nothing here branches on device or kernel.
"""

from __future__ import annotations

import math
from typing import Optional

import paddle
import paddle.nn as nn
from paddle.nn.initializer import Constant, Normal

from llmpre.models.config import ModelConfig
from llmpre.ops.select import Ops, select_ops


class RMSNorm(nn.Layer):
    def __init__(self, hidden_size: int, eps: float, ops: Ops):
        super().__init__()
        self.weight = self.create_parameter([hidden_size], default_initializer=Constant(1.0))
        self.eps, self.ops = eps, ops

    def forward(self, x):
        return self.ops.rms_norm(x, self.weight, self.eps)


class RotaryEmbedding(nn.Layer):
    """RoPE angle tables ``cos``, ``sin``: ``[positions, head_dim / 2]`` float32.

    ``inv_freq[i] = theta^(-2i/d)`` (rescaled per ``config.rope_scaling``) and
    ``angle[p, i] = p * inv_freq[i]``; :func:`llmpre.ops.reference.rotary`
    applies them in the rotate_half layout. Tables are non-persistable buffers,
    rebuilt when a longer sequence arrives (or, for dynamic NTK, when the
    sequence length changes which base applies).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dim, self.theta, self.scaling = config.head_dim, config.rope_theta, config.rope_scaling
        self.original_length = config.max_position_embeddings
        if self.scaling is not None and self.scaling.original_max_position_embeddings:
            self.original_length = self.scaling.original_max_position_embeddings
        length = min(config.max_position_embeddings, 4096)  # grows on demand
        self._build(length)

    def _base(self, length: int) -> float:
        """The RoPE base; only dynamic NTK changes it, and only past the trained length."""
        s = self.scaling
        if s is None or s.rope_type != "dynamic" or length <= self.original_length:
            return self.theta
        alpha = s.factor * length / self.original_length - (s.factor - 1)
        return self.theta * alpha ** (self.dim / (self.dim - 2))

    def inv_freq(self, length: int) -> paddle.Tensor:
        """``[head_dim / 2]`` float32 rotation frequencies for sequences of ``length``."""
        exponent = paddle.arange(0, self.dim, 2, dtype="float32") / self.dim   # [d/2]
        inv_freq = 1.0 / (self._base(length) ** exponent)                      # [d/2]
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
        return inv_freq

    def _build(self, length: int):
        positions = paddle.arange(length, dtype="float32")
        angles = positions.unsqueeze(1) * self.inv_freq(length).unsqueeze(0)  # [length, d/2]
        self.register_buffer("cos", angles.cos(), persistable=False)
        self.register_buffer("sin", angles.sin(), persistable=False)
        self.base = self._base(length)

    def forward(self, seq_len: int, position_ids: Optional[paddle.Tensor] = None):
        """The ``[positions, head_dim / 2]`` tables, covering ``position_ids``
        (``[batch, seq]``) or positions ``0..seq_len-1``."""
        needed = seq_len if position_ids is None else int(position_ids.max()) + 1
        if needed > self.cos.shape[0] or self._base(needed) != self.base:
            self._build(needed)
        return self.cos, self.sin


class Attention(nn.Layer):
    def __init__(self, config: ModelConfig, ops: Ops):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        h, q_size, kv_size = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        bias = None if config.attention_bias else False  # None: Paddle's default bias
        self.q_proj = nn.Linear(h, q_size, bias_attr=bias)
        self.k_proj = nn.Linear(h, kv_size, bias_attr=bias)
        self.v_proj = nn.Linear(h, kv_size, bias_attr=bias)
        self.o_proj = nn.Linear(q_size, h, bias_attr=False)
        self.ops = ops

    def forward(self, x, cos, sin, position_ids=None):
        # reshape's 0 keeps that axis: [b, s, heads * d] -> [b, s, heads, d]
        q = self.q_proj(x).reshape([0, 0, self.num_heads, self.head_dim])     # [b, s, heads, d]
        k = self.k_proj(x).reshape([0, 0, self.num_kv_heads, self.head_dim])  # [b, s, kv_heads, d]
        v = self.v_proj(x).reshape([0, 0, self.num_kv_heads, self.head_dim])  # [b, s, kv_heads, d]
        q, k = self.ops.rotary(q, k, cos, sin, position_ids)
        out = self.ops.attention(q, k, v, causal=True)                        # [b, s, heads, d]
        return self.o_proj(out.reshape([0, 0, self.num_heads * self.head_dim]))  # [b, s, hidden]


class MLP(nn.Layer):
    def __init__(self, config: ModelConfig, ops: Ops):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias_attr=False)
        self.up_proj = nn.Linear(h, i, bias_attr=False)
        self.down_proj = nn.Linear(i, h, bias_attr=False)
        self.ops = ops

    def forward(self, x):
        return self.down_proj(self.ops.swiglu(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(nn.Layer):
    def __init__(self, config: ModelConfig, ops: Ops):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.self_attn = Attention(config, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.mlp = MLP(config, ops)

    def forward(self, x, cos, sin, position_ids=None):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, position_ids)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaForCausalLM(nn.Layer):
    def __init__(self, config: ModelConfig, ops: Optional[Ops] = None):
        super().__init__()
        self.config = config
        self.ops = ops if ops is not None else select_ops()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(config)
        self.layers = nn.LayerList([DecoderLayer(config, self.ops) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, self.ops)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias_attr=False)
        self.init_weights()

    def init_weights(self):
        """PaddleNLP's initialisation: N(0, initializer_range) for linear and embedding
        weights, zero biases, unit norms; then o_proj and down_proj weights (the two
        projections writing into the residual stream) scaled by 1/sqrt(2 * layers).
        Deterministic given ``paddle.seed``."""
        normal = Normal(0.0, self.config.initializer_range)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                Constant(1.0)(p)
            elif name.endswith(".bias"):
                Constant(0.0)(p)
            else:
                normal(p)
        scale = 1.0 / math.sqrt(2 * self.config.num_hidden_layers)
        with paddle.no_grad():
            for layer in self.layers:
                for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
                    w.set_value(w * scale)

    def forward(self, input_ids: paddle.Tensor, position_ids: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """input_ids ``[batch, seq]`` int -> logits ``[batch, seq, vocab]`` in the model dtype."""
        x = self.embed_tokens(input_ids)                           # [b, s, hidden]
        cos, sin = self.rotary(input_ids.shape[1], position_ids)   # [positions, head_dim/2]
        for layer in self.layers:
            x = layer(x, cos, sin, position_ids)                   # [b, s, hidden]
        x = self.norm(x)
        if self.lm_head is None:
            return paddle.matmul(x, self.embed_tokens.weight, transpose_y=True)  # [b, s, vocab]
        return self.lm_head(x)                                     # [b, s, vocab]
