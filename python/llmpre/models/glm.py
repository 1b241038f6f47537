"""GLM: ChatGLM-6B (GLM v1, THUDM's chatglm-6b and chatglm-6b-v1.1) and GLM-130B.

    x_0    = embed(ids)
    h      = LN_1(x_l);   y = alpha * h + Attention(h)         alpha = sqrt(2 * layers)
    g      = LN_2(y);     x_l+1 = alpha * g + MLP(g)           (post-LN; GLM-130B's DeepNorm)
    logits = LN(x_L) @ embed^T                                  tied output embedding

Attention has q/k/v/o biases (HF/PaddleNLP keep q/k/v fused per head as ``[q | k | v]``)
and RoPE in rotate-half pairs with base 10000:

* ChatGLM-6B (``glm.position_2d``): 2-D positions.  The first half of every query/key
  head is rotated by the position id, the second half by the block position id, each
  half with the frequencies of a ``head_dim / 2`` rotary.
* GLM-130B: one position id rotates the whole head.

Frequencies are computed in float32, as PaddleNLP does; THUDM's own code rounds them to
float16 first (``inv_freq.half()``), so its logits differ slightly from these at long positions.

The attention mask is GLM's prefix mask: every query sees the keys of the context (the
tokens before the first ``<sop>``, i.e. ``bos_token_id``) and, causally, those after.
The original's query-key layer scaling (scores of layer ``l`` computed from
``q / (sqrt(d) (l + 1))`` and multiplied by ``l + 1`` in fp32 before the softmax) is the
standard ``1 / sqrt(d)`` scale in exact arithmetic; the written-out prefix attention
keeps the original's order of operations, the causal path uses the selected attention op.

Inputs without ``position_ids`` get them from their tokens, per sample, as THUDM's model
and PaddleNLP's tokenizer derive them (:func:`glm_inputs`): context = tokens before the
first ``<sop>``; the mask token is ``[gMASK]`` if the sample has one, else ``[MASK]``.
2-D: positions ``0..s-1`` except that from the ``<sop>`` on they all equal the mask
token's position (THUDM's later code and PaddleNLP; the first chatglm-6b code kept counting
after a ``[gMASK]``); block positions are 0 in the context and ``1, 2, ...`` from the
``<sop>`` on.  1-D (GLM-130B): positions ``0..s-1``, from the ``<sop>`` on the mask
position when the mask token is ``[MASK]`` (``[gMASK]`` keeps counting).  A sample with
no ``<sop>`` is plain causal text: positions ``0..s-1``, block positions 0, causal mask.
That is how pretraining samples (token windows of plain text, PaddleNLP's
``run_pretrain.py`` collator: ``input_ids`` and shifted ``labels``) are treated;
PaddleNLP's own ``ChatGLMForCausalLM`` refuses such input (it needs an attention mask).

Parameter names are llmpre's canonical ones (:mod:`llmpre.models.llama`): q/k/v split,
so tensor parallelism can split them by head; :mod:`llmpre.models.hf_names` maps them to
THUDM's ``transformer.layers.{i}.attention.query_key_value`` and the rest.
"""

from __future__ import annotations

import math
from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from llmpre.errors import ConfigError
from llmpre.models.config import ModelConfig
from llmpre.models.layers import MLP, Attention, LMHead, RotaryEmbedding, init_weights, make_norm
from llmpre.models.stage import ParallelSupport
from llmpre.ops.select import Ops, select_ops


def glm_inputs(input_ids: paddle.Tensor, config: ModelConfig):
    """``(positions [b, s], block_positions [b, s] or None (1-D), prefix [b] or None)`` of a
    batch of token ids by GLM's rules (see the module doc); ``prefix`` (context lengths) is
    None when no sample has a ``<sop>``."""
    glm = config.glm
    b, s = input_ids.shape
    j = paddle.arange(s, dtype="int64").unsqueeze(0).expand([b, s])                # [b, s]

    def first(hit):                  # (any, first index) of a boolean [b, s]
        return hit.any(axis=1), paddle.argmax(hit.astype("int32"), axis=1).astype("int64")

    has_sop, sop = first(input_ids == config.bos_token_id)                          # [b], [b]
    has_gmask, gmask_at = first(input_ids == glm.gmask_token_id)
    has_mask, mask_at = first(input_ids == glm.mask_token_id)
    mask_pos = paddle.where(has_gmask, gmask_at, mask_at)                           # [b]
    context = paddle.where(has_sop, sop, paddle.full_like(sop, s))                  # [b]: s = all context
    after = j >= context.unsqueeze(1)                                               # [b, s]: from <sop> on
    move = after & (has_gmask | has_mask).unsqueeze(1)
    if not glm.position_2d:
        move = move & ~has_gmask.unsqueeze(1)                                       # [gMASK] keeps counting
    positions = paddle.where(move, mask_pos.unsqueeze(1).expand([b, s]), j)
    blocks = None
    if glm.position_2d:
        blocks = paddle.where(after, j - context.unsqueeze(1) + 1, paddle.zeros_like(j))
    prefix = None
    if bool(has_sop.any()):
        prefix = paddle.where(has_sop, sop, paddle.zeros_like(sop))                # no <sop>: causal
    return positions, blocks, prefix


