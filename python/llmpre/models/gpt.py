"""GPT-style decoders: GPT-2/GPT-3, OPT and Bloom.

    x_0    = embed(ids) [@ P_in]  + pos(p)        learned positions (OPT: row p + 2); Bloom: ALiBi instead,
                                                  and a LayerNorm on the embedding
    pre-norm (GPT, OPT, Bloom):   h = x + Attn(LN(x));     x' = h + MLP(LN(h))
    post-norm (OPT-350m):         h = LN(x + Attn(x));     x' = LN(h + MLP(h))
    logits = [LN](x_L) [@ P_out] @ embed^T         tied output embedding

Attention has q/k/v/o biases, the MLP is ``down(act(up x))`` with biases (GELU for
GPT/Bloom, ReLU for OPT); norms are LayerNorms.

Dropout (training only, after :meth:`GPTForCausalLM.set_dropout`; PaddleNLP's GPT
sites and rates as of PaddleNLP 2.8):

    x_0 = drop_h(x_0);   Attn = drop_a(o_proj(drop_a(softmax(.)) v));   MLP = drop_h(MLP)

``drop_h`` at ``hidden_dropout_prob``, ``drop_a`` at ``attention_probs_dropout_prob``
(PaddleNLP 2.8 applies that rate after the attention output too); masks come from
:mod:`llmpre.models.dropout`, a pure function of seed, step, sample, site and the
element's place in the whole sample (a sequence-parallel chunk of the hidden states
offsets its elements by the chunks before it).  Parameter names follow
:mod:`llmpre.models.llama` (``embed_tokens``, ``layers.{i}.self_attn.q_proj``,
``mlp.up_proj``/``mlp.down_proj``, ``norm``) plus ``embed_positions``,
``embed_norm`` and OPT-350m's ``project_in``/``project_out``.
"""

from __future__ import annotations

from typing import Optional

import paddle
import paddle.nn as nn

from llmpre.errors import ConfigError
from llmpre.models import dropout as drop
from llmpre.models.config import ModelConfig
from llmpre.models.layers import MLP, Attention, LMHead, alibi_slopes, init_weights, make_norm
from llmpre.models.stage import ParallelSupport, micro_batch_context
from llmpre.ops.select import Ops, select_ops


class Block(nn.Layer):
    def __init__(self, config: ModelConfig, ops: Ops, index: int = 0):
        super().__init__()
        self.index, self.p_hidden, self.p_attn = index, 0.0, 0.0   # dropout: set_dropout
        self.input_layernorm = make_norm(config, ops)
        self.self_attn = Attention(config, ops)
        self.post_attention_layernorm = make_norm(config, ops)
        self.mlp = MLP(config, ops)
        self.pre_norm = config.pre_norm

    def forward(self, x, alibi, keys=None, offset=0):
        """``keys``: the batch's dropout keys (training with dropout), else None; ``offset``:
        the index of ``x``'s first element in its sample's whole ``[seq, hidden]``."""
        site = 3 * self.index + 1      # + 0 attention probabilities, + 1 attention out, + 2 MLP out

        def attn(y):
            return drop.dropout(self.self_attn(y, None, None, None, alibi, keys, site), self.p_attn, keys,
                                site + 1, offset)

        def mlp(y):
            return drop.dropout(self.mlp(y), self.p_hidden, keys, site + 2, offset)

        if self.pre_norm:
            h = x + attn(self.input_layernorm(x))
            return h + mlp(self.post_attention_layernorm(h))
        h = self.input_layernorm(x + attn(x))
        return self.post_attention_layernorm(h + mlp(h))


