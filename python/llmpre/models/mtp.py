"""DeepSeek-V3 multi-token prediction (MTP): ``num_nextn_predict_layers`` = D extra depths.

Input ids ``t`` (``n`` per sequence), aligned labels ``y`` (``y_i = t_{i+1}``), and ``h^0``
the main model's last hidden states (before its final norm). Depth ``k = 1..D``, for
positions ``i < n - k``:

    h'^k_i = eh_proj [ enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i) ]      (2h -> h, no bias)
    h^k    = Block_k(h'^k)                 a decoder layer (index num_hidden_layers + k - 1),
                                           positions 0 .. n-k-1
    P^k_i  = softmax(Head(norm_k(h^k_i)))  predicts t_{i+k+1} = y_{i+k}
    L_MTP  = lambda / D * sum_k CE(P^k, y[:, k:])      lambda: num_nextn_predict_lambda

``Emb`` and ``Head`` are the main model's embedding and output layer (DeepSeek shares
them; its checkpoints store copies as ``model.layers.{L+k-1}.embed_tokens`` and
``.shared_head.head``, see :mod:`llmpre.models.hf_names`). The concatenation puts the
embedding first, as DeepSeek-V3's released weights are used (vLLM's / SGLang's
``deepseek_mtp``); the paper writes the two halves the other way round. The loss is a
training term (``model.aux_loss``): evaluation and the logits are the main model's.
The MTP blocks' routers are balanced like the main layers' (``llmpre.train.balance``);
their router statistics do not enter the sequence-wise auxiliary loss.
"""

from __future__ import annotations

import paddle
import paddle.nn as nn

from llmpre.models.config import ModelConfig
from llmpre.models.layers import make_norm
from llmpre.ops.select import Ops


class MTPModule(nn.Layer):
    """Depth ``k``: ``enorm``, ``hnorm``, ``eh_proj``, a decoder ``block`` and the norm of its
    shared head (``norm``); ``block`` is built by the caller (the family's decoder layer)."""

    def __init__(self, config: ModelConfig, block: nn.Layer, ops: Ops):
        super().__init__()
        h = config.hidden_size
        self.enorm = make_norm(config, ops)
        self.hnorm = make_norm(config, ops)
        self.eh_proj = nn.Linear(2 * h, h, bias_attr=False)
        self.block = block
        self.norm = make_norm(config, ops)

    def forward(self, h_prev, emb, ctx: dict):
        """h_prev ``[b, m, h]`` (depth k-1), emb ``[b, m, h]`` (embeddings of ``t_{i+k}``) -> h^k ``[b, m, h]``."""
        x = self.eh_proj(paddle.concat([self.enorm(emb), self.hnorm(h_prev)], axis=-1))     # [b, m, h]
        return self.block(x, ctx["cos"], ctx["sin"], ctx["position_ids"], ctx["alibi"])


def mtp_loss(model, hidden, input_ids, labels):
    """``L_MTP`` (module doc) of a :class:`~llmpre.models.llama.LlamaForCausalLM` with MTP
    modules: hidden ``[b, n, h]`` before the final norm, input_ids and labels ``[b, n]``.

    The tokens are embedded once (all ``n``; depth ``k`` reads positions ``k ..``). Under
    sequence parallelism ``hidden`` and the embedding hold this rank's part of the sequence,
    which the shift by ``k`` cannot use: ``model.mtp_whole_sequence`` (set by
    :mod:`llmpre.parallel.parallelize`, absent otherwise) puts them together and gives the
    head for whole-sequence input, and the depths run on every position."""
    b, n = input_ids.shape
    depths = len(model.mtp)
    whole = getattr(model, "mtp_whole_sequence", None)
    emb = model.embed(input_ids, model.context(b, n))                              # [b, n, h] of every t_i
    head = model.lm_head
    if whole is not None:
        hidden, emb, head = whole.gather(hidden), whole.gather(emb), whole.head   # [b, n, h]
    total = 0.0
    h = hidden
    for k, module in enumerate(model.mtp, start=1):
        m = n - k
        if m <= 0:
            break
        ctx = model.context(b, m)
        h = module(h[:, :m], emb[:, k:], ctx)                                      # [b, m, h]; emb of t_{i+k}
        logits = head(module.norm(h))                                              # [b, m, vocab]
        total = total + model.ops.cross_entropy(logits, labels[:, k:], ignore_index=-100)
    return model.config.num_nextn_predict_lambda / depths * total
