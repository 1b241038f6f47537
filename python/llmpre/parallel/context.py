"""Splitting every sequence over ranks: context parallelism (ring attention) and sep (Ulysses).

The ranks of one ``seq`` group (``ParallelDims.group_ranks("seq")``) read the
same samples; each keeps a part of every sequence, runs the whole model on it,
and their gradients are summed (``ShardedAdamW``), so they act as one process
on the whole sequence. Only attention looks across positions, and only it
changes here; the model file is untouched (``apply`` swaps the attention op of
every layer and gives ``model.context`` the positions of this rank's part).

``cp`` = N (``context_parallel_degree``): the sequence is cut into 2N equal
chunks and rank r keeps chunks r and 2N-1-r, so under a causal mask every rank
has the same amount of work. Attention is a ring: each rank's K/V chunks travel
once around the group; at every hop each rank attends its query chunks to the
K/V chunks it holds (the block kernel masks by the chunks' global positions:
causal, sliding window, ALiBi), and the partial results merge exactly through
their log-sum-exp (online softmax). The backward is a second ring: dK/dV travel
with their K/V and reach their owner after the last hop; each block's gradients
come from the merged output and lse (``attention_block_grad``).

``sep`` = N (``sep_parallel_degree``): rank r keeps the contiguous part r of
every sequence; before attention an all-to-all trades the sequence split for a
head split (``[b, s/N, heads, d] -> [b, s, heads/N, d]``, KV heads likewise, so
heads and KV heads must divide by N) and the ordinary attention runs; after it
the inverse all-to-all.

The loss: each rank's mean over its kept labels is weighted by its share of the
group's kept labels, so the group sum (gradients, logged loss) is the mean over
all tokens, as one process computes it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import paddle
from paddle.autograd import PyLayer

from llmpre.errors import ConfigError
from llmpre.ops import reference
from llmpre.parallel.comm import Group, heads_to_seq, seq_to_heads


def seq_group(env) -> Group:
    """The sep / cp group of this rank (size 1 without them)."""
    return env.groups.get("seq") or Group([env.rank], None, env.rank)


# ---- which positions a rank keeps ----------------------------------------------------
def local_positions(total: int, dims, index: int) -> np.ndarray:
    """The global positions (int64, in the order this rank holds them) of its part of
    a sequence of ``total`` tokens: cp chunks ``index`` and ``2 cp - 1 - index``, or
    sep's contiguous part ``index``."""
    if dims.cp > 1:
        c = total // (2 * dims.cp)
        first, second = index, 2 * dims.cp - 1 - index
        return np.concatenate([np.arange(first * c, (first + 1) * c),
                               np.arange(second * c, (second + 1) * c)]).astype(np.int64)
    part = total // dims.sep
    return np.arange(index * part, (index + 1) * part, dtype=np.int64)


def keep_own_part(inputs, labels, env):
    """``inputs``, ``labels`` ``[batch, seq]`` -> this rank's part of each sequence."""
    dims = env.dims
    if dims.seq_parallel_size == 1:
        return inputs, labels
    keep = paddle.to_tensor(local_positions(inputs.shape[1], dims, seq_group(env).index))
    return paddle.index_select(inputs, keep, axis=1), paddle.index_select(labels, keep, axis=1)


# ---- the loss ------------------------------------------------------------------------------
def wrap_loss(loss_fn, group: Group, ignore_index: int = -100):
    """``loss_fn`` (mean over kept labels) times this rank's share of the group's kept
    labels: summed over the group it is the mean over every token of the sequences."""
    if group.size == 1:
        return loss_fn

    def loss(logits, labels):
        local = loss_fn(logits, labels)
        kept = (labels != ignore_index).astype("float32").sum()
        total = kept.detach().clone()
        group.all_reduce(total)
        return local * (kept / total.clip(min=1.0))
    return loss


