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

from llmpre.ops import fused, reference
from llmpre.parallel import context

REFERENCE = (reference.attention_block, reference.attention_block_grad)
FUSED = (fused.flash_attention_block, fused.flash_attention_block_grad)
IMPLS = [pytest.param(REFERENCE, id="reference"),
         pytest.param(FUSED, id="cpu-kernel", marks=pytest.mark.skipif(
             not fused.available("llmpre_flash_attention_block"),
             reason="this build of the op library has no llmpre_flash_attention_block (rebuild: "
                    "tools/dev_install.sh)"))]


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


def _blocks(q, k, v, dout, chunks, causal, window, alibi=None, impl=REFERENCE):
    """Forward by blocks of ``chunks`` equal key/query chunks merged through lse, then
    every block's gradient from the merged out and lse (fp32)."""
    seq = q.shape[1]
    c = seq // chunks
    t = lambda x: paddle.to_tensor(x.astype(np.float32))      # noqa: E731
    part = lambda x, i: t(x[:, i * c:(i + 1) * c])             # noqa: E731
    ring = context._Ring(None, *impl, causal, window, alibi, None)
    outs, lses = [], []
    for i in range(chunks):
        out = lse = None
        for j in range(chunks):
            if ring.visible(i, j, c):
                o, l = ring.forward(part(q, i), part(k, j), part(v, j), (i - j) * c, **ring.kw())
                out, lse = context._merge(out, lse, o, l)
        outs.append(out)
        lses.append(lse)
    dq = np.zeros(q.shape)
    dk = np.zeros(k.shape)
    dv = np.zeros(v.shape)
    for i in range(chunks):
        for j in range(chunks):
            if ring.visible(i, j, c):
                gq, gk, gv = ring.backward(
                    part(q, i), part(k, j), part(v, j), outs[i], lses[i], part(dout, i), (i - j) * c, **ring.kw())
                dq[:, i * c:(i + 1) * c] += gq.numpy()
                dk[:, j * c:(j + 1) * c] += gk.numpy()
                dv[:, j * c:(j + 1) * c] += gv.numpy()
    return [np.concatenate([o.numpy() for o in outs], axis=1).astype(np.float64), dq, dk, dv]


@pytest.mark.parametrize("causal,window,alibi", [(True, None, False), (True, 37, False), (True, 5, False),
                                                 (False, None, False), (True, 50, True)],
                         ids=["causal", "window37", "window5", "full", "window50-alibi"])
@pytest.mark.parametrize("impl", IMPLS)
def test_blocks_merge_into_the_whole_attention(impl, causal, window, alibi):
    q, k, v, dout = _inputs(96)
    slopes = None
    kw = dict(causal=causal, window=window)
    if alibi:
        from llmpre.models.layers import alibi_slopes

        slopes = alibi_slopes(4)
        kw["alibi_slopes"] = slopes
    exact = _grads(q, k, v, dout, "float64", **{**kw, "alibi_slopes": slopes.astype("float64")} if alibi else kw)
    naive = _grads(q, k, v, dout, "float32", **kw)
    got = _blocks(q, k, v, dout, 4, causal, window, slopes, impl)
    for name, e, n, g in zip(("out", "dq", "dk", "dv"), exact, naive, got):
        err, bound = np.abs(g - e).max(), 2 * np.abs(n - e).max() + 1e-6
        assert err <= bound, (name, err, bound)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_query_that_sees_no_key_of_a_block_gets_lse_minus_inf(impl):
    q, k, v, _ = _inputs(8)
    t = lambda x: paddle.to_tensor(x.astype(np.float32))      # noqa: E731
    # queries at positions 12..19 of keys 0..7 with a window of 4: every key is out of reach
    out, lse = impl[0](t(q), t(k), t(v), 12, causal=True, window=4)
    assert np.isneginf(lse.numpy()).all() and (out.numpy() == 0).all()


@pytest.mark.parametrize("impl", IMPLS[1:])
def test_kernel_block_bf16_within_twice_the_naive_bf16_error(impl):
    """bf16 storage: the kernel's merged blocks against fp64, within 2x the error of the
    naive attention on the bf16 inputs (fp32 math: Paddle's CPU has no bf16 matmul) with
    its output rounded to bf16, plus 1e-3 (about a quarter of bf16's 2^-8 step at O(1))."""
    q, k, v, dout = _inputs(64, seed=1)
    exact = _grads(q, k, v, dout, "float64", causal=True, window=None)
    ts = [paddle.to_tensor(x.astype(np.float32)).astype("bfloat16") for x in (q, k, v)]
    naive = reference.attention_math(*[t.astype("float32") for t in ts], causal=True)
    naive = naive.astype("bfloat16").astype("float32").numpy()
    c = 16
    outs = []
    for i in range(4):
        out = lse = None
        for j in range(i + 1):
            o, l = impl[0](ts[0][:, i * c:(i + 1) * c], ts[1][:, j * c:(j + 1) * c], ts[2][:, j * c:(j + 1) * c],
                           (i - j) * c, causal=True)
            out, lse = context._merge(out, lse, o.astype("float32"), l)
        outs.append(out.numpy())
    got = np.concatenate(outs, axis=1)
    err, bound = np.abs(got - exact[0]).max(), 2 * np.abs(naive - exact[0]).max() + 1e-3
    assert err <= bound, (err, bound)


def test_kernel_block_errors_name_the_op_and_the_shape():
    if not fused.available("llmpre_flash_attention_block"):
        pytest.skip("this build has no llmpre_flash_attention_block (rebuild: tools/dev_install.sh)")
    q = paddle.zeros([1, 4, 2, 8])
    with pytest.raises(ValueError, match="llmpre_flash_attention_block: `k` must be"):
        fused.flash_attention_block(q, paddle.zeros([1, 4, 2, 4]), paddle.zeros([1, 4, 2, 8]), 0)
    with pytest.raises(ValueError, match="llmpre_flash_attention_block_bwd: `lse` must be float32"):
        fused.flash_attention_block_grad(q, q, q, q, paddle.zeros([1, 2, 3]), q, 0)
