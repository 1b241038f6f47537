"""llmpre_flash_attention (the CPU flash-attention custom op) against float64
truth, for the output, the log-sum-exp and every gradient, in float32 and
bfloat16, with the error rule of tests/ops/fused_checks.py:

    max|kernel - truth| <= 2 * max|naive - truth| + 2 float32 ulps of max|truth|

"naive" is attention_math (Paddle's matmul + softmax) for float32 and, for
bfloat16 (Paddle's CPU build has no bf16 matmul), a numpy emulation of the same
graph run in bf16: every matmul output, the scaled q, the probabilities and
every gradient rounded to bf16, softmax and its gradient in fp32. The truth is
computed in float64 from the same dtype-rounded inputs. Also: masks (causal,
sliding windows down to 1 key, queries that see no key), GQA/MQA, ALiBi,
custom scales, head dims 64/128/80/72, v_head_dim != head_dim, argument
errors, bitwise determinism across runs and thread counts, and the portable
(non-AVX2) code path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest

import llmpre.ops as ops
from llmpre.ops import reference as R
from . import fused_checks as C

OP = "llmpre_flash_attention"
pytestmark = pytest.mark.skipif(not ops.available(OP),
                                reason=f"{OP} is not usable in this build: {ops.status()['unavailable']}")

DTYPES = ["float32", "bfloat16"]


def _attn(q, k, v, causal=True, window=None, slopes=None, scale=None):
    """(out, lse) straight from the op (llmpre.ops.flash_attention returns out only)."""
    return paddle._C_ops._run_custom_op(OP, q, k, v, slopes, bool(causal), -1 if window is None else window,
                                        0.0 if scale is None else float(scale), 0)


# ----------------------------------------------------------------------------- float64 truth
def _visible(sq, sk, causal, window):
    pos = np.arange(sq)[:, None] + (sk - sq)        # query i sits at key position i + sk - sq
    j = np.arange(sk)[None, :]
    vis = np.ones((sq, sk), dtype=bool)
    if causal:
        vis &= j <= pos
    if window is not None:
        vis &= j > pos - window
    return vis, (j - pos).astype(np.float64)


def _expand(x, groups):
    return np.repeat(x, groups, axis=2)             # [b, s, kv, d] -> [b, s, kv * groups, d]


def _fold(x, groups):
    b, s, h, d = x.shape                            # sum the query heads sharing a KV head
    return x.reshape(b, s, h // groups, groups, d).sum(3)


def attention_truth(q, k, v, causal, window, slopes, scale, g):
    """Float64 out, lse and dq, dk, dv; a query that sees no key gets 0 and lse -inf."""
    groups = q.shape[2] // k.shape[2]
    kk, vv = _expand(k, groups), _expand(v, groups)
    vis, rel = _visible(q.shape[1], k.shape[1], causal, window)
    s = np.einsum("bihd,bjhd->bhij", q, kk, optimize=True) * scale
    if slopes is not None:
        s = s + slopes[None, :, None, None] * rel
    s = np.where(vis, s, -np.inf)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m)
    l = e.sum(-1, keepdims=True)
    p = e / np.where(l > 0, l, 1.0)
    out = np.einsum("bhij,bjhd->bihd", p, vv, optimize=True)
    lse = np.where(l > 0, m + np.log(np.where(l > 0, l, 1.0)), -np.inf)[..., 0]
    dp = np.einsum("bihd,bjhd->bhij", g, vv, optimize=True)
    ds = p * (dp - (p * dp).sum(-1, keepdims=True))
    dq = np.einsum("bhij,bjhd->bihd", ds, kk, optimize=True) * scale
    dk = _fold(np.einsum("bhij,bihd->bjhd", ds, q, optimize=True) * scale, groups)
    dv = _fold(np.einsum("bhij,bihd->bjhd", p, g, optimize=True), groups)
    return out, lse, dq, dk, dv


def attention_naive_bf16(q, k, v, causal, window, slopes, scale, g):
    """attention_math's graph in bf16: matmul outputs, q * scale, the probabilities
    and every gradient rounded to bf16; softmax and its gradient in fp32; sums
    accumulate in float64 and round once."""
    rd, f32 = C.bf16_round, np.float32
    groups = q.shape[2] // k.shape[2]
    kk, vv = _expand(k, groups), _expand(v, groups)
    vis, rel = _visible(q.shape[1], k.shape[1], causal, window)
    qs = rd(q * scale).astype(np.float64)
    s = rd(np.einsum("bihd,bjhd->bhij", qs, kk, optimize=True)).astype(f32)
    if slopes is not None:
        s = s + (slopes[None, :, None, None] * rel).astype(f32)
    s = np.where(vis, s, -np.inf).astype(f32)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0)).astype(f32)
    l = e.sum(-1, keepdims=True, dtype=f32)
    p32 = (e / np.where(l > 0, l, 1)).astype(f32)
    p = rd(p32)
    out = rd(np.einsum("bhij,bjhd->bihd", p, vv, optimize=True))
    dprobs = rd(np.einsum("bihd,bjhd->bhij", g, vv, optimize=True)).astype(f32)
    ds = rd(p32 * (dprobs - (p32 * dprobs).sum(-1, keepdims=True, dtype=f32)))
    dq = rd(rd(np.einsum("bhij,bjhd->bihd", ds, kk, optimize=True)) * scale)
    dk = rd(_fold(rd(np.einsum("bhij,bihd->bjhd", ds, qs, optimize=True)), groups))
    dv = rd(_fold(rd(np.einsum("bhij,bihd->bjhd", p, g, optimize=True)), groups))
    return out, dq, dk, dv


def _inputs(rng, dtype, b, sq, sk, h, kv, d, dv=None, alibi=False):
    rd = C.rounder(dtype)
    q = rd(rng.normal(size=(b, sq, h, d)))
    k = rd(rng.normal(size=(b, sk, kv, d)))
    v = rd(rng.normal(size=(b, sk, kv, dv or d)))
    g = rd(rng.normal(size=(b, sq, h, dv or d)))
    slopes = (2.0 ** (-8.0 * np.arange(1, h + 1) / h)).astype(np.float32) if alibi else None  # ALiBi's
    return q, k, v, g, slopes


def _run(dtype, q, k, v, g, slopes, causal, window, scale):
    """The kernel's (out, lse, dq, dk, dv) as float64, plus the input tensors."""
    qt, kt, vt = (C.tensor(a, dtype, grad=True) for a in (q, k, v))
    st = None if slopes is None else paddle.to_tensor(slopes)
    out, lse = _attn(qt, kt, vt, causal, window, st, scale)
    assert out.dtype == qt.dtype and lse.dtype == paddle.float32
    grads = paddle.grad([out], [qt, kt, vt], [C.tensor(g, dtype)])
    return (C.f64(out), lse.numpy().astype(np.float64), *(C.f64(t) for t in grads)), (qt, kt, vt, st)


