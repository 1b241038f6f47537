"""Activation recomputation: run a function without keeping its intermediates,
and run it again (with gradients) during backward.

Deterministic models only need the inputs kept; the RNG state is saved and
restored around the second run anyway, so dropout would repeat its mask.
"""

from __future__ import annotations

import paddle
from paddle.autograd import PyLayer


class _Recompute(PyLayer):
    @staticmethod
    def forward(ctx, fn, num_grad_inputs, *args):
        ctx.fn = fn
        ctx.num = num_grad_inputs
        ctx.rest = args[num_grad_inputs:]
        ctx.rng = paddle.get_rng_state()
        ctx.save_for_backward(*args[:num_grad_inputs])
        with paddle.no_grad():
            out = fn(*args)
        return out

    @staticmethod
    def backward(ctx, *grads):
        inputs = []
        for t in ctx.saved_tensor():
            d = t.detach()
            d.stop_gradient = False
            inputs.append(d)
        now = paddle.get_rng_state()
        paddle.set_rng_state(ctx.rng)
        with paddle.enable_grad():
            out = ctx.fn(*inputs, *ctx.rest)
        paddle.set_rng_state(now)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        pairs = [(o, g) for o, g in zip(outs, grads) if isinstance(o, paddle.Tensor) and g is not None
                 and not o.stop_gradient]
        paddle.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return tuple(t.grad for t in inputs)


def recompute(fn, *args, num_grad_inputs: int = 1):
    """``fn(*args)`` where the first ``num_grad_inputs`` arguments are the tensors
    gradients flow to (activations); the rest are constants (tables, ids, None).
    Parameters used inside ``fn`` receive their gradients during backward."""
    if not any(isinstance(a, paddle.Tensor) and not a.stop_gradient for a in args[:num_grad_inputs]):
        return fn(*args)  # nothing to differentiate (e.g. evaluation): plain call
    return _Recompute.apply(fn, num_grad_inputs, *args)


def with_side_outputs(layer, forward):
    """``layer.forward`` prepared for a wrapper that reruns it in backward (recomputation,
    stage 3), which passes gradients only through what the wrapped function returns: a
    sparse MoE layer's router scores (``layer.router_stats[1]``, which the auxiliary loss
    differentiates; models.stage) become a second output. Returns ``(fn, unpack)``:
    ``unpack(wrapper's output)`` puts the scores back on the layer and returns the
    hidden states."""
    if not getattr(layer, "sparse", False):
        return forward, lambda out: out

    def both(x, *rest):
        y = forward(x, *rest)
        return y, layer.router_stats[1]

    def unpack(out):
        y, scores = out
        layer.router_stats = (layer.router_stats[0], scores)
        return y
    return both, unpack
