"""llmpre's AdamW (the flat-bucket ShardedAdamW, one shard here) against a numpy
transcription of the update rule; state round trip; the clipping factor."""

from __future__ import annotations

import numpy as np
import pytest

from llmpre.runtime import import_paddle

paddle = import_paddle()

from llmpre.parallel.dims import ParallelDims  # noqa: E402
from llmpre.parallel.env import init_parallel  # noqa: E402
from llmpre.parallel.optimizer import ShardedAdamW  # noqa: E402
from llmpre.train.optim import clip_coefficient  # noqa: E402


def numpy_adamw(p, grads, lr, b1, b2, eps, wd, decay):
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decay:
            p = p - (lr * wd) * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


def make(name, value):
    p = paddle.create_parameter(list(value.shape), "float32")
    p.set_value(value)
    return (name, p)


def single_process():
    return init_parallel(ParallelDims())


def adamw(named, **kw):
    return ShardedAdamW(named, single_process(), **kw)


def step(opt, lr, grad_scale=1.0):
    opt.reduce_gradients()
    opt.step(lr, grad_scale=grad_scale)


@pytest.mark.parametrize("name,decay", [("layers.0.mlp.up_proj.weight", True),
                                         ("layers.0.input_layernorm.weight", False),
                                         ("layers.0.self_attn.q_proj.bias", False)])
def test_matches_numpy_reference(name, decay):
    rng = np.random.default_rng(0)
    init = rng.standard_normal((5, 3)).astype(np.float32)
    grads = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(4)]
    named = [make(name, init), make("other.weight", init[0])]
    opt = adamw(named, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for g in grads:
        named[0][1].grad = paddle.to_tensor(g)
        named[1][1].grad = paddle.to_tensor(g[0])
        step(opt, 0.01)
    want = numpy_adamw(init, grads, 0.01, 0.9, 0.95, 1e-8, 0.1, decay)
    np.testing.assert_allclose(named[0][1].numpy(), want, rtol=1e-5, atol=1e-6)


def test_weight_decay_amount_is_not_rounded():
    """At lr * wd = 2e-6 the factor 1 - lr * wd rounds in float32 to a step of 2^-24,
    1.3% more than the decay asked for; applied as p - (lr wd) p, only each result's own rounding
    remains, unbiased over many values. Mean relative decay of 10^5 weights, one step,
    zero gradient (Adam's own update is 0): within 0.1% of lr * wd."""
    lr, wd = 2e-5, 0.1
    value = np.random.default_rng(3).uniform(1.0, 2.0, 100_000).astype(np.float32)
    named = [make("layers.0.mlp.up_proj.weight", value)]
    opt = adamw(named, weight_decay=wd)
    named[0][1].grad = paddle.zeros([100_000])
    step(opt, lr)
    decay = (value.astype(np.float64) - named[0][1].numpy()) / value
    assert abs(decay.mean() / (lr * wd) - 1) < 1e-3, decay.mean() / (lr * wd)
    rounded = np.float32(1 - np.float32(lr * wd))            # the old update's factor
    assert abs((1 - float(rounded)) / (lr * wd) - 1) > 1e-2    # which the bound above rules out


def test_grad_scale_and_norm():
    named = [make("a", np.zeros(2, np.float32)), make("b", np.zeros(1, np.float32))]
    named[0][1].grad = paddle.to_tensor(np.array([3.0, 0.0], np.float32))
    named[1][1].grad = paddle.to_tensor(np.array([4.0], np.float32))
    opt = adamw(named)
    opt.reduce_gradients()
    assert opt.grad_norm() == pytest.approx(5.0)
    opt.step(0.1, grad_scale=0.5)   # Adam is scale-invariant in g up to eps: the first step moves by lr
    np.testing.assert_allclose(named[0][1].numpy(), [-0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(named[1][1].numpy(), [-0.1], atol=1e-6)


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    init = rng.standard_normal((4,)).astype(np.float32)
    grads = [rng.standard_normal((4,)).astype(np.float32) for _ in range(4)]
    a = [make("w", init)]
    opt_a = adamw(a, weight_decay=0.01)
    for g in grads[:2]:
        a[0][1].grad = paddle.to_tensor(g)
        step(opt_a, 0.1)
    pieces = opt_a.state_pieces()
    b = [make("w", np.zeros(4, np.float32))]
    opt_b = adamw(b, weight_decay=0.01)
    opt_b.load_state_pieces(lambda name, lo, hi: tuple(x for x in pieces[name][0][2:]))
    opt_b.step_count = opt_a.step_count
    assert np.array_equal(a[0][1].numpy(), b[0][1].numpy())   # the master weights were published
    for g in grads[2:]:
        for params, opt in ((a, opt_a), (b, opt_b)):
            params[0][1].grad = paddle.to_tensor(g)
            step(opt, 0.1)
    assert np.array_equal(a[0][1].numpy(), b[0][1].numpy())


def test_clip_coefficient():
    assert clip_coefficient(5.0, 10.0) == 1.0          # below the limit
    assert clip_coefficient(5.0, 1.0) == pytest.approx(0.2)
    assert clip_coefficient(float("nan"), 1.0) == 1.0  # non-finite steps are skipped, not clipped
    assert clip_coefficient(5.0, 0.0) == 1.0           # clipping off
