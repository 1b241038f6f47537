"""The one-pass AdamW update (llmpre_adamw_) against the pure-Paddle update it replaces
(reference.adamw_, ~20 elementwise passes) and a float64 truth: parameters and both
moments, weight decay on some runs only, a gradient scale, later steps; bad input."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

import llmpre.ops as ops
from llmpre.ops import fused as F
from llmpre.ops import reference as R
from . import fused_checks as C

pytestmark = pytest.mark.skipif(not ops.available("llmpre_adamw_"),
                                reason=f"llmpre_adamw_ not built: {ops.status()['unavailable']}")

HP = dict(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def _state(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=n).astype(np.float32)
    g = (rng.normal(size=n) * 1e-2).astype(np.float32)
    m = (rng.normal(size=n) * 1e-3).astype(np.float32)
    v = (rng.uniform(size=n) * 1e-5).astype(np.float32)
    return p, g, m, v


def _truth(p, g, m, v, step, grad_scale, runs, lr, beta1, beta2, eps, weight_decay):
    p, g, m, v = (a.astype(np.float64) for a in (p, g, m, v))
    g = g * grad_scale
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    for a, b in runs:
        p[a:b] -= lr * weight_decay * p[a:b]
    p = p - lr * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
    return [p, m, v]


def _run(fn, p, g, m, v, **kw):
    t = [paddle.to_tensor(a.copy()) for a in (p, g, m, v)]
    fn(t[0], t[1], t[2], t[3], **kw)
    return [t[0].numpy(), t[2].numpy(), t[3].numpy()]


@pytest.mark.parametrize("n,step,grad_scale,runs", [
    (3_000_001, 1, 1.0, [(0, 1_000_000), (1_500_000, 2_999_999)]),   # several threads' slices, runs across them
    (1000, 7, 0.37, [(10, 20), (20, 30), (900, 1000)]),              # touching runs, clipping's scale
    (513, 2, 1.0, []),                                                # no decayed element
])
def test_matches_float64_truth_within_twice_the_reference_error(n, step, grad_scale, runs):
    p, g, m, v = _state(n)
    kw = dict(HP, step=step, grad_scale=grad_scale, decayed_runs=runs)
    truth = _truth(p, g, m, v, step, grad_scale, runs, **HP)
    naive = _run(R.adamw_, p, g, m, v, **kw)
    got = _run(F.adamw_, p, g, m, v, **kw)
    for name, a, t, b in zip(("param", "exp_avg", "exp_avg_sq"), got, truth, naive):
        C.check(name, a, t, b)
    outside = np.ones(n, bool)
    for a, b in runs:
        outside[a:b] = False
    no_decay = _run(F.adamw_, p, g, m, v, **dict(kw, weight_decay=0.0))
    np.testing.assert_array_equal(got[0][outside], no_decay[0][outside])     # decay only inside the runs


def test_grad_is_only_read_and_the_result_reproducible():
    p, g, m, v = _state(200_000, seed=1)
    kw = dict(HP, step=3, grad_scale=0.5, decayed_runs=[(0, 100_000)])
    t = [paddle.to_tensor(a.copy()) for a in (p, g, m, v)]
    F.adamw_(t[0], t[1], t[2], t[3], **kw)
    np.testing.assert_array_equal(t[1].numpy(), g)
    for a, b in zip([t[0].numpy(), t[2].numpy(), t[3].numpy()], _run(F.adamw_, p, g, m, v, **kw)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("change,message", [
    (lambda t: dict(decayed_runs=[(5, 3)]), r"decayed run 0 = \[5, 3\)"),
    (lambda t: dict(decayed_runs=[(0, 5), (4, 8)]), "sorted, disjoint"),
    (lambda t: dict(decayed_runs=[(0, 11)]), "within the 10 elements"),
    (lambda t: dict(grad=t[1][:9]), r"`grad` must be float32 \[10\]"),
    (lambda t: dict(exp_avg=t[2].astype("float64")), "`exp_avg` must be float32"),
])
def test_bad_input_is_one_clear_error(change, message):
    t = [paddle.to_tensor(a) for a in _state(10)]
    args = dict(param=t[0], grad=t[1], exp_avg=t[2], exp_avg_sq=t[3], **HP, step=1, decayed_runs=[])
    args.update(change(t))
    with pytest.raises(ValueError, match=message):
        F.adamw_(**args)
