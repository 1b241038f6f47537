"""Apply a parallel layout to a model built as for one process.

``parallelize(model, env)`` swaps in tensor-parallel layers, keeps only this
rank's pipeline stages, and wraps layers for recomputation; it returns a
:class:`Plan` with the pipeline chunks this rank runs and the loss function.
Model files never see any of it: they are written as the math, and the model
is built identically (same seed) on every rank before being cut, so every
layout starts from the parameters of a single-process run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import paddle
import paddle.nn as nn

from llmpre.errors import ConfigError
from llmpre.parallel import tensor_parallel as tpl
from llmpre.parallel.recompute import recompute

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
    c = model.config
    if dims.tp > 1 or dims.pp > 1 or dims.recompute:
        if c.moe is not None or getattr(c, "mla", None):
            raise ConfigError(f"{c.model_type}: tensor/pipeline parallelism and recompute are not yet "
                              "supported for mixture-of-experts or latent-attention models; use data "
                              "parallelism and sharding")
    if dims.sequence_parallel:
        if getattr(c, "is_gpt", False) or getattr(c, "localized_filtering", False):
            raise ConfigError(f"{c.model_type}: sequence_parallel needs a decoder without learned "
                              "positions or localized filtering (LLaMA-family models)")
    if dims.tp > 1 and getattr(c, "is_gpt", False) and getattr(c, "word_embed_proj_dim", None):
        raise ConfigError("tensor parallelism does not support OPT's projected embeddings")


def _tensor_parallel(model, env):
    dims, group, sp = env.dims, env.tp, env.dims.sequence_parallel
    tp, r = dims.tp, env.tp.index
    c = model.config
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        heads, kv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
        local = list(range(r * heads // tp, (r + 1) * heads // tp))
        cols = [h * d + i for h in local for i in range(d)]
        attn.q_proj = tpl.ColumnParallelLinear(attn.q_proj, cols, group, sp)
        if kv % tp == 0:
            kv_local = list(range(r * kv // tp, (r + 1) * kv // tp))
            kv_cols = [h * d + i for h in kv_local for i in range(d)]
            attn.k_proj = tpl.ColumnParallelLinear(attn.k_proj, kv_cols, group, sp)
            attn.v_proj = tpl.ColumnParallelLinear(attn.v_proj, kv_cols, group, sp)
            attn.num_kv_heads = kv // tp
        else:  # fewer KV heads than ranks: replicate, each rank reads the one its queries use
            kv_local = sorted({h // (heads // kv) for h in local})
            attn.k_proj = tpl.ReplicatedKVProjection(attn.k_proj, kv_local, d, group, sp)
            attn.v_proj = tpl.ReplicatedKVProjection(attn.v_proj, kv_local, d, group, sp)
            attn.num_kv_heads = len(kv_local)
        attn.num_heads = heads // tp
        attn.o_proj = tpl.RowParallelLinear(attn.o_proj, cols, group, sp)
        inter = mlp.up_proj.weight.shape[1]
        mcols = list(range(r * inter // tp, (r + 1) * inter // tp))
        if getattr(mlp, "gated", False):
            mlp.gate_proj = tpl.ColumnParallelLinear(mlp.gate_proj, mcols, group, sp)
        mlp.up_proj = tpl.ColumnParallelLinear(mlp.up_proj, mcols, group, sp)
        mlp.down_proj = tpl.RowParallelLinear(mlp.down_proj, mcols, group, sp)
    if getattr(model, "alibi", None) is not None:
        heads = c.num_attention_heads
        model.alibi = model.alibi[r * heads // tp:(r + 1) * heads // tp]
    tied = model.lm_head.tied is not None
    model.embed_tokens = tpl.VocabParallelEmbedding(model.embed_tokens, group, sp)
    if tied:
        model.lm_head = tpl.ParallelLMHead(group, sp, tied_to=model.embed_tokens)
    else:
        model.lm_head = tpl.ParallelLMHead(group, sp, linear=model.lm_head,
                                           normalize=model.lm_head.normalize)
    if sp:  # replicated parameters that now see different sequence chunks on each rank
        for name, p in model.named_parameters():
            if not hasattr(p, tpl.TP_SPLIT) and ("norm" in name or name.endswith(".bias")):
                setattr(p, tpl.TP_GRAD_SUM, True)


def _recompute_layers(model, dims):
    # Llama-family decoder layers return (hidden, router_stats) - stats are None
    # here (MoE is refused above); GPT blocks return hidden.
    pair = type(model).__name__ == "LlamaForCausalLM"
    skip = set(dims.no_recompute_layers)
    for i, layer in enumerate(model.layers):
        if i in skip:
            continue
        if dims.recompute_granularity == "full":
            layer.forward = _recomputed(layer.forward, pair)
        elif dims.recompute_granularity == "full_attn":
            layer.self_attn.forward = _recomputed(layer.self_attn.forward, False)
        else:  # core_attn: only softmax(QK^T)V
            attn = layer.self_attn
            attn.ops = dataclasses.replace(attn.ops, attention=_core_attention(attn.ops.attention))


def _recomputed(forward, returns_pair: bool):
    if returns_pair:
        def run(x, *rest):
            return recompute(lambda h, *a: forward(h, *a)[0], x, *rest), None
    else:
        def run(x, *rest):
            return recompute(forward, x, *rest)
    return run


def _core_attention(attention):
    def run(q, k, v, **kw):
        return recompute(lambda a, b, c: attention(a, b, c, **kw), q, k, v, num_grad_inputs=3)
    return run


def _pipeline(model, env) -> tuple[list[Chunk], bool]:
    dims, stage = env.dims, env.coords["pp"]
    layers = model.config.num_hidden_layers
    total = dims.pp * dims.vpp
    per = layers // total
    chunks, keep = [], set()
    for c in range(dims.vpp):
        g = c * dims.pp + stage
        rng = range(g * per, (g + 1) * per)
        chunks.append(Chunk(g, rng, g == 0, g == total - 1))
        keep.update(rng)
    if dims.pp == 1:
        return chunks, False
    for i in range(layers):
        if i not in keep:
            model.layers[i] = nn.Layer()          # placeholder: names of kept layers stay global
    first = any(ch.first for ch in chunks)
    last = any(ch.last for ch in chunks)
    tied = bool(model.config.tie_word_embeddings)
    if not first and not (last and tied):
        model.embed_tokens = nn.Layer()
    if not first:
        for name in ("embed_positions", "embed_norm", "project_in"):
            if getattr(model, name, None) is not None:
                setattr(model, name, nn.Layer())
    if not last:
        for name in ("norm", "lm_head", "project_out"):
            if getattr(model, name, None) is not None:
                setattr(model, name, nn.Layer())
    elif tied and not first:
        for _, p in model.embed_tokens.named_parameters():
            setattr(p, NORM_SKIP, True)   # counted once, on the first stage
    return chunks, tied


def parallelize(model, env) -> Plan:
    dims = env.dims
    _check_supported(model, dims)
    if dims.tp > 1:
        _tensor_parallel(model, env)
    if dims.recompute:
        _recompute_layers(model, dims)
    chunks, tied = _pipeline(model, env)
    if dims.tp > 1:
        group = env.tp

        def loss_fn(logits, labels):
            return tpl.vocab_parallel_cross_entropy(logits, labels, group)
    else:
        from llmpre.models import causal_lm_loss as loss_fn
    return Plan(model=model, chunks=chunks, loss_fn=loss_fn, tied_embedding=tied and dims.pp > 1)


def chunk_forward(model, chunk: Chunk, x, ctx):
    """One pipeline chunk: ids -> hidden (first), hidden -> hidden, hidden -> logits (last)."""
    if chunk.first:
        x = model.embed(x, ctx) if _embed_takes_ctx(model) else model.embed(x)
    for i in chunk.layers:
        x = model.run_layer(model.layers[i], x, ctx)
    return model.head(x) if chunk.last else x


def _embed_takes_ctx(model) -> bool:
    return model.embed.__code__.co_argcount == 3


def detach_for_send(t: paddle.Tensor) -> paddle.Tensor:
    return t.detach().contiguous() if hasattr(t, "contiguous") else t.detach()
