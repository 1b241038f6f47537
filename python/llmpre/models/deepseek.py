"""DeepSeek-V2/V3 multi-head latent attention (MLA).

Per token ``x`` (``H`` heads; ``n``/``r``/``v`` = nope/rope/value head dims):

    q          = W_qb RMSNorm(W_qa x)  (or W_q x without a query bottleneck)  -> H x [q_nope (n) | q_rope (r)]
    [c, k_r]   = W_kva x                       c: kv_lora_rank latent, k_r: one rotary key shared by all heads
    [k_n | v]  = W_kvb RMSNorm(c)              -> H x [k_nope (n) | v (v)]
    q_rope, k_r = RoPE(q_rope, k_r)           interleaved pairs, tables of dimension r
    head h:   softmax(scale * [q_nope | q_rope] . [k_nope | k_r]) v,   scale = (n + r)^-1/2 (x YaRN mscale^2)

The rest of the decoder (norms, MoE, residuals) is :mod:`llmpre.models.llama`'s.
"""

from __future__ import annotations

import paddle
import paddle.nn as nn

from llmpre.models.config import ModelConfig
from llmpre.models.layers import RMSNorm, yarn_mscale
from llmpre.ops.select import Ops

LATENT_NORM_EPS = 1e-6  # DeepSeek's q_a_layernorm / kv_a_layernorm use the default epsilon


class MLAttention(nn.Layer):
    def __init__(self, config: ModelConfig, ops: Ops):
        super().__init__()
        m, h = config.mla, config.hidden_size
        self.num_heads, self.nope, self.rope, self.v_dim = (config.num_attention_heads, m.qk_nope_head_dim,
                                                        m.qk_rope_head_dim, m.v_head_dim)
        qk = self.nope + self.rope
        if m.q_lora_rank is None:
            self.q_proj = nn.Linear(h, self.num_heads * qk, bias_attr=False)
        else:
            self.q_a_proj = nn.Linear(h, m.q_lora_rank, bias_attr=False)
            self.q_a_layernorm = RMSNorm(m.q_lora_rank, LATENT_NORM_EPS, ops)
            self.q_b_proj = nn.Linear(m.q_lora_rank, self.num_heads * qk, bias_attr=False)
        self.q_lora = m.q_lora_rank is not None
        self.kv_a_proj_with_mqa = nn.Linear(h, m.kv_lora_rank + self.rope, bias_attr=False)
        self.kv_a_layernorm = RMSNorm(m.kv_lora_rank, LATENT_NORM_EPS, ops)
        self.kv_b_proj = nn.Linear(m.kv_lora_rank, self.num_heads * (self.nope + self.v_dim), bias_attr=False)
        self.o_proj = nn.Linear(self.num_heads * self.v_dim, h, bias_attr=None if config.attention_out_bias else False)
        self.kv_lora_rank = m.kv_lora_rank
        self.scale = qk ** -0.5
        s = config.rope_scaling
        if s is not None and s.rope_type == "yarn" and s.mscale_all_dim:
            self.scale *= yarn_mscale(s.factor, s.mscale_all_dim) ** 2
        self.interleaved = config.rope_interleaved
        self.ops = ops

    def forward(self, x, cos=None, sin=None, position_ids=None, alibi=None):
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.q_lora else self.q_proj(x)
        q = q.reshape([0, 0, self.num_heads, self.nope + self.rope])                       # [b, s, H, n+r]
        q_nope, q_rope = paddle.split(q, [self.nope, self.rope], axis=-1)   # one backward: a concat
        latent_rope = self.kv_a_proj_with_mqa(x)                                       # [b, s, c + r]
        latent, k_rope = paddle.split(latent_rope, [self.kv_lora_rank, self.rope], axis=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(latent))                               # [b, s, H (n+v)]
        kv = kv.reshape([0, 0, self.num_heads, self.nope + self.v_dim])                    # [b, s, H, n+v]
        k_nope, v = paddle.split(kv, [self.nope, self.v_dim], axis=-1)
        q_rope, k_rope = self.ops.rotary(q_rope, k_rope.unsqueeze(2), cos, sin, position_ids,
                                         interleaved=self.interleaved)               # [b,s,H,r], [b,s,1,r]
        q = paddle.concat([q_nope, q_rope], axis=-1)                                   # [b, s, H, n+r]
        k = paddle.concat([k_nope, k_rope.expand([-1, -1, self.num_heads, -1])], axis=-1)  # [b, s, H, n+r]
        out = self.ops.attention(q, k, v, causal=True, scale=self.scale)              # [b, s, H, v]
        return self.o_proj(out.reshape([0, 0, self.num_heads * self.v_dim]))              # [b, s, hidden]
