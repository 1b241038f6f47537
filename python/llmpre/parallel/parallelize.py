"""Apply a parallel layout to a model built as for one process.

``parallelize(model, env)`` swaps in tensor-parallel layers, keeps only this
rank's pipeline stages, and wraps layers for recomputation; it returns a
:class:`Plan` with the pipeline chunks this rank runs and the loss function.
Model files never see any of it: they are written as the math. The model
arrives deferred (``build_model(..., lazy=True)``: no parameter memory) or
loaded; this rank's pipeline stages are chosen first, then each kept weight
produces only this rank's tensor-parallel slice (:mod:`llmpre.models.init`
computes any slice of the single-process initialisation on its own), and what
is left is materialised whole. So every layout starts from the parameters of a
single-process run, and no rank holds more than its shard plus one parameter. What may be applied
to a model is its own declaration (``model.parallel_support()``, see
:mod:`llmpre.models.stage`); the stage interface is the same for every family.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import paddle
import paddle.nn as nn

from llmpre.errors import ConfigError
from llmpre.models import init
from llmpre.parallel import comm, expert
from llmpre.parallel import tensor_parallel as tpl
from llmpre.parallel import expert_tp
from llmpre.parallel.recompute import recompute, with_side_outputs

NORM_SKIP = tpl.NORM_SKIP


@dataclass
class Chunk:
    """One pipeline chunk on this rank: global stage ``stage`` owning layers ``layers``."""
    stage: int
    layers: range
    first: bool
    last: bool


@dataclass
class Plan:
    model: nn.Layer
    chunks: list
    loss_fn: object
    tied_embedding: bool


def _check_supported(model, dims):
    """The model's declaration (models.stage.ParallelSupport); an error naming what the
    model cannot do of what ``dims`` asks."""
    support = model.parallel_support()
    wanted = {"tensor_parallel": dims.tp > 1, "sequence_parallel": dims.sequence_parallel,
              "pipeline": dims.pp > 1, "recompute": dims.recompute}
    offered = {"tensor_parallel": bool(support.tensor_parallel), "sequence_parallel": support.sequence_parallel,
               "pipeline": support.pipeline, "recompute": support.recompute}
    for feature, asked in wanted.items():
        if asked and not offered[feature]:
            raise ConfigError(support.refuse(feature, model.config.model_type))
    return support


def _sub(layer, path: str):
    obj = layer
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _put(layer, path: str, value) -> None:
    owner, _, name = path.rpartition(".")
    setattr(_sub(layer, owner) if owner else layer, name, value)


def _tensor_parallel(model, env, support):
    """Apply the family's per-layer plan (see models.stage.ATTENTION_MLP_PLAN), then
    split the embedding and the LM head over the vocabulary; with sequence
    parallelism, split the sequence where the family says (:func:`_split_sequence`)."""
    dims, group, sp = env.dims, env.tp, env.dims.sequence_parallel
    plan = support.tensor_parallel
    tp, r = dims.tp, env.tp.index
    c = model.config
    mtp = getattr(model, "mtp", None)      # DeepSeek-V3's MTP depths (a placeholder on other stages)
    mtp_blocks = [m.block for m in mtp] if isinstance(mtp, nn.LayerList) else []
    for layer in [*model.layers, *mtp_blocks]:
        if not hasattr(layer, "self_attn"):     # another pipeline stage's layer
            continue
        attn = layer.self_attn
        seq = sp and not any(layer is blk for blk in mtp_blocks)   # MTP depths: whole sequence (WholeSequence)
        heads = attn.num_heads
        kv, d = getattr(attn, "num_kv_heads", heads), getattr(attn, "head_dim", None)   # MLA: neither
        local = list(range(r * heads // tp, (r + 1) * heads // tp))

        def head_cols(width):           # this rank's heads' columns (rows), ``width`` per head
            return [h * width + i for h in local for i in range(width)]
        kv_split = kv % tp == 0
        kv_local = (list(range(r * kv // tp, (r + 1) * kv // tp)) if kv_split
                    else sorted({h // (heads // kv) for h in local}))   # fewer KV heads than ranks
        kv_cols = [h * d + i for h in kv_local for i in range(d)] if d else []
        for path, style in plan:
            linear = _sub(layer, path)
            if linear is None:          # e.g. no gate_proj in a plain MLP
                continue
            if style == "experts":      # a MoE block (dense layers of a MoE model have none)
                if hasattr(linear, "experts"):
                    expert_tp.expert_tensor_parallel(linear, group, seq)
                continue
            if style == "latent_norm":  # inside the region, replicated: partial gradients
                for p in linear.parameters():
                    setattr(p, tpl.TP_GRAD_SUM, True)
                continue
            if style == "heads":
                new = tpl.ColumnParallelLinear(linear, head_cols(linear.weight.shape[1] // heads), group, seq)
            elif style == "heads_local":
                new = tpl.ColumnParallelLinear(linear, head_cols(linear.weight.shape[1] // heads), group, seq,
                                               enter_region=False)
            elif style == "latent":
                new = tpl.ReplicatedLinear(linear, group, seq)
            elif style == "heads_row":
                new = tpl.RowParallelLinear(linear, head_cols(linear.weight.shape[0] // heads), group, seq)
            elif style == "kv_heads":
                new = (tpl.ColumnParallelLinear(linear, kv_cols, group, seq) if kv_split else
                       tpl.ReplicatedKVProjection(linear, kv_local, d, group, seq))
            else:
                inter = linear.weight.shape[1 if style == "column" else 0]
                mcols = list(range(r * inter // tp, (r + 1) * inter // tp))
                new = (tpl.ColumnParallelLinear if style == "column" else tpl.RowParallelLinear)(
                    linear, mcols, group, seq)
            _put(layer, path, new)
        attn.num_heads = heads // tp
        if hasattr(attn, "num_kv_heads"):
            attn.num_kv_heads = kv // tp if kv_split else len(kv_local)
    if getattr(model, "alibi", None) is not None:
        heads = c.num_attention_heads
        model.alibi = model.alibi[r * heads // tp:(r + 1) * heads // tp]
    tied = bool(c.tie_word_embeddings)
    split_in_embedding = sp and not support.whole_sequence
    if isinstance(model.embed_tokens, nn.Embedding):        # kept on this stage
        model.embed_tokens = tpl.VocabParallelEmbedding(model.embed_tokens, group, split_in_embedding)
    if tied and isinstance(model.lm_head, nn.Layer) and hasattr(model.lm_head, "tied"):
        model.lm_head = tpl.ParallelLMHead(group, sp, tied_to=model.embed_tokens)
    elif hasattr(model.lm_head, "weight"):
        model.lm_head = tpl.ParallelLMHead(group, sp, linear=model.lm_head,
                                           normalize=model.lm_head.normalize)
    if mtp_blocks:   # the MTP loss reads the vocabulary-split logits of the shared head
        model.ops = dataclasses.replace(model.ops, cross_entropy=lambda logits, labels, ignore_index=-100:
                                        tpl.vocab_parallel_cross_entropy(logits, labels, group, ignore_index))
        if sp:       # they shift the sequence: its parts are joined for them
            model.mtp_whole_sequence = tpl.WholeSequence(group, model.lm_head)
    if sp:
        _split_sequence(model, group, support.whole_sequence)


def _split_sequence(model, group, whole_sequence: tuple) -> None:
    """Sequence parallelism: the hidden states between layers are split along the sequence.
    The token embedding's reduce-scatter splits it, or, when the family names modules that
    need the whole sequence (``whole_sequence``: learned positions, an embedding norm, a
    projection), the output of ``model.embed`` is split (its gradient all-gathered). Every
    other replicated parameter now sees a different chunk on each rank: its gradients are
    summed over the group. Layers learn which chunk they hold from ``ctx["sequence_chunk"]``."""
    whole = {id(p) for name in whole_sequence if isinstance(getattr(model, name, None), nn.Layer)
             for p in getattr(model, name).parameters()}
    if isinstance(getattr(model, "mtp", None), nn.LayerList):   # they run on the whole sequence
        whole.update(id(p) for p in model.mtp.parameters())
    for p in model.parameters():   # (set False: replicated work on the whole sequence, e.g. a MoE router)
        if not hasattr(p, tpl.TP_SPLIT) and not hasattr(p, tpl.TP_GRAD_SUM) and id(p) not in whole:
            setattr(p, tpl.TP_GRAD_SUM, True)
    if whole_sequence:
        embed = model.embed

        def embed_then_split(input_ids, ctx):
            return comm.scatter_seq(embed(input_ids, ctx), group)            # [b, s / tp, hidden]
        model.embed = embed_then_split
    context = model.context

    def context_with_chunk(*args, **kwargs):
        return {**context(*args, **kwargs), "sequence_chunk": (group.index, group.size)}
    model.context = context_with_chunk


def _recompute_layers(model, dims):
    # every family's layers are ``layer(x, *args) -> x`` (models.stage)
    skip = set(dims.no_recompute_layers)
    for i, layer in enumerate(model.layers):
        if i in skip or not hasattr(layer, "self_attn"):   # kept out, or another stage's layer
            continue
        if dims.recompute_granularity == "full":
            layer.forward = _recomputed(layer.forward, layer)
        elif dims.recompute_granularity == "full_attn":
            layer.self_attn.forward = _recomputed(layer.self_attn.forward)
        else:  # core_attn: only softmax(QK^T)V
            attn = layer.self_attn
            attn.ops = dataclasses.replace(attn.ops, attention=_core_attention(attn.ops.attention))


def _recomputed(forward, layer=None):
    fn, unpack = with_side_outputs(layer, forward) if layer is not None else (forward, lambda out: out)

    def run(x, *rest):
        return unpack(recompute(fn, x, *rest))
    return run


def _core_attention(attention):
    def run(q, k, v, **kw):
        return recompute(lambda a, b, c: attention(a, b, c, **kw), q, k, v, num_grad_inputs=3)
    return run


def _pipeline(model, env) -> tuple[list[Chunk], bool]:
    """This rank's chunks; every layer, embedding and head of other stages is replaced by a
    placeholder (before anything is materialised, so they never are)."""
    dims, stage = env.dims, env.coords["pp"]
    layers = model.config.num_hidden_layers
    total = dims.pp * dims.vpp
    chunks, keep = [], set()
    for g, rng in dims.stage_chunks(layers, stage):   # the one split (dims.pipeline_split), even or not
        chunks.append(Chunk(g, rng, g == 0, g == total - 1))
        keep.update(rng)
    if dims.pp == 1:
        return chunks, False
    for i in range(layers):
        if i not in keep:
            model.layers[i] = nn.Layer()          # placeholder: names of kept layers stay global
    first = any(ch.first for ch in chunks)
    last = any(ch.last for ch in chunks)
    # the last stage also keeps the embedding when the head is tied to it or MTP embeds tokens
    mtp = isinstance(getattr(model, "mtp", None), nn.LayerList)
    tied = bool(model.config.tie_word_embeddings) or mtp
    if not first and not (last and tied):
        model.embed_tokens = nn.Layer()
    if mtp and not last:
        model.mtp = nn.Layer()
    if not first:
        for name in ("embed_positions", "embed_norm", "project_in"):
            if getattr(model, name, None) is not None:
                setattr(model, name, nn.Layer())
    if not last:
        for name in ("norm", "lm_head", "project_out"):
            if getattr(model, name, None) is not None:
                setattr(model, name, nn.Layer())
    return chunks, tied


def _mark_second_embedding(model, chunks) -> None:
    """A tied (or MTP's) embedding kept on the last stage (not also the first) is counted once, there."""
    if not any(ch.first for ch in chunks) and any(ch.last for ch in chunks):
        for _, p in model.embed_tokens.named_parameters():
            setattr(p, NORM_SKIP, True)


def parallelize(model, env, materialize=True) -> Plan:
    """``materialize``: True allocates every parameter this rank keeps; a predicate on the
    parameter name allocates only those it accepts (stage 3: the decoder layers' parameters
    stay deferred, the sharded optimizer computes only its own elements of them)."""
    dims = env.dims
    support = _check_supported(model, dims)
    chunks, tied = _pipeline(model, env)
    if dims.tp > 1:
        _tensor_parallel(model, env, support)
    expert.apply(model, env)       # ep: only this rank's experts are kept (after tp: their final parameters)
    if tied:
        _mark_second_embedding(model, chunks)
    init.materialize(model, None if materialize is True else materialize)   # whatever is left
    if dims.recompute:
        _recompute_layers(model, dims)
    if dims.tp > 1:
        group = env.tp

        def loss_fn(logits, labels):
            return tpl.vocab_parallel_cross_entropy(logits, labels, group)
    else:
        from llmpre.models import causal_lm_loss as loss_fn
    return Plan(model=model, chunks=chunks, loss_fn=loss_fn, tied_embedding=tied and dims.pp > 1)


def chunk_forward(model, chunk: Chunk, x, ctx, hidden: list | None = None):
    """One pipeline chunk: ids -> hidden (first), hidden -> hidden, hidden -> logits (last);
    the last chunk appends its hidden states before the head to ``hidden`` when given (MTP)."""
    if chunk.first:
        x = model.embed(x, ctx)
    for i in chunk.layers:
        x = model.run_layer(model.layers[i], x, ctx)
    if chunk.last and hidden is not None:
        hidden.append(x)
    return model.head(x) if chunk.last else x
