"""The LLaMA-family decoder: LLaMA 1/2/3.x, Mistral, Qwen v1/1.5/2/2.5, Baichuan/Baichuan2,
Gemma, ChatGLM2/3, Yuan2, and -- with MoE feed-forwards and/or latent attention --
Mixtral, Qwen-MoE and DeepSeek-V2/V3.

    x_0    = embed(ids)                    (* sqrt(hidden) for Gemma)
    h_l    = x_l + Attention(Norm(x_l))    GQA; RoPE (full / partial / interleaved, scaled) or ALiBi;
                                           optional sliding window; DeepSeek: latent attention
    x_l+1  = h_l + FFN(Norm(h_l))          FFN: gated MLP, or a mixture of experts on sparse layers
    logits = Norm(x_L) @ W_out             W_out = embed^T when tied; Baichuan2: rows of W_out normalised

Norm is RMSNorm (Gemma: ``(1 + w)`` RMSNorm).  Every choice above comes from
:class:`ModelConfig`; nothing branches on device or kernel (hot ops come from
:func:`llmpre.ops.select_ops`).  Parameter names are llmpre's canonical ones
(``embed_tokens``, ``layers.{i}.self_attn.q_proj``, ``mlp.gate_proj``, ``norm``,
``lm_head``); :mod:`llmpre.models.hf_names` maps them to each HF layout.
Paddle ``Linear`` weights are ``[in, out]``.

MoE models set ``self.aux_loss`` on every forward (None for dense models): the
router auxiliary loss times its coefficient, to be added to the LM loss when training.
The stage interface and the parallel declaration are :mod:`llmpre.models.stage`'s.
"""

from __future__ import annotations

import math
from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from llmpre.models.config import ModelConfig
from llmpre.models.deepseek import MLAttention
from llmpre.models.layers import MLP, Attention, LMHead, RotaryEmbedding, alibi_slopes, init_weights, make_norm
from llmpre.models.moe import MoE, seq_aux_loss
from llmpre.models.mtp import MTPModule, mtp_loss
from llmpre.models.stage import ATTENTION_PLAN, MLA_PLAN, MLP_PLAN, MOE_PLAN, ParallelSupport
from llmpre.ops.select import Ops, select_ops


class DecoderLayer(nn.Layer):
    def __init__(self, config: ModelConfig, index: int, ops: Ops):
        super().__init__()
        self.input_layernorm = make_norm(config, ops)
        self.self_attn = MLAttention(config, ops) if config.mla else Attention(config, ops)
        self.post_attention_layernorm = make_norm(config, ops)
        self.sparse = config.moe is not None and config.moe.is_sparse(index)
        self.mlp = MoE(config, ops) if self.sparse else MLP(config, ops)
        self.router_stats = None   # a sparse layer's router statistics of its last forward

    def forward(self, x, cos, sin, position_ids, alibi):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, position_ids, alibi)
        if not self.sparse:
            return h + self.mlp(self.post_attention_layernorm(h))
        y, self.router_stats = self.mlp(self.post_attention_layernorm(h))
        return h + y