def _naive(dtype, tensors, q, k, v, g, slopes, causal, window, scale):
    if dtype == "bfloat16":
        sc = q.shape[-1] ** -0.5 if scale is None else scale
        return attention_naive_bf16(*(a.astype(np.float64) for a in (q, k, v)), causal, window,
                                    slopes, sc, g.astype(np.float64))
    qt, kt, vt, st = tensors
    ref = R.attention_math(qt, kt, vt, causal, window, st, scale)
    grads = paddle.grad([ref], [qt, kt, vt], [C.tensor(g, dtype)])
    return (ref.numpy(), *(t.numpy() for t in grads))


def _check_lse(what, got, want):
    # The kernel's lse = max + log(sum exp) over fp32 scores, each an fp32 dot product
    # of head_dim terms: off by a few head_dim ulps of |s| (<= ~10 here), about 1e-6
    # (measured <= 1.4e-6). 2e-5 leaves margin without hiding a wrong mask, scale or
    # ALiBi term, which move lse by >= 1e-2.
    assert np.array_equal(np.isneginf(got), np.isneginf(want)), f"{what}: -inf rows differ"
    fin = np.isfinite(want)
    err = float(np.abs(got[fin] - want[fin]).max()) if fin.any() else 0.0
    assert err <= 2e-5 * max(1.0, float(np.abs(want[fin]).max(initial=0.0))), f"{what}: lse error {err:.3e}"