# ---- ring attention --------------------------------------------------------------------
def block_functions(ops):
    """``(forward, backward)`` of one attention block (``reference.attention_block`` and
    ``attention_block_grad``'s contract): the block ops when the model's attention is the
    fused one and this build has them, for the tensors their kernels take (the op table's
    row of flash attention: CPU fp32/bf16; on a GPU bf16/fp16 with a CUDA build), else the
    reference."""
    from llmpre.ops import _library, fused

    fused_attention = any(impl.startswith("llmpre_flash_attention") for op, impl in ops.names if op == "attention")
    if not (fused_attention and fused.available("llmpre_flash_attention_block")
            and fused.available("llmpre_flash_attention_block_bwd")):
        return reference.attention_block, reference.attention_block_grad
    row = fused.TABLE["flash_attention"]
    cuda = "flash_attention" in _library.load().cuda_ops

    def takes(q) -> bool:
        device = "cpu" if q.place.is_cpu_place() else "gpu" if q.place.is_gpu_place() and cuda else None
        return device is not None and row.takes(device, q.dtype)

    def forward(q, *args, **kw):
        return (fused.flash_attention_block if takes(q) else reference.attention_block)(q, *args, **kw)

    def backward(q, *args, **kw):
        return (fused.flash_attention_block_grad if takes(q) else reference.attention_block_grad)(q, *args, **kw)
    return forward, backward


@dataclasses.dataclass
class _Ring:
    group: Group
    forward: object
    backward: object
    causal: bool
    window: int | None
    alibi: object
    scale: float | None

    def visible(self, qi: int, kj: int, c: int) -> bool:
        """Does any query of chunk ``qi`` see any key of chunk ``kj`` (chunks of ``c``)?"""
        if self.causal and kj > qi:
            return False
        return not (self.window is not None and kj * c + c - 1 <= qi * c - self.window)

    def pairs(self, step: int, c: int):
        """(local q half, local k half, offset) of the blocks to compute at ring ``step``."""
        n, r = self.group.size, self.group.index
        src = (r - step) % n
        q_chunks, k_chunks = (r, 2 * n - 1 - r), (src, 2 * n - 1 - src)
        for a, qi in enumerate(q_chunks):
            for b, kj in enumerate(k_chunks):
                if self.visible(qi, kj, c):
                    yield a, b, (qi - kj) * c

    def kw(self):
        return dict(causal=self.causal, window=self.window, alibi_slopes=self.alibi, scale=self.scale)


def _merge(out, lse, o, l):
    """Two partial softmax results over disjoint keys -> one (fp32; -inf lse = no key)."""
    if out is None:
        return o, l
    m = paddle.maximum(lse, l)
    m = paddle.where(paddle.isfinite(m), m, paddle.zeros_like(m))
    ea, eb = paddle.exp(lse - m), paddle.exp(l - m)                        # [b, h, sq]
    s = ea + eb
    some = s > 0
    wa = paddle.where(some, ea / s, paddle.zeros_like(s)).transpose([0, 2, 1]).unsqueeze(-1)
    wb = paddle.where(some, eb / s, paddle.zeros_like(s)).transpose([0, 2, 1]).unsqueeze(-1)
    return out * wa + o * wb, m + paddle.log(s)                            # [b, sq, h, dv], [b, h, sq]


def _shift(group: Group, tensors: list) -> list:
    """Every tensor of the previous ring member, in one exchange."""
    flat = paddle.concat([t.reshape([-1]) for t in tensors])
    got = group.ring_shift(flat)
    out, pos = [], 0
    for t in tensors:
        n = int(np.prod(t.shape))
        out.append(got[pos:pos + n].reshape(t.shape))
        pos += n
    return out


class _RingAttention(PyLayer):
    @staticmethod
    def forward(ctx, q, k, v, ring):
        c = q.shape[1] // 2
        n = ring.group.size
        halves = lambda x, a: x[:, a * c:(a + 1) * c]      # noqa: E731
        outs, lses = [None, None], [None, None]
        kk, vv = k, v
        for step in range(n):
            for a, b, offset in ring.pairs(step, c):
                o, l = ring.forward(halves(q, a), halves(kk, b), halves(vv, b), offset, **ring.kw())
                outs[a], lses[a] = _merge(outs[a], lses[a], o.astype("float32"), l)
            if step < n - 1:
                kk, vv = _shift(ring.group, [kk, vv])
        out = paddle.concat(outs, axis=1)                                   # [b, 2c, h, dv] fp32
        lse = paddle.concat(lses, axis=2)                                   # [b, h, 2c]
        ctx.ring = ring
        ctx.save_for_backward(q, k, v, out, lse)
        return out.astype(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensor()
        ring = ctx.ring
        c = q.shape[1] // 2
        n = ring.group.size
        halves = lambda x, a: x[:, a * c:(a + 1) * c]      # noqa: E731
        lse_half = lambda a: lse[:, :, a * c:(a + 1) * c]  # noqa: E731
        dq = [paddle.zeros(halves(q, a).shape, "float32") for a in range(2)]
        dk = paddle.zeros(k.shape, "float32")
        dv = paddle.zeros(v.shape, "float32")
        kk, vv = k, v
        for step in range(n):
            dks, dvs = [halves(dk, 0), halves(dk, 1)], [halves(dv, 0), halves(dv, 1)]
            for a, b, offset in ring.pairs(step, c):
                gq, gk, gv = ring.backward(halves(q, a), halves(kk, b), halves(vv, b), halves(out, a),
                                           lse_half(a), halves(dout, a), offset, **ring.kw())
                dq[a] = dq[a] + gq.astype("float32")
                dks[b] = dks[b] + gk.astype("float32")
                dvs[b] = dvs[b] + gv.astype("float32")
            dk, dv = paddle.concat(dks, axis=1), paddle.concat(dvs, axis=1)
            if step < n - 1:
                kk, vv, dk, dv = _shift(ring.group, [kk, vv, dk, dv])
            else:                                       # one more hop: home to their owner
                dk, dv = _shift(ring.group, [dk, dv])
        return (paddle.concat(dq, axis=1).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype))


