"""Sharding stage 3: decoder-layer parameters live only as shards between uses.

Each decoder layer is one unit whose parameters fill one bucket of the sharded
optimizer's flat layout. Its forward all-gathers the bucket from the ranks'
fp32 master shards (cast to the parameters' dtype), runs the layer without
keeping activations, and frees the parameters again. Its backward gathers
them once more, recomputes the layer with gradients, back-propagates,
reduce-scatters the unit's gradients into the owning ranks' shards right away
and frees everything. So at most one layer's full parameters (and gradients)
exist at a time, at the price of recomputing each layer's forward (stage 3
here implies full recompute). The embedding, final norm and head stay whole
(stage-2 treatment).
"""

from __future__ import annotations

import paddle
from paddle.autograd import PyLayer

from llmpre.models import init
from llmpre.parallel.recompute import with_side_outputs


class Unit:
    """A layer's forward and its buckets: ``[(optimizer, bucket)]``, one per optimizer part
    (expert parallelism: the dense part's and the rank's experts')."""

    def __init__(self, forward, buckets: list):
        self.forward, self.buckets = forward, buckets

    def gather(self):
        for optimizer, k in self.buckets:
            optimizer.gather_bucket(k)

    def release(self):
        for optimizer, k in self.buckets:
            optimizer.release_bucket(k)

    def reduce(self):
        for optimizer, k in self.buckets:
            optimizer.reduce_bucket_now(k)


class _Stage3(PyLayer):
    @staticmethod
    def forward(ctx, unit, x, *rest):
        ctx.unit, ctx.rest = unit, rest
        unit.gather()
        with paddle.no_grad():
            y = unit.forward(x, *rest)
        unit.release()
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, *grads):
        (x,) = ctx.saved_tensor()
        unit = ctx.unit
        unit.gather()
        x = x.detach()
        x.stop_gradient = False
        with paddle.enable_grad():
            out = unit.forward(x, *ctx.rest)
        outs = out if isinstance(out, tuple) else (out,)   # (y, router scores) of a MoE layer
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and not o.stop_gradient]
        paddle.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        unit.reduce()
        unit.release()
        return x.grad


def outside_units(name: str) -> bool:
    """Whether a parameter stays whole under stage 3 (not a decoder layer's)."""
    return not name.startswith("layers.")


def unit_boundaries(named_params) -> list[int]:
    """Indices (in ``named_params`` order) where each decoder layer's parameters
    start, and where the parameters after the last layer start."""
    starts, current = [], None
    for i, (name, _) in enumerate(named_params):
        layer = name.split(".")[1] if name.startswith("layers.") else None
        if layer != current:
            starts.append(i)
            current = layer
    return starts


def shard_parameters(model, named_params, optimizer) -> int:
    """Turn every decoder layer into a stage-3 unit; returns how many. A layer's parameters
    the optimizer does not train (DeepSeek-V3's routing bias) are in no unit: they stay whole."""
    trained = {name for name, _ in named_params}
    init.materialize(model, lambda name: name not in trained)
    buckets: dict = {}     # layer index -> [(optimizer part, the bucket of its first parameter)]
    for part in getattr(optimizer, "parts", (optimizer,)):    # expert parallelism: two parts
        bucket_of = {i: k for k, b in enumerate(part.layout.buckets) for i in b.params}
        for i, (name, _) in enumerate(part.params):
            if name.startswith("layers."):
                index = int(name.split(".")[1])
                if all(p is not part for p, _ in buckets.get(index, [])):
                    buckets.setdefault(index, []).append((part, bucket_of[i]))
    for index, layer in enumerate(model.layers):   # layer(x, *args) -> x for every family
        if index not in buckets:
            continue
        fn, unpack = with_side_outputs(layer, layer.forward)
        unit = Unit(fn, buckets[index])
        layer.forward = (lambda u, un: lambda x, *rest: un(_Stage3.apply(u, x, *rest)))(unit, unpack)
        unit.release()
    return len(buckets)