# ----------------------------------------------------------------------------- the grid
CASES = [
    # b, seq_q, seq_k, heads, kv_heads, head_dim, v_head_dim, causal, window, alibi, scale
    (2, 7, 7, 4, 4, 64, None, False, None, False, None),     # non-causal MHA, odd length
    (1, 127, 127, 4, 1, 80, None, True, None, True, None),   # MQA, head_dim 80, ALiBi
    (1, 300, 300, 8, 2, 128, None, True, 64, False, None),   # GQA 4, head_dim 128, window
    (2, 1, 300, 4, 2, 64, None, True, None, False, None),    # one query (decoding), GQA 2
    (1, 37, 300, 4, 2, 64, None, True, 50, True, 0.3),       # seq_q < seq_k, window, ALiBi, custom scale
    (1, 130, 130, 2, 2, 72, None, False, 20, False, None),   # head_dim 72 (padded), non-causal window
    (1, 65, 65, 4, 2, 64, 32, True, 2, False, None),         # v_head_dim != head_dim, window 2
    (4, 65, 65, 8, 8, 64, None, True, None, False, None),    # batch * kv_heads >= 32: one key chunk
    (1, 19, 40, 3, 3, 8, 24, True, 3, False, None),          # tiny head_dim, v_head_dim 24 (padded)
    (1, 70, 70, 2, 2, 256, None, True, None, True, None),    # head_dim 256
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,sq,sk,h,kv,d,dv,causal,window,alibi,scale", CASES)
def test_matches_float64_truth(dtype, b, sq, sk, h, kv, d, dv, causal, window, alibi, scale):
    rng = np.random.default_rng(sq * 1000 + sk + d)
    q, k, v, g, slopes = _inputs(rng, dtype, b, sq, sk, h, kv, d, dv, alibi)
    sc = 1.0 / np.sqrt(d) if scale is None else scale
    got, tensors = _run(dtype, q, k, v, g, slopes, causal, window, scale)
    truth = attention_truth(*(a.astype(np.float64) for a in (q, k, v)), causal, window, slopes, sc,
                            g.astype(np.float64))
    naive = _naive(dtype, tensors, q, k, v, g, slopes, causal, window, scale)
    what = f"{dtype} b{b} q{sq} k{sk} h{h}/{kv} d{d}"
    _check_lse(what, got[1], truth[1])
    for name, x, want, nv in zip(("out", "dq", "dk", "dv"), got[:1] + got[2:], truth[:1] + truth[2:], naive):
        C.check(f"{what} {name}", x, want, nv)


def test_long_rows_float32():
    """seq 2048: under a causal mask dK/dV of the first keys sum over ~2048 queries
    (a single fp32 accumulator there was 2.3x less accurate than attention_math)."""
    rng = np.random.default_rng(7)
    q, k, v, g, _ = _inputs(rng, "float32", 1, 2048, 2048, 2, 1, 64)
    got, tensors = _run("float32", q, k, v, g, None, True, None, None)
    truth = attention_truth(*(a.astype(np.float64) for a in (q, k, v)), True, None, None, 0.125,
                            g.astype(np.float64))
    naive = _naive("float32", tensors, q, k, v, g, None, True, None, None)
    _check_lse("long", got[1], truth[1])
    for name, x, want, nv in zip(("out", "dq", "dk", "dv"), got[:1] + got[2:], truth[:1] + truth[2:], naive):
        C.check(f"seq 2048 {name}", x, want, nv)


def test_public_wrapper_calls_the_op():
    rng = np.random.default_rng(5)
    q, k, v, _, slopes = _inputs(rng, "float32", 1, 20, 20, 4, 2, 64, alibi=True)
    qt, kt, vt = (C.tensor(a, "float32") for a in (q, k, v))
    st = paddle.to_tensor(slopes)
    out = ops.flash_attention(qt, kt, vt, causal=True, window=8, alibi_slopes=st, scale=0.2)
    assert np.array_equal(out.numpy(), _attn(qt, kt, vt, True, 8, st, 0.2)[0].numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_queries_that_see_no_key_give_zero_and_no_nan(dtype):
    # seq_q > seq_k under a causal mask: query i sits at key position i - 30, so
    # the first 30 queries see nothing (attention_math gives NaN there).
    rng = np.random.default_rng(2)
    b, sq, sk, h, kv, d = 2, 50, 20, 4, 2, 64
    q, k, v, g, _ = _inputs(rng, dtype, b, sq, sk, h, kv, d)
    got, (qt, kt, vt, _) = _run(dtype, q, k, v, g, None, True, None, None)
    truth = attention_truth(*(a.astype(np.float64) for a in (q, k, v)), True, None, None, d ** -0.5,
                            g.astype(np.float64))
    blind = sq - sk
    assert not got[0][:, :blind].any() and not got[2][:, :blind].any()  # out and dq rows exactly 0
    assert np.isneginf(got[1][:, :, :blind]).all()
    for x in got:
        assert not np.isnan(x).any()
    # naive on the queries that see keys: the same positions as a seq_k-long query block
    if dtype == "bfloat16":
        naive = attention_naive_bf16(*(a.astype(np.float64) for a in (q, k, v)), True, None, None,
                                     d ** -0.5, g.astype(np.float64))
    else:
        qs = C.tensor(q[:, blind:], dtype, grad=True)
        ref = R.attention_math(qs, kt, vt, True)
        dqs, dk, dv = paddle.grad([ref], [qs, kt, vt], [C.tensor(g[:, blind:], dtype)])
        pad = np.zeros((b, blind, h, d))
        naive = (np.concatenate([pad, ref.numpy()], 1), np.concatenate([pad, dqs.numpy()], 1),
                 dk.numpy(), dv.numpy())
    _check_lse(dtype, got[1], truth[1])
    for name, x, want, nv in zip(("out", "dq", "dk", "dv"), got[:1] + got[2:], truth[:1] + truth[2:], naive):
        C.check(f"{dtype} blind rows {name}", x, want, nv)


@pytest.mark.parametrize("sq,sk,window", [(1, 1, None), (65, 65, 1), (20, 70, 1)])
def test_one_visible_key_per_query(sq, sk, window):
    """Each query sees exactly one key (seq 1, or window 1): out = that key's v,
    dv = the incoming gradient, and dq = dk = 0 mathematically."""
    rng = np.random.default_rng(sq + sk)
    b, h, kv, d = 2, 4, 2, 64
    q, k, v, g, _ = _inputs(rng, "float32", b, sq, sk, h, kv, d)
    got, (qt, kt, vt, _) = _run("float32", q, k, v, g, None, True, window, None)
    truth = attention_truth(*(a.astype(np.float64) for a in (q, k, v)), True, window, None, d ** -0.5,
                            g.astype(np.float64))
    ref = R.attention_math(qt, kt, vt, True, window)
    dq_n, dk_n, dv_n = paddle.grad([ref], [qt, kt, vt], [C.tensor(g, "float32")])
    C.check("out", got[0], truth[0], ref.numpy())
    C.check("dv", got[4], truth[4], dv_n.numpy())
    # dq and dk are scale * (dP - D) times k and q, where dP = <dO, v> (a gemm) and
    # D = <dO, O> (a row sum; O = v exactly) are two fp32 sums of the same d terms,
    # so dP - D is rounding noise: |dP - D| <= 2 d eps32 sum_c |dO_c v_c| (the
    # worst case of a d-term fp32 sum); dk adds one such term per query head.
    noise = 2 * d * C.EPS32 * d * np.abs(g).max() * np.abs(v).max()
    bound = d ** -0.5 * noise * max(np.abs(k).max(), np.abs(q).max()) * (h // kv)
    assert np.abs(got[2]).max() <= bound and np.abs(got[3]).max() <= bound


# ----------------------------------------------------------------------------- determinism
def _fwd_bwd_arrays(seed=3):
    rng = np.random.default_rng(seed)
    q, k, v, g, slopes = _inputs(rng, "float32", 1, 200, 200, 4, 1, 64, alibi=True)
    got, _ = _run("float32", q, k, v, g, slopes, True, 90, None)
    return got


def test_bitwise_deterministic_across_runs_and_thread_counts():
    core = paddle.base.core
    before = int(os.environ.get("OMP_NUM_THREADS", "1"))
    results = []
    try:
        for threads in (1, 2, 1, 2):
            core.set_num_threads(threads)
            results.append(_fwd_bwd_arrays())
    finally:
        core.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- errors
Q = (2, 8, 4, 16)


@pytest.mark.parametrize("q,k,v,alibi,message", [
    ((2, 8, 4), Q, Q, None, r"`q` must be \[batch, seq_q, heads, head_dim\]"),
    (Q, (2, 8, 4, 32), Q, None, r"`k` must be .*head_dim\] = \[2, seq_k, kv_heads, 16\]"),
    (Q, Q, (2, 9, 4, 16), None, r"`v` must be .* = \[2, 8, 4, v_head_dim\]"),
    ((2, 8, 6, 16), Q, Q, None, r"heads \(6\) must be a positive multiple of `k`'s kv_heads \(4\)"),
    (Q, (Q, "bfloat16"), Q, None, r"`k` must have the dtype of `q`"),
    ((Q, "float64"), (Q, "float64"), (Q, "float64"), None, r"`q` must be float32 or bfloat16, got float64"),
    (Q, Q, Q, (3,), r"`alibi_slopes` must be \[heads\] = \[4\], got \[3\]"),
    (Q, Q, Q, ((4,), "float64"), r"`alibi_slopes` must be float32"),
])
def test_errors_name_the_argument(q, k, v, alibi, message):
    def make(spec):  # a shape, or (shape, dtype)
        shape, dtype = (spec, "float32") if isinstance(spec[0], int) else spec
        return paddle.zeros(shape, dtype=dtype)

    slopes = None if alibi is None else make(alibi)
    with pytest.raises(ValueError, match=message):
        ops.flash_attention(make(q), make(k), make(v), alibi_slopes=slopes)


def test_op_rejects_window_zero():
    x = paddle.zeros([1, 4, 2, 16])
    with pytest.raises(Exception, match=r"`window` must be -1 \(no window\) or >= 1 keys, got 0"):
        paddle._C_ops._run_custom_op(OP, x, x, x, None, True, 0, 0.0, 0)


# ----------------------------------------------------------------------------- portable path
def test_baseline_isa_path_matches_the_truth():
    """LLMPRE_CPU_ISA=baseline runs the portable loops (a CPU without AVX2); they
    must pass the same rule as the AVX2 intrinsics, with 2 threads."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(here))!r})
        import llmpre.ops as ops
        assert ops.status()["cpu_isa"] == "baseline", ops.status()
        from tests.ops import test_flash_attention as T
        for case in (T.CASES[1], T.CASES[5], T.CASES[6]):
            for dtype in T.DTYPES:
                T.test_matches_float64_truth(dtype, *case)
        T.test_queries_that_see_no_key_give_zero_and_no_nan("float32")
        print("baseline ok")
    """)
    env = dict(os.environ, LLMPRE_CPU_ISA="baseline", OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(here)))
    assert proc.returncode == 0 and "baseline ok" in proc.stdout, proc.stdout + proc.stderr
