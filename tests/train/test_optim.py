"""AdamW against a numpy transcription of the update rule; state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from llmpre.runtime import import_paddle

paddle = import_paddle()

from llmpre.train.optim import AdamW, clip_grad_norm_  # noqa: E402


def numpy_adamw(p, grads, lr, b1, b2, eps, wd, decay):
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decay:
            p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


def make(name, value):
    p = paddle.create_parameter(list(value.shape), "float32")
    p.set_value(value)
    return (name, p)


@pytest.mark.parametrize("name,decay", [("layers.0.mlp.up_proj.weight", True),
                                         ("layers.0.input_layernorm.weight", False),
                                         ("layers.0.self_attn.q_proj.bias", False)])
def test_matches_numpy_reference(name, decay):
    rng = np.random.default_rng(0)
    init = rng.standard_normal((5, 3)).astype(np.float32)
    grads = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(4)]
    named = [make(name, init)]
    opt = AdamW(named, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for g in grads:
        named[0][1].grad = paddle.to_tensor(g)
        opt.step(0.01)
    want = numpy_adamw(init, grads, 0.01, 0.9, 0.95, 1e-8, 0.1, decay)
    np.testing.assert_allclose(named[0][1].numpy(), want, rtol=1e-5, atol=1e-6)


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    init = rng.standard_normal((4,)).astype(np.float32)
    grads = [rng.standard_normal((4,)).astype(np.float32) for _ in range(4)]
    a = [make("w", init)]
    opt_a = AdamW(a, weight_decay=0.01)
    for g in grads[:2]:
        a[0][1].grad = paddle.to_tensor(g)
        opt_a.step(0.1)
    arrays, scalars = opt_a.state_dict()
    b = [make("w", a[0][1].numpy())]
    opt_b = AdamW(b, weight_decay=0.01)
    opt_b.load_state_dict(arrays, scalars)
    for g in grads[2:]:
        for params, opt in ((a, opt_a), (b, opt_b)):
            params[0][1].grad = paddle.to_tensor(g)
            opt.step(0.1)
    assert np.array_equal(a[0][1].numpy(), b[0][1].numpy())
    with pytest.raises(ValueError, match="missing"):
        AdamW([make("other", init)]).load_state_dict(arrays, scalars)


def test_clip_grad_norm():
    named = [make("a", np.zeros(2, np.float32)), make("b", np.zeros(1, np.float32))]
    named[0][1].grad = paddle.to_tensor(np.array([3.0, 0.0], np.float32))
    named[1][1].grad = paddle.to_tensor(np.array([4.0], np.float32))
    assert clip_grad_norm_(named, 10.0) == pytest.approx(5.0)
    assert named[1][1].grad.numpy()[0] == pytest.approx(4.0)   # below the limit: untouched
    assert clip_grad_norm_(named, 1.0) == pytest.approx(5.0)
    assert named[0][1].grad.numpy()[0] == pytest.approx(0.6)
    assert named[1][1].grad.numpy()[0] == pytest.approx(0.8)
