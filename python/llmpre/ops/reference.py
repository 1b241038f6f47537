"""Pure-Paddle reference implementations of the decoder's hot ops.

Every fused kernel llmpre adds later is tested against these functions, so
they favour clarity and fp32 accumulation over speed.  They run on any device
Paddle runs on.  Layouts follow PaddleNLP's flash-attention path:
activations are ``[batch, seq, heads, head_dim]``.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F


def rms_norm(x: paddle.Tensor, weight: paddle.Tensor, eps: float) -> paddle.Tensor:
    """Root-mean-square layer norm over the last axis.

    x: ``[..., hidden]`` any float dtype; weight: ``[hidden]``.
    The statistics and the normalisation are computed in fp32, the result is
    cast back to ``x.dtype`` and then scaled by ``weight``:
    ``y = weight * (x / sqrt(mean(x^2) + eps))``.  Returns ``[..., hidden]``.
    """
    x32 = x.astype("float32")
    variance = x32.pow(2).mean(axis=-1, keepdim=True)  # [..., 1]
    return weight * (x32 * paddle.rsqrt(variance + eps)).astype(x.dtype)


def rotate_half(x: paddle.Tensor) -> paddle.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last axis (pairs ``i`` and ``i + d/2``)."""
    x1, x2 = x.chunk(2, axis=-1)
    return paddle.concat([-x2, x1], axis=-1)


def rotary_tables(cos: paddle.Tensor, sin: paddle.Tensor, seq: int,
                  position_ids: paddle.Tensor | None):
    """Rows of the ``[positions, r/2]`` tables for a sequence, shaped to broadcast
    over ``[batch, seq, heads, r/2]``: ``[1, seq, 1, r/2]`` or ``[batch, seq, 1, r/2]``."""
    if position_ids is None:
        return cos[:seq].unsqueeze([0, 2]), sin[:seq].unsqueeze([0, 2])
    ids = position_ids.reshape([-1, seq])                                   # [b, s]
    c = paddle.gather(cos, ids.reshape([-1])).reshape([ids.shape[0], seq, 1, -1])
    s = paddle.gather(sin, ids.reshape([-1])).reshape([ids.shape[0], seq, 1, -1])
    return c, s