def prefix_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, prefix: paddle.Tensor,
                     coeff: float) -> paddle.Tensor:
    """GLM attention, written out (the fused kernels have no prefix mask): query ``i`` of
    sample ``b`` sees key ``j`` when ``j <= i`` or ``j < prefix[b]``.  Scores are
    ``(q / (sqrt(d) coeff)) k^T``, multiplied by ``coeff`` in fp32 (the original's query-key
    layer scaling), softmax in fp32.  q, k, v ``[b, s, heads, d]`` -> ``[b, s, heads, d]``."""
    s, d = q.shape[1], q.shape[-1]
    qt = (q / (math.sqrt(d) * coeff)).transpose([0, 2, 1, 3])                      # [b, h, s, d]
    kt, vt = k.transpose([0, 2, 1, 3]), v.transpose([0, 2, 1, 3])                   # [b, h, s, d]
    scores = paddle.matmul(qt, kt, transpose_y=True).astype("float32") * coeff      # [b, h, s, s]
    i = paddle.arange(s, dtype="int64")
    causal = i.unsqueeze(0) <= i.unsqueeze(1)                                       # [s(q), s(k)]
    visible = causal.unsqueeze(0) | (i.reshape([1, 1, s]) < prefix.reshape([-1, 1, 1]))   # [b, s, s]
    scores = paddle.where(visible.unsqueeze(1), scores, paddle.full_like(scores, float("-inf")))
    probs = F.softmax(scores, axis=-1).astype(q.dtype)                              # [b, h, s, s]
    return paddle.matmul(probs, vt).transpose([0, 2, 1, 3])                         # [b, s, h, d]


class GLMAttention(Attention):
    """Multi-head attention with biases, GLM's RoPE (2-D or 1-D) and prefix mask."""

    def __init__(self, config: ModelConfig, ops: Ops, index: int):
        super().__init__(config, ops)
        self.position_2d = config.glm.position_2d
        self.coeff = float(index + 1)        # query-key layer scaling of layer `index`

    def forward(self, x, cos, sin, positions, blocks, prefix):
        q = self.q_proj(x).reshape([0, 0, self.num_heads, self.head_dim])         # [b, s, heads, d]
        k = self.k_proj(x).reshape([0, 0, self.num_kv_heads, self.head_dim])      # [b, s, heads, d]
        v = self.v_proj(x).reshape([0, 0, self.num_kv_heads, self.head_dim])      # [b, s, heads, d]
        if self.position_2d:          # halves: [.., :d/2] by position, [.., d/2:] by block position
            q1, q2 = paddle.split(q, 2, axis=-1)                                   # [b, s, heads, d/2]
            k1, k2 = paddle.split(k, 2, axis=-1)
            q1, k1 = self.ops.rotary(q1, k1, cos, sin, positions)
            q2, k2 = self.ops.rotary(q2, k2, cos, sin, blocks)
            q, k = paddle.concat([q1, q2], axis=-1), paddle.concat([k1, k2], axis=-1)
        else:
            q, k = self.ops.rotary(q, k, cos, sin, positions)
        if prefix is None:
            out = self.ops.attention(q, k, v, causal=True)                         # [b, s, heads, d]
        else:
            out = prefix_attention(q, k, v, prefix, self.coeff)                    # [b, s, heads, d]
        return self.o_proj(out.reshape([0, 0, self.num_heads * self.head_dim]))   # [b, s, hidden]


class GLMBlock(nn.Layer):
    def __init__(self, config: ModelConfig, index: int, ops: Ops):
        super().__init__()
        self.input_layernorm = make_norm(config, ops)
        self.self_attn = GLMAttention(config, ops, index)
        self.post_attention_layernorm = make_norm(config, ops)
        self.mlp = MLP(config, ops)
        self.alpha = math.sqrt(2 * config.num_hidden_layers)

    def forward(self, x, cos, sin, positions, blocks, prefix):
        h = self.input_layernorm(x)                                                # [b, s, hidden]
        y = h * self.alpha + self.self_attn(h, cos, sin, positions, blocks, prefix)
        g = self.post_attention_layernorm(y)
        return g * self.alpha + self.mlp(g)                                        # [b, s, hidden]


