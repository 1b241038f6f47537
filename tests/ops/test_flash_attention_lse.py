"""Attention blocks with log-sum-exp out (and the merged lse in, for the backward), the
entry points of ring attention (llmpre.parallel.context): blocks over disjoint key
chunks, each masked by the chunks' global positions, merge into the whole attention.

Bound (STYLE.md habit 4): against an fp64 reference, the merged fp32 result's error is
at most 2x that of the naive fp32 attention (``attention_math`` in fp32) plus an atol
of 1e-6 (fp32 rounding of values O(1))."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from llmpre.ops import reference
from llmpre.parallel import context


def _inputs(seq, heads=4, kv=2, d=16, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, seq, heads, d))
    k = rng.standard_normal((batch, seq, kv, d))
    v = rng.standard_normal((batch, seq, kv, d))
    dout = rng.standard_normal((batch, seq, heads, d))
    return q, k, v, dout


def _grads(q, k, v, dout, dtype, **kw):
    """Output and (dq, dk, dv) of the whole attention by autograd, in ``dtype``."""
    ts = [paddle.to_tensor(x.astype(dtype), stop_gradient=False) for x in (q, k, v)]
    out = reference.attention_math(*ts, **kw)
    (out * paddle.to_tensor(dout.astype(dtype))).sum().backward()
    return [out.numpy().astype(np.float64)] + [t.grad.numpy().astype(np.float64) for t in ts]


def _blocks(q, k, v, dout, chunks, causal, window, alibi=None):
    """Forward by blocks of ``chunks`` equal key/query chunks merged through lse, then
    every block's gradient from the merged out and lse (fp32)."""
    seq = q.shape[1]
    c = seq // chunks
    t = lambda x: paddle.to_tensor(x.astype(np.float32))      # noqa: E731
    part = lambda x, i: t(x[:, i * c:(i + 1) * c])             # noqa: E731
    ring = context._Ring(None, reference.attention_block, reference.attention_block_grad,
                         causal, window, alibi, None)
    outs, lses = [], []
    for i in range(chunks):
        out = lse = None
        for j in range(chunks):
            if ring.visible(i, j, c):
                o, l = reference.attention_block(part(q, i), part(k, j), part(v, j), (i - j) * c, **ring.kw())
                out, lse = context._merge(out, lse, o, l)
        outs.append(out)
        lses.append(lse)
    dq = np.zeros(q.shape)
    dk = np.zeros(k.shape)
    dv = np.zeros(v.shape)
    for i in range(chunks):
        for j in range(chunks):
            if ring.visible(i, j, c):
                gq, gk, gv = reference.attention_block_grad(
                    part(q, i), part(k, j), part(v, j), outs[i], lses[i], part(dout, i), (i - j) * c, **ring.kw())
                dq[:, i * c:(i + 1) * c] += gq.numpy()
                dk[:, j * c:(j + 1) * c] += gk.numpy()
                dv[:, j * c:(j + 1) * c] += gv.numpy()
    return [np.concatenate([o.numpy() for o in outs], axis=1).astype(np.float64), dq, dk, dv]


@pytest.mark.parametrize("causal,window,alibi", [(True, None, False), (True, 37, False), (True, 5, False),
                                                 (False, None, False), (True, 50, True)],
                         ids=["causal", "window37", "window5", "full", "window50-alibi"])
def test_blocks_merge_into_the_whole_attention(causal, window, alibi):
    q, k, v, dout = _inputs(96)
    slopes = None
    kw = dict(causal=causal, window=window)
    if alibi:
        from llmpre.models.layers import alibi_slopes

        slopes = alibi_slopes(4)
        kw["alibi_slopes"] = slopes
    exact = _grads(q, k, v, dout, "float64", **{**kw, "alibi_slopes": slopes.astype("float64")} if alibi else kw)
    naive = _grads(q, k, v, dout, "float32", **kw)
    got = _blocks(q, k, v, dout, 4, causal, window, slopes)
    for name, e, n, g in zip(("out", "dq", "dk", "dv"), exact, naive, got):
        err, bound = np.abs(g - e).max(), 2 * np.abs(n - e).max() + 1e-6
        assert err <= bound, (name, err, bound)


def test_a_query_that_sees_no_key_of_a_block_gets_lse_minus_inf():
    q, k, v, _ = _inputs(8)
    t = lambda x: paddle.to_tensor(x.astype(np.float32))      # noqa: E731
    # queries at positions 8..15 of keys 0..7 with a window of 4: every key is out of reach
    out, lse = reference.attention_block(t(q), t(k), t(v), 12, causal=True, window=4)
    assert np.isneginf(lse.numpy()).all() and (out.numpy() == 0).all()