class GPTForCausalLM(nn.Layer):
    def __init__(self, config: ModelConfig, ops: Optional[Ops] = None):
        super().__init__()
        self.config = config
        self.ops = ops if ops is not None else select_ops()
        h, e = config.hidden_size, config.word_embed_proj_dim or config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, e)
        self.project_in = nn.Linear(e, h, bias_attr=False) if e != h else None
        self.project_out = nn.Linear(h, e, bias_attr=False) if e != h else None
        self.embed_positions = None
        if config.position == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings + config.position_offset, h)
        self.embed_norm = make_norm(config, self.ops) if config.embedding_norm else None
        if config.position == "alibi":
            self.register_buffer("alibi", alibi_slopes(config.num_attention_heads), persistable=False)
        else:
            self.alibi = None
        self.layers = nn.LayerList([Block(config, self.ops, i) for i in range(config.num_hidden_layers)])
        self.norm = make_norm(config, self.ops) if config.final_norm else None
        self.lm_head = LMHead(config, self.embed_tokens, in_features=e)
        self.aux_loss = None
        self.p_hidden = 0.0
        self.dropout_seed = self.dropout_key = None   # set_dropout / models.dropout.set_dropout_step
        init_weights(self, config)

    def set_dropout(self, hidden: float, attention: float, seed: int) -> None:
        """Train with dropout (PaddleNLP's hidden_dropout_prob / attention_probs_dropout_prob);
        masks are keyed by ``seed``, the step (``set_dropout_step``) and each sample."""
        self.p_hidden = float(hidden)
        self.dropout_seed = int(seed) if hidden > 0 or attention > 0 else None
        for layer in self.layers:
            layer.p_hidden, layer.p_attn = float(hidden), float(attention)
            layer.self_attn.dropout_p = float(attention)

    @property
    def has_dropout(self) -> bool:
        return self.dropout_seed is not None

    def forward(self, input_ids: paddle.Tensor, position_ids: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """input_ids ``[batch, seq]`` int -> logits ``[batch, seq, vocab]`` in the model dtype."""
        ctx = micro_batch_context(self, input_ids, position_ids)
        x = self.embed(input_ids, ctx)                                     # [b, s, hidden]
        for layer in self.layers:
            x = self.run_layer(layer, x, ctx)                              # [b, s, hidden]
        return self.head(x)                                                # [b, s, vocab]

    def parallel_support(self) -> ParallelSupport:
        # positions, the embedding norm and project_in see the whole sequence; the split comes after them
        return ParallelSupport(whole_sequence=("embed_tokens", "project_in", "embed_positions", "embed_norm"))

    # The pieces of forward, used on their own by pipeline stages (models.stage).
    def context(self, batch: int, seq: int, position_ids: Optional[paddle.Tensor] = None) -> dict:
        c = self.config
        if self.embed_positions is not None:
            if position_ids is None:
                position_ids = paddle.arange(seq, dtype="int64").unsqueeze(0)   # [1, s]
            if int(position_ids.max()) >= c.max_position_embeddings:
                raise ConfigError(f"position {int(position_ids.max())} is past max_position_embeddings="
                                  f"{c.max_position_embeddings} of this learned-position model; use sequences of "
                                  "at most that length (from scratch, the trainer raises it to max_seq_length)")
        return {"position_ids": position_ids, "alibi": self.alibi, "router_stats": []}

    def sample_context(self, ctx: dict, input_ids: paddle.Tensor) -> None:
        """Training with dropout: the ``[b]`` dropout keys of the samples (models.dropout)."""
        if self.training and self.has_dropout and self.dropout_key is not None:
            ctx["dropout"] = drop.sample_keys(input_ids, self.dropout_key)       # [b]

    def embed(self, input_ids: paddle.Tensor, ctx: dict) -> paddle.Tensor:
        x = self.embed_tokens(input_ids)                                   # [b, s, e]
        if self.project_in is not None:
            x = self.project_in(x)                                         # [b, s, hidden]
        if self.embed_positions is not None:
            x = x + self.embed_positions(ctx["position_ids"] + self.config.position_offset)  # [b, s, hidden]
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return drop.dropout(x, self.p_hidden, ctx.get("dropout"), site=0)

    def run_layer(self, layer, x: paddle.Tensor, ctx: dict) -> paddle.Tensor:
        part, _ = ctx.get("sequence_chunk", (0, 1))             # x: part `part` of the sequence
        return layer(x, ctx["alibi"], ctx.get("dropout"), part * x.shape[1] * x.shape[2])

    def head(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        if self.project_out is not None:
            x = self.project_out(x)                                        # [b, s, e]
        return self.lm_head(x)                                             # [b, s, vocab]
