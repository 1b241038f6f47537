"""The MoE combine (llmpre_moe_combine) against the pure-Paddle reference and a float64
truth: output and both gradients, rows no pair reads (capacity drops), bitwise
reproducibility, the op-table dtype rule, bad positions."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

import llmpre.ops as ops
from llmpre.ops import fused as F
from llmpre.ops import reference as R
from . import fused_checks as C

pytestmark = pytest.mark.skipif(not ops.available("llmpre_moe_combine"),
                                reason=f"llmpre_moe_combine not built: {ops.status()['unavailable']}")


def _case(tokens, k, rows, hidden, seed=0):
    """y [rows, hidden], pos [tokens, k] (distinct rows, in a random order), weights, dout."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(rows, hidden)).astype(np.float32)
    pos = rng.permutation(rows)[:tokens * k].reshape(tokens, k).astype(np.int64)
    w = rng.uniform(0.0, 1.0, size=(tokens, k)).astype(np.float32)
    dout = rng.normal(size=(tokens, hidden)).astype(np.float32)
    return y, pos, w, dout


def _run(fn, y, pos, w, dout, dtype):
    yt, wt = paddle.to_tensor(y.astype(dtype)), paddle.to_tensor(w.astype(dtype))
    yt.stop_gradient = wt.stop_gradient = False
    out = fn(yt, paddle.to_tensor(pos), wt)
    dy, dw = paddle.grad([out], [yt, wt], [paddle.to_tensor(dout.astype(dtype))])
    return [out.numpy(), dy.numpy(), dw.numpy()]


@pytest.mark.parametrize("tokens,k,rows,hidden", [
    (64, 8, 512, 96),        # every row read (a dropless layer)
    (37, 3, 120, 20),        # 9 rows no pair reads; hidden off any vector width
    (5, 1, 5, 512),          # top-1
])
def test_matches_float64_truth_within_twice_the_reference_error(tokens, k, rows, hidden):
    y, pos, w, dout = _case(tokens, k, rows, hidden)
    truth = _run(R.moe_combine, y, pos, w, dout, "float64")
    naive = _run(R.moe_combine, y, pos, w, dout, "float32")
    got = _run(F.moe_combine, y, pos, w, dout, "float32")
    for name, g, t, n in zip(("out", "dy", "dweights"), got, truth, naive):
        C.check(name, g, t, n)
    unread = np.setdiff1d(np.arange(rows), pos.reshape(-1))
    assert not got[1][unread].any()                         # rows no pair reads: 0 gradient


def test_reproducible_bitwise():
    y, pos, w, dout = _case(300, 8, 2400, 128, seed=1)
    a = _run(F.moe_combine, y, pos, w, dout, "float32")
    b = _run(F.moe_combine, y, pos, w, dout, "float32")
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("pos,message", [
    (np.array([[0, 1], [2, 6]], np.int64), r"pos\[1, 1\] = 6 is outside the 6 rows of y"),
    (np.array([[0, 1], [1, 3]], np.int64), "row 1 of y appears twice"),
    (np.array([0, 1, 2, 3], np.int64), r"`pos` must be \[tokens, slots\]"),
])
def test_bad_positions_are_one_clear_error(pos, message):
    y = paddle.ones([6, 4])
    w = paddle.ones(pos.shape if pos.ndim == 2 else [2, 2])
    with pytest.raises(ValueError, match=message):
        F.moe_combine(y, paddle.to_tensor(pos), w)


def test_select_ops_sends_dtypes_without_a_kernel_to_the_reference():
    """fp32-only kernel (its op-table row): auto computes float64 with the reference and
    fp32 with the kernel; the strict choice refuses float64."""
    assert F.TABLE["moe_combine"].dtypes["cpu"] == ("float32",)
    y, pos, w, dout = _case(6, 2, 14, 8)
    auto = ops.select_ops().moe_combine
    for dtype in ("float64", "float32"):
        want = _run(R.moe_combine if dtype == "float64" else F.moe_combine, y, pos, w, dout, dtype)
        for u, v in zip(_run(auto, y, pos, w, dout, dtype), want):
            np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="float32"):
        _run(ops.select_ops(use_fused_moe_combine=True).moe_combine, y, pos, w, dout, "float64")