def ring_attention(group: Group, forward, backward):
    """``attention(q, k, v, causal, window, alibi_slopes, scale)`` over the cp group:
    q ``[b, 2c, heads, d]``, k/v ``[b, 2c, kv_heads, d]`` hold chunks r and 2N-1-r."""
    def attention(q, k, v, causal=True, window=None, alibi_slopes=None, scale=None):
        ring = _Ring(group, forward, backward, bool(causal), window, alibi_slopes, scale)
        return _RingAttention.apply(q, k, v, ring)
    return attention


# ---- sep (Ulysses) ------------------------------------------------------------------------
def sep_attention(inner, group: Group):
    """``inner`` attention on this rank's heads of the whole sequence (all-to-all around it)."""
    def attention(q, k, v, causal=True, window=None, alibi_slopes=None, **kw):
        heads = q.shape[2] // group.size
        if alibi_slopes is not None:
            alibi_slopes = alibi_slopes[group.index * heads:(group.index + 1) * heads]
        out = inner(seq_to_heads(q, group), seq_to_heads(k, group), seq_to_heads(v, group),
                    causal=causal, window=window, alibi_slopes=alibi_slopes, **kw)
        return heads_to_seq(out, group)                                     # [b, s/N, heads, dv]
    return attention


# ---- applying it to a model ----------------------------------------------------------------
def check_supported(config, dims) -> None:
    """One error naming what a model cannot do under sep/cp."""
    if dims.seq_parallel_size == 1:
        return
    what = "context_parallel_degree" if dims.cp > 1 else "sep_parallel_degree"
    why = None
    if config.moe is not None or config.mla:
        why = "not built for mixture-of-experts or latent-attention models"
    elif config.localized_filtering:
        why = "Yuan2's localized filtering mixes neighbouring positions across the split"
    elif config.position not in ("rope", "alibi"):
        why = f"position encoding '{config.position}' is not split by position ids here"
    if why:
        raise ConfigError(f"{config.model_type}: {what} > 1 is not available: {why}; remove it")
    if dims.cp > 1 and dims.recompute and dims.recompute_granularity == "core_attn":
        raise ConfigError("context_parallel_degree > 1 with recompute_granularity core_attn: ring "
                          "attention keeps only its output and lse; use full or full_attn")


def apply(model, env) -> None:
    """Swap every kept layer's attention for the ring (cp) or the all-to-all wrapped
    attention (sep), and make ``model.context`` give the positions of this rank's part."""
    dims = env.dims
    if dims.seq_parallel_size == 1:
        return
    check_supported(model.config, dims)
    group = seq_group(env)
    for layer in model.layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None:                   # another pipeline stage's layer
            continue
        if getattr(attn, "dropout_p", 0.0) > 0:   # that path computes attention itself (models.dropout)
            raise ConfigError(f"{model.config.model_type}: attention dropout "
                              f"(attention_probs_dropout_prob {attn.dropout_p}) is not built for "
                              "sep_parallel_degree / context_parallel_degree > 1; set it to 0")
        if dims.cp > 1:
            new = ring_attention(group, *block_functions(attn.ops))
        else:
            new = sep_attention(attn.ops.attention, group)
        attn.ops = dataclasses.replace(attn.ops, attention=new)
    original = model.context

    def context(batch, seq, position_ids=None):
        if position_ids is None:           # this rank's part of a sequence of seq * N tokens
            position_ids = paddle.to_tensor(local_positions(seq * group.size, dims, group.index)).unsqueeze(0)
        return original(batch, seq, position_ids)
    model.context = context