def _rotate(x: paddle.Tensor, c: paddle.Tensor, s: paddle.Tensor, interleaved: bool):
    r = 2 * c.shape[-1]
    rot, rest = (x, None) if r == x.shape[-1] else (x[..., :r], x[..., r:])
    if interleaved:   # pairs (2i, 2i+1)
        even, odd = rot[..., 0::2], rot[..., 1::2]                          # [..., r/2]
        out = paddle.stack([even * c - odd * s, odd * c + even * s], axis=-1)
        out = out.reshape(rot.shape)                                         # [..., r]
    else:             # rotate_half: pairs (i, i + r/2)
        a, b = rot[..., : r // 2], rot[..., r // 2:]
        out = paddle.concat([a * c - b * s, b * c + a * s], axis=-1)       # [..., r]
    return out if rest is None else paddle.concat([out, rest], axis=-1)


def rotary(q: paddle.Tensor, k: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor,
           position_ids: paddle.Tensor | None = None, interleaved: bool = False):
    """Rotary position embedding applied to q and k.

    q: ``[batch, seq, heads, head_dim]``; k: ``[batch, seq, kv_heads, head_dim]``.
    cos, sin: ``[positions, r/2]`` float32 tables of ``cos(angle)``/``sin(angle)``
    per rotated pair, with ``r <= head_dim`` the rotary dimension (partial rotary
    rotates the first ``r`` features and passes the rest through). Any RoPE
    scaling variant is just different tables. position_ids: ``[batch, seq]``
    integer positions, default ``0..seq-1``.
    Layout: ``interleaved=False`` is HF's rotate_half (pair ``i`` is features
    ``(i, i + r/2)``); ``interleaved=True`` pairs ``(2i, 2i+1)`` (GPT-J/ChatGLM).
    Each pair ``(a, b)`` becomes ``(a cos - b sin, b cos + a sin)``.
    Returns ``(q_rotated, k_rotated)`` with the input shapes and dtypes.
    """
    c, s = rotary_tables(cos, sin, q.shape[1], position_ids)
    c, s = c.astype(q.dtype), s.astype(q.dtype)
    return _rotate(q, c, s, interleaved), _rotate(k, c, s, interleaved)


def repeat_kv(x: paddle.Tensor, groups: int) -> paddle.Tensor:
    """``[b, s, kv_heads, d] -> [b, s, kv_heads * groups, d]``; head h reads KV head ``h // groups``."""
    return x if groups == 1 else x.repeat_interleave(groups, axis=2)


def attention_bias(sq: int, sk: int, causal: bool, window: int | None,
                   alibi_slopes: paddle.Tensor | None, offset: int | None = None) -> paddle.Tensor | None:
    """Additive fp32 bias ``[heads or 1, sq, sk]`` for masks and ALiBi, or None.

    Query ``i`` sits at key position ``i + offset``; the default offset ``sk - sq``
    makes the queries the last ``sq`` positions (a block of ring attention passes
    the distance between its query and key chunks). Causal hides keys after it; ``window`` keeps only the ``window``
    most recent keys (``pos - window < j <= pos``, Mistral's sliding window);
    ALiBi adds ``slope_h * (j - pos)`` (PaddleNLP/Baichuan/Bloom add
    ``slope_h * j``, which gives the same softmax since it differs per row by a
    constant).
    """
    if not causal and window is None and alibi_slopes is None:
        return None
    pos = paddle.arange(sq, dtype="int64").unsqueeze(1) + (sk - sq if offset is None else offset)  # [sq, 1]
    j = paddle.arange(sk, dtype="int64").unsqueeze(0)                       # [1, sk]
    visible = paddle.ones([sq, sk], dtype="bool")
    if causal:
        visible = visible & (j <= pos)
    if window is not None:
        visible = visible & (j > pos - window)
    bias = paddle.where(visible, paddle.zeros([sq, sk]), paddle.full([sq, sk], float("-inf")))
    bias = bias.unsqueeze(0)                                                # [1, sq, sk]
    if alibi_slopes is not None:
        dist = (j - pos).astype("float32").unsqueeze(0)                    # [1, sq, sk]
        bias = bias + alibi_slopes.astype("float32").reshape([-1, 1, 1]) * dist  # [h, sq, sk]
    return bias


def attention_math(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, causal: bool = True,
                   window: int | None = None, alibi_slopes: paddle.Tensor | None = None,
                   scale: float | None = None) -> paddle.Tensor:
    """Scaled dot-product attention written out: ``softmax(scale * q k^T + bias) v``.

    q: ``[batch, seq_q, heads, head_dim]``; k, v: ``[batch, seq_k, kv_heads, head_dim]``
    (v may have its own head_dim) with ``heads % kv_heads == 0`` (grouped-query
    attention: query head h uses KV head ``h // (heads / kv_heads)``). Scores and
    softmax are fp32. ``scale`` defaults to ``1/sqrt(head_dim)``; ``window`` and
    ``alibi_slopes`` (``[heads]`` fp32) as in :func:`attention_bias`. A query
    that sees no key (possible only with a window shorter than nothing) gets 0.
    Returns ``[batch, seq_q, heads, v_head_dim]`` in q's dtype.
    """
    groups = q.shape[2] // k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qt = (q * scale).transpose([0, 2, 1, 3])                # [b, h, sq, d]
    kt = repeat_kv(k, groups).transpose([0, 2, 1, 3])       # [b, h, sk, d]
    vt = repeat_kv(v, groups).transpose([0, 2, 1, 3])       # [b, h, sk, dv]
    scores = paddle.matmul(qt, kt, transpose_y=True).astype("float32")  # [b, h, sq, sk]
    bias = attention_bias(q.shape[1], k.shape[1], causal, window, alibi_slopes)
    if bias is not None:
        scores = scores + bias                              # [b, h, sq, sk]
    probs = F.softmax(scores, axis=-1).astype(q.dtype)     # [b, h, sq, sk]
    return paddle.matmul(probs, vt).transpose([0, 2, 1, 3])  # [b, sq, h, dv]


def attention_sdpa(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, causal: bool = True) -> paddle.Tensor:
    """:func:`attention_math`'s contract for the plain case (no window, no ALiBi,
    default scale), through Paddle's ``scaled_dot_product_attention``."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, training=False)


def _block_scores(q, k, offset, causal, window, alibi_slopes, scale):
    """fp32 ``[b, h, sq, sk]`` masked scores of a block and the fp32 ``[b, h, sk, d]`` keys."""
    groups = q.shape[2] // k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qt = q.astype("float32").transpose([0, 2, 1, 3])                        # [b, h, sq, d]
    kt = repeat_kv(k.astype("float32"), groups).transpose([0, 2, 1, 3])     # [b, h, sk, d]
    scores = paddle.matmul(qt, kt, transpose_y=True) * scale               # [b, h, sq, sk]
    bias = attention_bias(q.shape[1], k.shape[1], causal, window, alibi_slopes, offset)
    return (scores if bias is None else scores + bias), qt, kt, scale


def _probabilities(scores, lse):
    """``exp(scores - lse)``, 0 for rows whose lse is -inf (they see no key)."""
    finite = paddle.isfinite(lse).unsqueeze(-1)                            # [b, h, sq, 1]
    safe = paddle.where(finite, lse.unsqueeze(-1), paddle.zeros_like(lse.unsqueeze(-1)))
    return paddle.where(finite, paddle.exp(scores - safe), paddle.zeros_like(scores))


def attention_block(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, offset: int, causal: bool = True,
                    window: int | None = None, alibi_slopes: paddle.Tensor | None = None,
                    scale: float | None = None):
    """One block of ring attention: :func:`attention_math` with query ``i`` at key
    position ``i + offset``, returning ``(out, lse)``: out ``[batch, seq_q, heads,
    v_head_dim]`` fp32 and lse ``[batch, heads, seq_q]`` fp32 (natural-log sum of
    exp of the masked scores; -inf, with out 0, for a query that sees no key of the
    block). Blocks over disjoint keys merge exactly through their lse
    (``llmpre.parallel.context``). No autograd: see :func:`attention_block_grad`."""
    with paddle.no_grad():
        scores, _, _, _ = _block_scores(q, k, offset, causal, window, alibi_slopes, scale)
        # written out: paddle.logsumexp gives nan for a row with no visible key (-inf wanted)
        m = scores.max(axis=-1, keepdim=True)                               # [b, h, sq, 1]
        seen = paddle.isfinite(m)
        m = paddle.where(seen, m, paddle.zeros_like(m))
        lse = m + paddle.exp(scores - m).sum(axis=-1, keepdim=True).log()
        lse = paddle.where(seen, lse, paddle.full_like(lse, float("-inf"))).squeeze(-1)  # [b, h, sq]
        probs = _probabilities(scores, lse)                                 # [b, h, sq, sk]
        vt = repeat_kv(v.astype("float32"), q.shape[2] // k.shape[2]).transpose([0, 2, 1, 3])
        out = paddle.matmul(probs, vt).transpose([0, 2, 1, 3])              # [b, sq, h, dv]
    return out, lse


def attention_block_grad(q, k, v, out, lse, dout, offset: int, causal: bool = True, window=None,
                         alibi_slopes=None, scale=None):
    """Gradients ``(dq, dk, dv)`` (fp32, shapes of q, k, v) of one block, given the
    *merged* ``out`` and ``lse`` of the whole row (all blocks) and its ``dout``:
    ``P = exp(S - lse)``, ``dV = P^T dO``, ``dS = P * (dO V^T - rowsum(dO * O))``,
    ``dQ = scale dS K``, ``dK = scale dS^T Q``, summed over the query heads that
    share a KV head. Summing the blocks' dq (and each key block's dk, dv over the
    query blocks) gives the gradient of the whole attention."""
    with paddle.no_grad():
        groups = q.shape[2] // k.shape[2]
        scores, qt, kt, scale = _block_scores(q, k, offset, causal, window, alibi_slopes, scale)
        probs = _probabilities(scores, lse)                                 # [b, h, sq, sk]
        vt = repeat_kv(v.astype("float32"), groups).transpose([0, 2, 1, 3])  # [b, h, sk, dv]
        do = dout.astype("float32").transpose([0, 2, 1, 3])                 # [b, h, sq, dv]
        o = out.astype("float32").transpose([0, 2, 1, 3])                   # [b, h, sq, dv]
        dv = paddle.matmul(probs, do, transpose_x=True)                     # [b, h, sk, dv]
        dp = paddle.matmul(do, vt, transpose_y=True)                        # [b, h, sq, sk]
        ds = probs * (dp - (do * o).sum(axis=-1, keepdim=True))             # [b, h, sq, sk]
        dq = paddle.matmul(ds, kt) * scale                                  # [b, h, sq, d]
        dk = paddle.matmul(ds, qt, transpose_x=True) * scale                # [b, h, sk, d]

        def per_kv(x):   # [b, h, sk, d] -> [b, sk, kv_heads, d], summed over each group
            b, h, s, d = x.shape
            return x.reshape([b, h // groups, groups, s, d]).sum(axis=2).transpose([0, 2, 1, 3])
        return dq.transpose([0, 2, 1, 3]), per_kv(dk), per_kv(dv)


# Which of the two is the default `attention`: measured on the 2-core CPU box
# (Paddle 3.3.1, fp32, OMP_NUM_THREADS=1, the other core busy), llama-tiny training
# shape q [8, 256, 4, 64], k/v [8, 256, 2, 64], forward + backward, 3 runs of 22 calls:
# attention_math median 184-233 ms (min 168-195), attention_sdpa median 220-262 ms
# (min 182-202).  Outputs agree to 0.0 in fp32.  The written-out version wins by ~10%
# and covers windows, ALiBi and custom scales.
attention = attention_math


def swiglu(gate: paddle.Tensor, up: paddle.Tensor) -> paddle.Tensor:
    """SwiGLU gate: ``silu(gate) * up``; both ``[..., intermediate]``, same shape out."""
    return F.silu(gate) * up


def cross_entropy(logits: paddle.Tensor, labels: paddle.Tensor, ignore_index: int = -100) -> paddle.Tensor:
    """Mean token cross-entropy over positions whose label is not ``ignore_index``.

    logits: ``[..., vocab]`` any float dtype (computed in fp32); labels: ``[...]``
    integer, the same leading shape.  Returns an fp32 scalar; 0 when every label is
    ignored (rather than 0/0).
    """
    vocab = logits.shape[-1]
    flat_logits = logits.reshape([-1, vocab]).astype("float32")  # [n, vocab]
    flat_labels = labels.reshape([-1]).astype("int64")           # [n]
    per_token = F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index, reduction="none")  # [n]
    keep = (flat_labels != ignore_index).astype("float32")       # [n]
    return (per_token.reshape([-1]) * keep).sum() / keep.sum().clip(min=1.0)


def grouped_mlp(x: paddle.Tensor, offsets: paddle.Tensor, w_gate, w_up, w_down,
                index: paddle.Tensor | None = None) -> paddle.Tensor:
    """SwiGLU expert MLPs over rows grouped by expert: rows ``offsets[e]:offsets[e+1]``
    go through expert ``e``, ``down(silu(row W_gate[e]) * row W_up[e])``.

    x: ``[tokens, hidden]``; index: ``[m]`` int64, row ``r`` is ``x[index[r]]`` (None:
    the rows are x's own, ``m = tokens``); the rows are sorted by expert. offsets:
    ``[E + 1]`` int64, non-decreasing, ``offsets[0] = 0``; rows ``offsets[E]:`` (tokens
    dropped by a capacity limit) get 0. w_gate, w_up: E tensors ``[hidden, inter]`` each;
    w_down: E ``[inter, hidden]`` (Paddle's ``[in, out]`` Linear layout, one per expert).
    Returns ``[m, hidden]`` in x's dtype; x's gradient sums each token's rows.

    This reference gathers the rows (``paddle.gather``) and reads the E + 1 offsets to
    the host once per call (a Python loop over experts with static slices);
    :func:`llmpre.ops.fused.grouped_mlp` gathers while it packs its GEMM operands,
    reads the offsets inside its kernel and never synchronises.
    """
    if index is not None:
        x = paddle.gather(x, index)                                              # [m, h]
    bounds = [int(v) for v in offsets.tolist()]
    counts = [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:])]
    used = [e for e, c in enumerate(counts) if c > 0]
    dropped = x.shape[0] - bounds[-1]
    # split, not slicing: a slice's backward writes a zero tensor of the whole input
    sections = [counts[e] for e in used] + ([dropped] if dropped else [])
    pieces = paddle.split(x, sections, axis=0) if len(sections) > 1 else [x]
    parts = []
    for e, rows in zip(used, pieces):                                            # rows [n_e, h]
        act = swiglu(paddle.matmul(rows, w_gate[e]), paddle.matmul(rows, w_up[e]))  # [n_e, I]
        parts.append(paddle.matmul(act, w_down[e]))                             # [n_e, h]
    if dropped:
        parts.append(paddle.zeros([dropped, x.shape[1]], dtype=x.dtype))
    return paddle.concat(parts, axis=0) if len(parts) > 1 else parts[0]


def adamw_(param: paddle.Tensor, grad: paddle.Tensor, exp_avg: paddle.Tensor, exp_avg_sq: paddle.Tensor, *,
           lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int,
           grad_scale: float = 1.0, decayed_runs=()) -> None:
    """One AdamW step (decoupled weight decay, bias-corrected moments, as PyTorch's AdamW)
    in place on flat fp32 buffers ``[n]``: with ``g = grad * grad_scale``,

        m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
        p <- p - (lr wd) p                       (elements in ``decayed_runs``, [begin, end) pairs)
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    param, exp_avg, exp_avg_sq are updated; grad's values are spent (it is scratch here).
    The update touches only these buffers and one scratch buffer (a new large tensor costs a
    fresh allocation, which on a CPU means page faults, every step); about 20 elementwise
    passes, which :func:`llmpre.ops.fused.adamw_` does in one.
    """
    g = grad
    if grad_scale != 1.0:
        g.scale_(grad_scale)
    s = paddle.empty_like(g)                                   # scratch
    paddle.assign(g, output=s)
    s.multiply_(g).scale_(1.0 - beta2)                         # (1 - b2) g^2
    exp_avg_sq.scale_(beta2).add_(s)
    exp_avg.scale_(beta1).add_(g.scale_(1.0 - beta1))          # g is spent from here on
    if weight_decay:                                           # p -= (lr wd) p where decayed:
        s.fill_(0.0)                                           # not p *= fl(1 - lr wd), whose
        for a, b in decayed_runs:                              # factor rounds to steps of 2^-24
            s[a:b] = lr * weight_decay                         # (1% of lr wd = 2e-6)
        param.subtract_(s.multiply_(param))
    paddle.assign(exp_avg_sq, output=s)                        # denominator
    s.sqrt_().scale_(1.0 / math.sqrt(1.0 - beta2 ** step), bias=eps)
    paddle.assign(exp_avg, output=g)
    param.subtract_(g.divide_(s).scale_(lr / (1.0 - beta1 ** step)))


def moe_combine(y: paddle.Tensor, pos: paddle.Tensor, weights: paddle.Tensor) -> paddle.Tensor:
    """The MoE combine: ``out[t] = sum_j weights[t, j] * y[pos[t, j]]``.

    y: ``[rows, hidden]`` (the experts' outputs, rows sorted by expert); pos: ``[n, k]``
    int64, the row of each (token, slot) pair, distinct; weights: ``[n, k]`` routing
    weights (cast to y's dtype). Returns ``[n, hidden]``; gradients flow to y and weights.
    """
    n, k = pos.shape
    back = paddle.gather(y, pos.reshape([-1])).reshape([n, k, -1])                 # [n, k, h] (token, slot)
    # sum_k w y as one batched [1, k] x [k, h] product (a multiply and a sum cost ~1.6x more)
    return paddle.bmm(weights.astype(y.dtype).unsqueeze(1), back).squeeze(1)      # [n, h]


def moe_expert_loop(x: paddle.Tensor, weights: paddle.Tensor, experts: paddle.Tensor, expert_fns) -> paddle.Tensor:
    """The per-expert MoE combine llmpre used before the grouped path (kept as a
    reference for tests and benchmarks): for each expert ``e``, find its tokens
    with ``nonzero`` (a host synchronisation per expert), run ``expert_fns[e]`` on
    them and add ``weight * output`` back. x ``[n, h]``, weights ``[n, k]`` fp32,
    experts ``[n, k]`` int64 -> ``[n, h]``."""
    out = paddle.zeros_like(x)
    for e, expert in enumerate(expert_fns):
        chosen = experts == e                                                    # [n, k]
        rows = paddle.nonzero(chosen.any(-1)).reshape([-1])                      # tokens routed to e
        if rows.shape[0] == 0:
            continue
        w = (weights * chosen.astype(weights.dtype)).sum(-1)                     # [n]
        y = expert(paddle.gather(x, rows)) * paddle.gather(w, rows).unsqueeze(-1).astype(x.dtype)
        out = paddle.index_add(out, rows, 0, y)                                  # [n, h]
    return out
