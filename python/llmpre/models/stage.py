"""The one interface between a model family and ``llmpre.parallel``.

Every causal-LM class (LLaMA family, GPT family, their MoE and latent-attention
variants) has the same four pieces of ``forward``, which pipeline stages,
recomputation and stage-3 sharding call on their own:

    ctx = model.context(batch, seq, position_ids=None)  # what every layer reads
    x = model.embed(input_ids, ctx)                       # [b, s] -> [b, s, hidden]
    x = model.run_layer(model.layers[i], x, ctx)          # a decoder layer
    logits = model.head(x)                                # [b, s, hidden] -> [b, s, vocab]

A decoder layer is called as ``layer(x, *args) -> x`` (one tensor in, one out),
so any layer's ``forward`` can be wrapped (recompute, stage-3 gathering)
without knowing the family. Side results a layer produces (MoE router
statistics) are left on the layer and collected by ``run_layer``.

What depends on each sample's token ids besides the embedding (GPT's dropout
keys) is put into ``ctx`` by ``model.sample_context(ctx, input_ids)`` when the
model has one, so later pipeline stages, which never run ``embed``, get it too
(:func:`micro_batch_context`). Under sequence parallelism ``llmpre.parallel``
adds ``ctx["sequence_chunk"] = (i, n)``: the hidden states between layers hold
part ``i`` of ``n`` equal parts of the sequence (absent: the whole sequence).

Each family declares what may be done to it, next to its model, as
``model.parallel_support()`` -> :class:`ParallelSupport`; ``llmpre.parallel``
reads that declaration and never looks at class names or argument lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The tensor-parallel plan of a decoder layer: sub-module -> how it is split.
#   "heads"     columns by attention head (q); "kv_heads": by KV head, replicated
#               when there are fewer KV heads than ranks (k, v)
#   "heads_row" rows by attention head (o); "column" / "row": the MLP's split
#   latent / heads_local / latent_norm: MLA (a whole projection entering the region, columns
#               by head of its output, a replicated norm inside the region)
#   "experts"   a MoE block: every expert split like the MLP, router whole (parallel.expert_tp)
ATTENTION_PLAN = (
    ("self_attn.q_proj", "heads"), ("self_attn.k_proj", "kv_heads"), ("self_attn.v_proj", "kv_heads"),
    ("self_attn.o_proj", "heads_row"),
)
MLP_PLAN = (("mlp.gate_proj", "column"), ("mlp.up_proj", "column"), ("mlp.down_proj", "row"))
ATTENTION_MLP_PLAN = ATTENTION_PLAN + MLP_PLAN
# DeepSeek's latent attention: q_proj (no query bottleneck) or q_a -> norm -> q_b; kv_a -> norm -> kv_b
MLA_PLAN = (
    ("self_attn.q_proj", "heads"), ("self_attn.q_a_proj", "latent"), ("self_attn.q_a_layernorm", "latent_norm"),
    ("self_attn.q_b_proj", "heads_local"), ("self_attn.kv_a_proj_with_mqa", "latent"),
    ("self_attn.kv_a_layernorm", "latent_norm"), ("self_attn.kv_b_proj", "heads_local"),
    ("self_attn.o_proj", "heads_row"),
)
MOE_PLAN = (("mlp", "experts"),)


@dataclass(frozen=True)
class ParallelSupport:
    """What ``llmpre.parallel`` may apply to a model.

    ``tensor_parallel`` is the per-layer plan (empty: no tensor parallelism);
    the embedding and LM head are always split over the vocabulary with it.
    ``whole_sequence`` names the modules ``embed`` runs that need the whole
    sequence (learned positions, an embedding norm, a projection): under
    sequence parallelism the sequence is then split after ``embed`` instead
    of by the token embedding's reduce-scatter, and their parameters, which
    see the same activations on every rank, keep per-rank gradients.
    Each ``*_why_not`` says, for the error message, why a feature is absent.
    """
    tensor_parallel: tuple = ATTENTION_MLP_PLAN
    sequence_parallel: bool = True
    whole_sequence: tuple = ()
    pipeline: bool = True
    recompute: bool = True
    why_not: dict = field(default_factory=dict)   # feature -> reason it is unsupported

    def refuse(self, feature: str, model_type: str) -> str:
        reason = self.why_not.get(feature, "not supported by this model family")
        return f"{model_type}: {feature.replace('_', ' ')} is not available: {reason}"


def micro_batch_context(model, input_ids, position_ids=None) -> dict:
    """``model.context`` for a batch of ``input_ids`` ``[b, s]``, with what the
    model derives from the ids themselves (``model.sample_context``, if any)."""
    ctx = model.context(input_ids.shape[0], input_ids.shape[1], position_ids)
    per_sample = getattr(model, "sample_context", None)
    if per_sample is not None:
        per_sample(ctx, input_ids)
    return ctx