class LlamaForCausalLM(nn.Layer):
    def __init__(self, config: ModelConfig, ops: Optional[Ops] = None):
        super().__init__()
        self.config = config
        self.ops = ops if ops is not None else select_ops()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(config) if config.position == "rope" else None
        if config.position == "alibi":
            self.register_buffer("alibi", alibi_slopes(config.num_attention_heads), persistable=False)
        else:
            self.alibi = None
        self.layers = nn.LayerList([DecoderLayer(config, i, self.ops) for i in range(config.num_hidden_layers)])
        self.norm = make_norm(config, self.ops)
        self.lm_head = LMHead(config, self.embed_tokens)
        self.mtp = None          # DeepSeek-V3 multi-token prediction depths (llmpre.models.mtp)
        if config.num_nextn_predict_layers:
            self.mtp = nn.LayerList([MTPModule(config, DecoderLayer(config, config.num_hidden_layers + k, self.ops),
                                               self.ops) for k in range(config.num_nextn_predict_layers)])
        self.aux_loss: Optional[paddle.Tensor] = None
        init_weights(self, config)

    def forward(self, input_ids: paddle.Tensor, position_ids: Optional[paddle.Tensor] = None,
                labels: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """input_ids ``[batch, seq]`` int -> logits ``[batch, seq, vocab]`` in the model dtype.
        ``labels`` (aligned, ``[batch, seq]``): a model with MTP modules adds their loss to
        ``aux_loss`` (training)."""
        ctx = self.context(input_ids.shape[0], input_ids.shape[1], position_ids)
        x = self.embed(input_ids, ctx)                            # [b, s, hidden]
        for layer in self.layers:
            x = self.run_layer(layer, x, ctx)                     # [b, s, hidden]
        self.aux_loss = self._aux_loss(ctx["router_stats"], input_ids.shape[0])
        if self.mtp is not None and labels is not None:
            extra = mtp_loss(self, x, input_ids, labels)
            self.aux_loss = extra if self.aux_loss is None else self.aux_loss + extra
        return self.head(x)                                       # [b, s, vocab]

    def parallel_support(self) -> ParallelSupport:
        c = self.config
        plan = (MLA_PLAN if c.mla else ATTENTION_PLAN) + MLP_PLAN + MOE_PLAN
        if c.moe is not None or c.mla:   # (MTP blocks: split like the layers, on the last pipeline stage)
            return ParallelSupport(tensor_parallel=plan)
        if c.localized_filtering:
            return ParallelSupport(sequence_parallel=False, why_not={
                "sequence_parallel": "Yuan2's localized filtering mixes neighbouring positions"})
        return ParallelSupport()

    # The pieces of forward, used on their own by pipeline stages (models.stage).
    def context(self, batch: int, seq: int, position_ids: Optional[paddle.Tensor] = None) -> dict:
        """What every layer reads besides the hidden states: RoPE tables
        (``[positions, rotary_dim/2]``), position ids, ALiBi slopes."""
        cos = sin = None
        if self.rotary is not None:
            cos, sin = self.rotary(seq, position_ids)
        return {"cos": cos, "sin": sin, "position_ids": position_ids, "alibi": self.alibi,
                "router_stats": []}

    def embed(self, input_ids: paddle.Tensor, ctx: dict) -> paddle.Tensor:
        x = self.embed_tokens(input_ids)                          # [b, s, hidden]
        if self.config.scale_embeddings:
            x = x * paddle.to_tensor(math.sqrt(self.config.hidden_size), dtype=x.dtype)
        return x

    def run_layer(self, layer, x: paddle.Tensor, ctx: dict) -> paddle.Tensor:
        x = layer(x, ctx["cos"], ctx["sin"], ctx["position_ids"], ctx["alibi"])
        if layer.sparse:
            ctx["router_stats"].append(layer.router_stats)
        return x

    def head(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.lm_head(self.norm(x))                         # [b, s, vocab]

    def _aux_loss(self, stats, batch: int) -> Optional[paddle.Tensor]:
        if not stats or not self.aux_carry_size():
            return None
        return self.aux_from_carry(self.aux_carry(stats, batch))

    # The auxiliary loss in two steps, so pipeline stages pass a partial sum on (parallel.pipeline).
    def aux_carry_size(self) -> int:
        """Length of :meth:`aux_carry` (0: no auxiliary loss)."""
        moe = self.config.moe
        if moe is None or not moe.router_aux_loss_coef:
            return 0
        return 2 * moe.num_experts + 1 if moe.aux_loss_type == "switch" else 1

    def aux_carry(self, stats, batch: int) -> paddle.Tensor:
        """What the auxiliary loss needs of some sparse layers' router statistics, a sum over
        layers (fp32): switch: ``[routed (token, slot) counts (E) | summed probabilities (E) |
        tokens]`` (:func:`~llmpre.models.moe.switch_aux_loss`); seq: these layers' sequence-wise
        loss (:func:`~llmpre.models.moe.seq_aux_loss`)."""
        moe = self.config.moe
        if not stats:
            return paddle.zeros([self.aux_carry_size()], dtype="float32")
        if moe.aux_loss_type != "switch":
            return seq_aux_loss(stats, moe.num_experts, batch).reshape([1])
        counts = sum(F.one_hot(experts.reshape([-1]), moe.num_experts).sum(0) for experts, _ in stats)   # [E]
        probs = sum(scores.sum(0) for _, scores in stats)                                            # [E]
        tokens = paddle.full([1], float(sum(scores.shape[0] for _, scores in stats)), dtype="float32")
        return paddle.concat([counts.astype("float32"), probs, tokens])

    def aux_from_carry(self, carry: paddle.Tensor) -> paddle.Tensor:
        """The auxiliary loss times its coefficient, from every sparse layer's :meth:`aux_carry` summed."""
        moe = self.config.moe
        if moe.aux_loss_type != "switch":
            return moe.router_aux_loss_coef * carry.sum()
        e = moe.num_experts
        n = carry[2 * e]
        return moe.router_aux_loss_coef * e * ((carry[:e] / n) * (carry[e:2 * e] / n)).sum()
