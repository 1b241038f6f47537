"""The grouped expert MLP (llmpre_grouped_mlp) against the pure-Paddle reference and a
float64 truth: output and all four gradients, uneven/empty experts, dropped rows,
sizes off the kernel's 6 x 16 blocking, rows gathered through an index (each token's
rows summed in the input gradient), the portable (non-AVX2) path, bad input."""

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

pytestmark = pytest.mark.skipif(not ops.available("llmpre_grouped_mlp"),
                                reason=f"llmpre_grouped_mlp not built: {ops.status()['unavailable']}")


def _case(counts, rows, hidden, inter, seed=0):
    """Inputs (numpy fp32) for experts with `counts` rows each, `rows` rows in all."""
    rng = np.random.default_rng(seed)
    e = len(counts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    x = rng.normal(size=(rows, hidden)).astype(np.float32)
    wg = (rng.normal(size=(e, hidden, inter)) / np.sqrt(hidden)).astype(np.float32)
    wu = (rng.normal(size=(e, hidden, inter)) / np.sqrt(hidden)).astype(np.float32)
    wd = (rng.normal(size=(e, inter, hidden)) / np.sqrt(inter)).astype(np.float32)
    dy = rng.normal(size=(rows, hidden)).astype(np.float32)
    return offsets, [x, wg, wu, wd], dy


def _run(fn, offsets, arrays, dy, dtype):
    x = paddle.to_tensor(arrays[0].astype(dtype))
    weights = [[paddle.to_tensor(w.astype(dtype)) for w in stack] for stack in arrays[1:]]   # per expert
    ins = [x] + [w for ws in weights for w in ws]
    for t in ins:
        t.stop_gradient = False
    y = fn(x, paddle.to_tensor(offsets), *weights)
    grads = paddle.grad([y], ins, [paddle.to_tensor(dy.astype(dtype))], allow_unused=True)
    grads = [paddle.zeros_like(t) if g is None else g for g, t in zip(grads, ins)]   # reference: unused experts
    e = len(weights[0])
    grads = [grads[0]] + [paddle.stack(grads[1 + i * e:1 + (i + 1) * e]) for i in range(3)]
    return [y.numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize("counts,rows,hidden,inter", [
    ([10, 0, 25, 13, 7], 70, 48, 40),        # an empty expert, 15 dropped rows, inter % 16 != 0
    ([1, 2, 3], 6, 16, 16),                  # fewer rows than a 6-row block
    ([300, 0, 0, 212], 512, 64, 96),         # k-blocks of 256 rows in the weight gradients
])
def test_matches_float64_truth_within_twice_the_reference_error(counts, rows, hidden, inter):
    offsets, arrays, dy = _case(counts, rows, hidden, inter)
    truth = _run(R.grouped_mlp, offsets, arrays, dy, "float64")
    naive = _run(R.grouped_mlp, offsets, arrays, dy, "float32")
    got = _run(F.grouped_mlp, offsets, arrays, dy, "float32")
    for name, g, t, n in zip(("out", "dx", "dw_gate", "dw_up", "dw_down"), got, truth, naive):
        C.check(name, g, t, n)
    kept = int(offsets[-1])
    assert not got[0][kept:].any() and not got[1][kept:].any()      # dropped rows: 0 out, 0 grad
    for grad in got[2:]:
        assert not grad[np.asarray(counts) == 0].any()               # experts without rows: 0 grads


def _moe_index(tokens, k, experts, dropped, seed=0):
    """An MoE layer's rows: (token, slot) pairs of random distinct experts sorted by expert
    (stable), the last `dropped` rows past every expert; -> (offsets, index [tokens k])."""
    rng = np.random.default_rng(seed)
    chosen = np.stack([rng.permutation(experts)[:k] for _ in range(tokens)]).reshape(-1)   # [tokens k]
    if dropped:
        chosen[rng.choice(chosen.size, dropped, replace=False)] = experts                 # sorts past all
    order = np.argsort(chosen, kind="stable")
    offsets = np.searchsorted(chosen[order], np.arange(experts + 1)).astype(np.int64)
    return offsets, (order // k).astype(np.int64)


def _run_indexed(fn, offsets, index, arrays, dy, dtype):
    x = paddle.to_tensor(arrays[0].astype(dtype))
    weights = [[paddle.to_tensor(w.astype(dtype)) for w in stack] for stack in arrays[1:]]
    ins = [x] + [w for ws in weights for w in ws]
    for t in ins:
        t.stop_gradient = False
    y = fn(x, paddle.to_tensor(offsets), *weights, paddle.to_tensor(index))
    grads = paddle.grad([y], ins, [paddle.to_tensor(dy.astype(dtype))], allow_unused=True)
    grads = [paddle.zeros_like(t) if g is None else g for g, t in zip(grads, ins)]
    e = len(weights[0])
    grads = [grads[0]] + [paddle.stack(grads[1 + i * e:1 + (i + 1) * e]) for i in range(3)]
    return [y.numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize("tokens,k,experts,dropped,hidden,inter", [
    (40, 4, 6, 0, 48, 40),          # dropless, inter % 16 != 0
    (33, 2, 5, 17, 24, 16),         # capacity drops: rows past every expert
    (300, 2, 3, 0, 64, 96),         # k-blocks of 256 rows (gathered columns of x^T) in dW
])
def test_gathered_rows_match_float64_truth_within_twice_the_reference_error(tokens, k, experts, dropped,
                                                                            hidden, inter):
    offsets, index = _moe_index(tokens, k, experts, dropped)
    counts = np.diff(offsets)
    _, arrays, dy = _case(counts, tokens, hidden, inter)        # x has one row per token
    dy = np.random.default_rng(5).normal(size=(index.size, hidden)).astype(np.float32)
    truth = _run_indexed(R.grouped_mlp, offsets, index, arrays, dy, "float64")
    naive = _run_indexed(R.grouped_mlp, offsets, index, arrays, dy, "float32")
    got = _run_indexed(F.grouped_mlp, offsets, index, arrays, dy, "float32")
    for name, g, t, n in zip(("out", "dx", "dw_gate", "dw_up", "dw_down"), got, truth, naive):
        C.check(name, g, t, n)
    kept = int(offsets[-1])
    assert not got[0][kept:].any()                                   # dropped rows: 0 out
    only_dropped = np.setdiff1d(np.arange(tokens), index[:kept])     # tokens whose every row was dropped
    assert not got[1][only_dropped].any()


def test_gathered_rows_equal_the_ungathered_op_on_gathered_input():
    """Gathering inside the kernel changes where rows are read, not the arithmetic: the
    output and weight gradients equal the plain op's on x[index] bitwise, and x's gradient
    is the plain op's row gradients summed per token (rows in row order)."""
    offsets, index = _moe_index(50, 3, 4, 7, seed=2)
    _, arrays, _ = _case(np.diff(offsets), 50, 32, 24, seed=3)
    dy = np.random.default_rng(4).normal(size=(index.size, 32)).astype(np.float32)
    got = _run_indexed(F.grouped_mlp, offsets, index, arrays, dy, "float32")
    plain = _run(F.grouped_mlp, offsets, [arrays[0][index]] + arrays[1:], dy, "float32")
    for name, u, v in zip(("out", "dw_gate", "dw_up", "dw_down"), got[:1] + got[2:], plain[:1] + plain[2:]):
        np.testing.assert_array_equal(u, v, err_msg=name)
    summed = np.zeros_like(arrays[0])
    for r, t in enumerate(index):
        summed[t] += plain[1][r]
    np.testing.assert_array_equal(got[1], summed)


def test_reproducible_bitwise():
    offsets, arrays, dy = _case([200, 150, 0, 170], 600, 64, 48, seed=1)
    a = _run(F.grouped_mlp, offsets, arrays, dy, "float32")
    b = _run(F.grouped_mlp, offsets, arrays, dy, "float32")
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("change,message", [
    (lambda o, a: (np.array([0, 5, 3, 9], np.int64), a), "non-decreasing"),
    (lambda o, a: (np.array([1, 5, 7, 9], np.int64), a), r"offsets\[0\] must be 0"),
    (lambda o, a: (np.array([0, 5, 7, 99], np.int64), a), "exceeds"),
    (lambda o, a: (o[:-1], a), "experts \\+ 1"),
    (lambda o, a: (o, a[:3] + [a[3][:, :-1]]), r"w_down\[0\]"),
    (lambda o, a: (o, a[:3] + [a[3][:-1]]), "same experts"),
])
def test_bad_input_is_one_clear_error(change, message):
    offsets, arrays, _ = _case([5, 2, 2], 10, 16, 8)
    offsets, arrays = change(offsets, arrays)
    x = paddle.to_tensor(arrays[0])
    weights = [[paddle.to_tensor(w) for w in stack] for stack in arrays[1:]]
    with pytest.raises(ValueError, match=message):
        F.grouped_mlp(x, paddle.to_tensor(offsets), *weights)


@pytest.mark.parametrize("index,message", [
    (np.array([0, 1, 2, 9], np.int64), r"index\[3\] = 9 is outside the 4 rows of x"),
    (np.array([0, -1, 2, 3], np.int64), r"index\[1\] = -1"),
    (np.zeros((4, 1), np.int64), r"`index` must be \[rows\]"),
])
def test_bad_index_is_one_clear_error(index, message):
    offsets, arrays, _ = _case([2, 2], 4, 16, 8)
    x = paddle.to_tensor(arrays[0])
    weights = [[paddle.to_tensor(w) for w in stack] for stack in arrays[1:]]
    with pytest.raises(ValueError, match=message):
        F.grouped_mlp(x, paddle.to_tensor(offsets), *weights, paddle.to_tensor(index))


def test_select_ops_sends_dtypes_without_a_kernel_to_the_reference():
    """The CPU kernel is fp32-only (its op-table row says so): auto computes float64 with the
    reference, fp32 with the kernel; the strict choice refuses float64."""
    assert F.TABLE["grouped_mlp"].dtypes["cpu"] == ("float32",)
    offsets, arrays, dy = _case([3, 0, 4], 9, 16, 8)
    auto = ops.select_ops().grouped_mlp
    for dtype in ("float64", "float32"):
        want = _run(R.grouped_mlp if dtype == "float64" else F.grouped_mlp, offsets, arrays, dy, dtype)
        for u, v in zip(_run(auto, offsets, arrays, dy, dtype), want):
            np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="float32"):
        _run(ops.select_ops(use_fused_grouped_mlp=True).grouped_mlp, offsets, arrays, dy, "float64")


def test_baseline_isa_path_matches_the_reference():
    """LLMPRE_CPU_ISA=baseline runs the portable GEMM (a CPU without AVX2)."""
    script = textwrap.dedent("""
        import numpy as np, paddle
        import llmpre.ops as ops
        from llmpre.ops import fused as F, reference as R
        assert ops.status()["cpu_isa"] == "baseline", ops.status()
        rng = np.random.default_rng(0)
        def t(shape):
            x = paddle.to_tensor((rng.normal(size=shape) / 4).astype("float32")); x.stop_gradient = False
            return x
        x = t((40, 24))
        wg, wu, wd = [t((24, 20)) for _ in range(3)], [t((24, 20)) for _ in range(3)], [t((20, 24)) for _ in range(3)]
        offsets = paddle.to_tensor(np.array([0, 12, 12, 33], np.int64))
        ins = [x] + wg + wu + wd
        a, b = F.grouped_mlp(x, offsets, wg, wu, wd), R.grouped_mlp(x, offsets, wg, wu, wd)
        ga = paddle.grad([a], ins, [paddle.ones_like(a)])
        gb = paddle.grad([b], ins, [paddle.ones_like(b)], allow_unused=True)   # expert 1 has no rows
        gb = [paddle.zeros_like(t) if g is None else g for g, t in zip(gb, ins)]
        for u, v in zip([a] + ga, [b] + gb):
            err = float((u - v).abs().max()) / max(1.0, float(v.abs().max()))
            assert err < 1e-5, err
        index = paddle.to_tensor(rng.integers(0, 40, size=50).astype(np.int64))   # rows gathered from x
        offsets = paddle.to_tensor(np.array([0, 20, 20, 45], np.int64))             # 5 rows dropped
        a = F.grouped_mlp(x, offsets, wg, wu, wd, index)
        b = R.grouped_mlp(x, offsets, wg, wu, wd, index)
        ga = paddle.grad([a], ins, [paddle.ones_like(a)])
        gb = paddle.grad([b], ins, [paddle.ones_like(b)], allow_unused=True)
        gb = [paddle.zeros_like(t) if g is None else g for g, t in zip(gb, ins)]
        for u, v in zip([a] + ga, [b] + gb):
            err = float((u - v).abs().max()) / max(1.0, float(v.abs().max()))
            assert err < 1e-5, err
        print("baseline ok")
    """)
    env = dict(os.environ, LLMPRE_CPU_ISA="baseline", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "baseline ok" in proc.stdout, proc.stdout + proc.stderr
