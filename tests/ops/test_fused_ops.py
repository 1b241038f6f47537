"""llmpre's fused ops (C++ kernels behind Paddle custom ops) against float64 truth,
with the error rule of tests/ops/fused_checks.py for every output and gradient,
in float32 and bfloat16; plus their argument errors, determinism and the
portable (non-AVX2) code path. Flash attention has its own test file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest

import llmpre.ops as ops
from llmpre.ops import fused as F
from llmpre.ops import reference as R
from . import fused_checks as C

pytestmark = pytest.mark.skipif(
    not all(ops.available(n) for n in ("llmpre_rms_norm", "llmpre_rotary", "llmpre_swiglu",
                                       "llmpre_cross_entropy")),
    reason=f"llmpre's Paddle op library is not usable in this build: {ops.status()['unavailable']}")

DTYPES = ["float32", "bfloat16"]


def _grads(outputs, inputs, upstream):
    return paddle.grad(list(outputs), list(inputs), list(upstream))


# ----------------------------------------------------------------------------- RMSNorm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,eps", [((3, 5, 77), 1e-6), ((2, 16411), 1e-5), ((4, 1), 1e-6),
                                       ((33, 64), 0.0)])
def test_rms_norm(dtype, shape, eps):
    rng = np.random.default_rng(sum(shape))
    rd = C.rounder(dtype)
    x, w, g = rd(rng.normal(size=shape) * 2 + 0.5), rd(1 + 0.3 * rng.normal(size=shape[-1])), \
        rd(rng.normal(size=shape))
    xt, wt = C.tensor(x, dtype, grad=True), C.tensor(w, dtype, grad=True)
    y = F.rms_norm(xt, wt, eps)
    assert y.dtype == xt.dtype and y.shape == list(shape)
    dx, dw = _grads([y], [xt, wt], [C.tensor(g, dtype)])
    truth = C.rms_norm_truth(*(a.astype(np.float64) for a in (x, w)), eps, g.astype(np.float64))
    if dtype == "float32":
        yr = R.rms_norm(xt, wt, eps)
        naive = (yr.numpy(), *(t.numpy() for t in _grads([yr], [xt, wt], [C.tensor(g, dtype)])))
    else:
        naive = C.rms_norm_naive_bf16(x, w, eps, g)
    for what, got, want, nv in zip(("y", "dx", "dweight"), (y, dx, dw), truth, naive):
        C.check(f"rms_norm {dtype} {shape} {what}", C.f64(got), want, nv)


def test_rms_norm_weight_grad_is_bitwise_reproducible_across_thread_counts():
    # 8192 x 256: large enough that the backward really splits its rows over 2 threads
    rng = np.random.default_rng(11)
    x = C.tensor(rng.normal(size=(8192, 256)), "float32", grad=True)
    w = C.tensor(1 + rng.normal(size=256) * 0.1, "float32", grad=True)
    g = C.tensor(rng.normal(size=(8192, 256)), "float32")
    results = []
    core = paddle.base.core
    before = int(os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        for threads in (1, 2, 1):
            core.set_num_threads(threads)
            results.append([t.numpy() for t in _grads([F.rms_norm(x, w, 1e-6)], [x, w], [g])])
    finally:
        core.set_num_threads(before)
    for other in results[1:]:
        assert np.array_equal(results[0][1], other[1]) and np.array_equal(results[0][0], other[0])


# ----------------------------------------------------------------------------- rotary
ROTARY_CASES = [
    # heads, kv_heads, head_dim, rotated dim, position ids ("none", "batch", "shared")
    (6, 6, 16, 16, "none"),
    (6, 2, 16, 16, "batch"),     # GQA 3:1
    (6, 1, 16, 8, "shared"),     # MQA, partial rotary, one id row for every sequence
    (4, 2, 10, 6, "batch"),      # odd pair count, partial
    (8, 4, 128, 64, "none"),     # ChatGLM-like: half the head rotated
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("heads,kv,d,r,ids_kind", ROTARY_CASES)
def test_rotary(dtype, interleaved, heads, kv, d, r, ids_kind):
    rng = np.random.default_rng(heads * 100 + d + r)
    rd = C.rounder(dtype)
    b, s, positions = 2, 9, 40
    q, k = rd(rng.normal(size=(b, s, heads, d))), rd(rng.normal(size=(b, s, kv, d)))
    gq, gk = rd(rng.normal(size=q.shape)), rd(rng.normal(size=k.shape))
    inv_freq = 10000.0 ** (-np.arange(0, r, 2) / r)
    angles = np.arange(positions)[:, None] * inv_freq[None]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    ids = {"none": None, "batch": rng.integers(0, positions, size=(b, s)),
           "shared": rng.integers(0, positions, size=(1, s))}[ids_kind]
    qt, kt = C.tensor(q, dtype, grad=True), C.tensor(k, dtype, grad=True)
    ct, st = paddle.to_tensor(cos), paddle.to_tensor(sin)
    idt = None if ids is None else paddle.to_tensor(ids)
    qo, ko = F.rotary(qt, kt, ct, st, idt, interleaved)
    assert qo.dtype == qt.dtype and qo.shape == list(q.shape) and ko.shape == list(k.shape)
    dq, dk = _grads([qo, ko], [qt, kt], [C.tensor(gq, dtype), C.tensor(gk, dtype)])
    c, sn = C.rotary_rows(cos.astype(np.float64), sin.astype(np.float64), s, ids)
    for name, x, gx, got, dgot in (("q", q, gq, qo, dq), ("k", k, gk, ko, dk)):
        truth = C.rotary_truth(x.astype(np.float64), c, sn, interleaved, gx.astype(np.float64))
        if dtype == "float32":
            xt = C.tensor(x, dtype, grad=True)
            other = C.tensor(k if name == "q" else q, dtype)
            out = R.rotary(xt, other, ct, st, idt, interleaved)[0] if name == "q" else \
                R.rotary(other, xt, ct, st, idt, interleaved)[1]
            naive = (out.numpy(), _grads([out], [xt], [C.tensor(gx, dtype)])[0].numpy())
        else:
            naive = C.rotary_naive_bf16(x, c.astype(np.float32), sn.astype(np.float32), interleaved, gx)
        C.check(f"rotary {dtype} {name} out", C.f64(got), truth[0], naive[0])
        C.check(f"rotary {dtype} {name} grad", C.f64(dgot), truth[1], naive[1])


def test_rotary_matches_the_reference_contract_exactly_in_fp32_layout():
    # Same tables the model builds (RotaryEmbedding): [positions, head_dim/2]; the
    # passed-through features of partial rotary must be copied bit for bit.
    rng = np.random.default_rng(3)
    q = C.tensor(rng.normal(size=(1, 5, 2, 12)), "float32")
    angles = rng.uniform(0, 6, size=(7, 4))
    qo, _ = F.rotary(q, q, C.tensor(np.cos(angles), "float32"), C.tensor(np.sin(angles), "float32"))
    assert np.array_equal(qo.numpy()[..., 8:], q.numpy()[..., 8:])


# ----------------------------------------------------------------------------- SwiGLU
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,scale", [((3, 1001), 3.0), ((2, 5, 4099), 1.0), ((7,), 40.0)])
def test_swiglu(dtype, shape, scale):
    rng = np.random.default_rng(len(shape) + shape[-1])
    rd = C.rounder(dtype)
    gate, up, g = rd(rng.normal(size=shape) * scale), rd(rng.normal(size=shape)), rd(rng.normal(size=shape))
    gt, ut = C.tensor(gate, dtype, grad=True), C.tensor(up, dtype, grad=True)
    out = F.swiglu(gt, ut)
    assert out.dtype == gt.dtype and out.shape == list(shape)
    dg, du = _grads([out], [gt, ut], [C.tensor(g, dtype)])
    truth = C.swiglu_truth(*(a.astype(np.float64) for a in (gate, up, g)))
    if dtype == "float32":
        ref = R.swiglu(gt, ut)
        naive = (ref.numpy(), *(t.numpy() for t in _grads([ref], [gt, ut], [C.tensor(g, dtype)])))
    else:
        naive = C.swiglu_naive_bf16(gate, up, g)
    for what, got, want, nv in zip(("out", "dgate", "dup"), (out, dg, du), truth, naive):
        C.check(f"swiglu {dtype} {shape} {what}", C.f64(got), want, nv)


# ----------------------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,scale,ignored", [
    ((2, 7, 3001), 4.0, 3),       # odd vocab, a few ignored positions
    ((3, 150001), 2.0, 0),        # a long row (Qwen-sized vocabulary)
    ((5, 257), 60.0, 1),          # large logits: needs the max-shifted log-sum-exp
])
def test_cross_entropy(dtype, shape, scale, ignored):
    rng = np.random.default_rng(shape[-1])
    rd = C.rounder(dtype)
    logits = rd(rng.normal(size=shape) * scale)
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    labels.reshape(-1)[:ignored] = -100
    lt = C.tensor(logits, dtype, grad=True)
    lab = paddle.to_tensor(labels)
    loss = F.cross_entropy(lt, lab, ignore_index=-100)
    assert loss.dtype == paddle.float32 and loss.shape == []
    (dl,) = _grads([loss], [lt], [paddle.to_tensor(1.0)])
    assert dl.dtype == lt.dtype
    truth = C.cross_entropy_truth(logits.astype(np.float64), labels, -100)
    if dtype == "float32":
        ref = R.cross_entropy(lt, lab, ignore_index=-100)
        naive = (ref.numpy(), _grads([ref], [lt], [paddle.to_tensor(1.0)])[0].numpy())
    else:
        naive = C.cross_entropy_naive_bf16(logits, labels, -100)
    C.check(f"cross_entropy {dtype} {shape} loss", loss.numpy(), truth[0], naive[0])
    C.check(f"cross_entropy {dtype} {shape} grad", C.f64(dl), truth[1], naive[1])


def test_cross_entropy_custom_ignore_index_and_int32_labels():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 50)).astype(np.float32)
    labels = np.array([3, 0, 49, 0], dtype=np.int32)  # ignore_index=0: the padding token
    got = F.cross_entropy(C.tensor(logits, "float32"), paddle.to_tensor(labels), ignore_index=0)
    want, _ = C.cross_entropy_truth(logits.astype(np.float64), labels, 0)
    np.testing.assert_allclose(got.item(), want, rtol=1e-6)


def test_cross_entropy_all_ignored_is_zero_with_zero_grad():
    logits = C.tensor(np.ones((2, 3, 4)), "float32", grad=True)
    loss = F.cross_entropy(logits, paddle.full([2, 3], -100, dtype="int64"))
    loss.backward()
    assert loss.item() == 0.0 and not logits.grad.numpy().any()


# ----------------------------------------------------------------------------- argument errors
def test_errors_name_the_argument_and_the_expected_shape_or_dtype():
    x = paddle.ones([2, 3, 8])
    cases = [
        (lambda: F.rms_norm(x, paddle.ones([7]), 1e-6), "`weight` must be [hidden] = [8]"),
        (lambda: F.rms_norm(x.astype("float64"), paddle.ones([8], "float64"), 1e-6),
         "`x` must be float32 or bfloat16, got float64"),
        (lambda: F.rms_norm(x, paddle.ones([8], "bfloat16"), 1e-6), "`weight` must have the dtype of `x`"),
        (lambda: F.swiglu(x, paddle.ones([2, 3, 9])), "`up` must have the shape of `gate` [2, 3, 8]"),
        (lambda: F.cross_entropy(x, paddle.zeros([2, 4], "int64")),
         "`labels` must have the shape of logits without its last axis [2, 3]"),
        (lambda: F.cross_entropy(x, paddle.full([2, 3], 8, "int64")), "label 8 at flat position 0"),
        (lambda: F.cross_entropy(x, paddle.zeros([2, 3], "float32")), "`labels` must be int64 or int32"),
    ]
    q = paddle.ones([1, 4, 2, 8])
    c = paddle.ones([6, 4])
    cases += [
        (lambda: F.rotary(q, q, c, c, paddle.to_tensor([[0, 1, 2, 6]])),
         "position_ids[0, 3] = 6 is outside the cos/sin tables' 6 positions"),
        (lambda: F.rotary(q, q, paddle.ones([6, 5]), paddle.ones([6, 5])), "must be between 2 and head_dim=8"),
        (lambda: F.rotary(q, q, paddle.ones([3, 4]), paddle.ones([3, 4])),
         "cos/sin tables cover 3 positions but the sequence has 4"),
        (lambda: F.rotary(q, paddle.ones([1, 5, 2, 8]), c, c), "same batch, seq and head_dim"),
        (lambda: F.rotary(q, q, c, c, paddle.zeros([3, 4], "int64")), "`position_ids` must be [batch, seq]"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert message in str(info.value), str(info.value)


def test_missing_library_gives_one_clear_error(monkeypatch):
    from llmpre.ops import _library

    broken = _library.Library(error="llmpre was built without its Paddle ops (test)")
    monkeypatch.setattr(_library, "load", lambda: broken)
    with pytest.raises(F.FusedOpUnavailable, match="llmpre_swiglu: llmpre was built without its Paddle ops"):
        F.swiglu(paddle.ones([2]), paddle.ones([2]))


def test_status_reports_the_build():
    st = ops.status()
    assert st["library"] and st["library"].endswith(".so")
    assert {"llmpre_rms_norm", "llmpre_rotary", "llmpre_swiglu", "llmpre_cross_entropy"} <= set(st["ops"])
    assert st["cpu_isa"] in ("avx2", "baseline") and st["built_against_paddle"] == paddle.__version__


# ----------------------------------------------------------------------------- portable path
def test_baseline_isa_path_matches_the_reference():
    """LLMPRE_CPU_ISA=baseline runs the loops compiled for plain x86-64 (what a CPU
    without AVX2 gets); they must agree with the reference like the AVX2 ones."""
    script = textwrap.dedent("""
        import numpy as np, paddle
        import llmpre.ops as ops
        from llmpre.ops import fused as F, reference as R
        assert ops.status()["cpu_isa"] == "baseline", ops.status()
        rng = np.random.default_rng(0)
        def t(shape, scale=1.0):
            x = paddle.to_tensor(rng.normal(size=shape).astype("float32") * scale); x.stop_gradient = False
            return x
        def agree(name, fa, fr, inputs, tol):
            a, b = fa(*inputs), fr(*inputs)
            a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
            ga = paddle.grad(list(a), list(inputs), [paddle.ones_like(o) for o in a])
            gb = paddle.grad(list(b), list(inputs), [paddle.ones_like(o) for o in b])
            for u, v in zip(a + tuple(ga), b + tuple(gb)):
                err = float((u - v).abs().max()) / max(1.0, float(v.abs().max()))
                assert err < tol, (name, err)
        x, w = t((5, 300)), t((300,))
        agree("rms_norm", lambda x, w: F.rms_norm(x, w, 1e-6), lambda x, w: R.rms_norm(x, w, 1e-6), (x, w), 1e-5)
        q, k = t((2, 7, 4, 16)), t((2, 7, 2, 16))
        c, s = paddle.cos(paddle.rand([9, 6]) * 6), paddle.sin(paddle.rand([9, 6]) * 6)
        for il in (False, True):
            agree("rotary", lambda q, k: F.rotary(q, k, c, s, None, il), lambda q, k: R.rotary(q, k, c, s, None, il),
                  (q, k), 1e-5)
        agree("swiglu", F.swiglu, R.swiglu, (t((3, 999), 4.0), t((3, 999))), 1e-5)
        lab = paddle.to_tensor(rng.integers(0, 5003, size=(6,)))
        agree("cross_entropy", lambda l: F.cross_entropy(l, lab), lambda l: R.cross_entropy(l, lab),
              (t((6, 5003), 3.0),), 1e-5)
        print("baseline ok")
    """)
    env = dict(os.environ, LLMPRE_CPU_ISA="baseline", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert proc.returncode == 0 and "baseline ok" in proc.stdout, proc.stdout + proc.stderr