class GLMForCausalLM(nn.Layer):
    def __init__(self, config: ModelConfig, ops: Optional[Ops] = None):
        super().__init__()
        if config.glm is None:
            raise ConfigError(f"GLMForCausalLM needs a GLM config (model_type 'glm'), got {config.model_type!r}")
        self.config = config
        self.ops = ops if ops is not None else select_ops()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        # 2-D: each half of a head is rotated with the tables of a head_dim / 2 rotary
        self.rotary = RotaryEmbedding(config, config.head_dim // 2 if config.glm.position_2d else None)
        self.layers = nn.LayerList([GLMBlock(config, i, self.ops) for i in range(config.num_hidden_layers)])
        self.norm = make_norm(config, self.ops)
        self.lm_head = LMHead(config, self.embed_tokens)
        self.aux_loss = None
        init_weights(self, config)

    def forward(self, input_ids: paddle.Tensor, position_ids: Optional[paddle.Tensor] = None,
                prefix: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """input_ids ``[batch, seq]`` -> logits ``[batch, seq, vocab]``.  ``position_ids``:
        ``[batch, 2, seq]`` (positions, block positions; 2-D models) or ``[batch, seq]``
        (GLM-130B), as THUDM's and PaddleNLP's models take them; ``prefix``: ``[batch]``
        context lengths (keys before it are seen by every query; None: causal).  Without
        ``position_ids`` both come from the tokens (see the module doc)."""
        ctx = self.context(input_ids.shape[0], input_ids.shape[1], position_ids, prefix)
        self.sample_context(ctx, input_ids)
        x = self.embed(input_ids, ctx)                                             # [b, s, hidden]
        for layer in self.layers:
            x = self.run_layer(layer, x, ctx)
        return self.head(x)                                                        # [b, s, vocab]

    def parallel_support(self) -> ParallelSupport:
        # positions and the prefix come from each micro-batch's ids on every pipeline stage
        # (sample_context); attention sees the whole sequence under sequence parallelism
        return ParallelSupport()

    def init_overrides(self) -> dict:
        """GLM-130B's DeepNorm initialisation (``glm.deepnorm_init``; GLM-130B paper, 2.1):
        Xavier normal, ``std = gain sqrt(2 / (fan_in + fan_out))``, with gain ``(2 layers)^-1/2``
        for the value, output and MLP projections and 1 for query and key; biases 0.  Other
        GLM models keep llmpre's scheme (:mod:`llmpre.models.init`)."""
        if not self.config.glm.deepnorm_init:
            return {}
        beta = (2 * self.config.num_hidden_layers) ** -0.5
        out = {}
        for name, p in self.named_parameters():
            if name.startswith("layers.") and name.endswith("_proj.weight"):
                fan_in, fan_out = int(p.shape[0]), int(p.shape[1])                 # Paddle Linear: [in, out]
                gain = 1.0 if name.endswith(("q_proj.weight", "k_proj.weight")) else beta
                out[name] = ("normal", gain * math.sqrt(2.0 / (fan_in + fan_out)))
        return out

    # The pieces of forward, used on their own by pipeline stages, recompute and stage-3 sharding
    # (models.stage).
    def context(self, batch: int, seq: int, position_ids: Optional[paddle.Tensor] = None,
                prefix: Optional[paddle.Tensor] = None) -> dict:
        """Positions, block positions, prefix lengths and RoPE tables; with no
        ``position_ids`` they are filled in by :meth:`sample_context` from the tokens."""
        ctx = {"positions": None, "blocks": None, "prefix": prefix, "cos": None, "sin": None,
               "router_stats": []}
        if position_ids is None:
            if prefix is not None:
                raise ConfigError("GLM: prefix (context lengths) was given without position_ids; pass both, "
                                  "or neither to derive them from the [gMASK]/<sop> tokens")
            return ctx
        want = [batch, 2, seq] if self.config.glm.position_2d else [batch, seq]
        if list(position_ids.shape) != want:
            raise ConfigError(f"GLM position_ids have shape {list(position_ids.shape)}; this model takes {want} "
                              + ("(positions and block positions)" if self.config.glm.position_2d else ""))
        position_ids = position_ids.astype("int64")
        if self.config.glm.position_2d:
            ctx["positions"], ctx["blocks"] = position_ids[:, 0], position_ids[:, 1]
        else:
            ctx["positions"] = position_ids
        ctx["cos"], ctx["sin"] = self.rotary(seq, position_ids)
        return ctx

    def sample_context(self, ctx: dict, input_ids: paddle.Tensor) -> None:
        """Positions, block positions and prefix from the tokens (:func:`glm_inputs`) when
        none were given."""
        if ctx["positions"] is None:
            ctx["positions"], ctx["blocks"], ctx["prefix"] = glm_inputs(input_ids, self.config)
            ctx["cos"], ctx["sin"] = self.rotary(input_ids.shape[1] + 1)   # block positions reach seq

    def embed(self, input_ids: paddle.Tensor, ctx: dict) -> paddle.Tensor:
        return self.embed_tokens(input_ids)                                        # [b, s, hidden]

    def run_layer(self, layer, x: paddle.Tensor, ctx: dict) -> paddle.Tensor:
        return layer(x, ctx["cos"], ctx["sin"], ctx["positions"], ctx["blocks"], ctx["prefix"])

    def head(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.lm_head(self.norm(x))                                          # [b, s, vocab]
