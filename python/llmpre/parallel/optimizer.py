"""Data-parallel gradient reduction and the sharded AdamW (ZeRO stages 1-3).

Trainable parameters are packed into a flat fp32 layout
(:func:`llmpre.parallel.flat.flat_layout`) over the ``sharding`` ranks of
each data-parallel replica. Rank ``r`` of a sharding group owns part ``r`` of
every bucket: it keeps the fp32 master copy and the two moments of exactly
those elements (stage 1), receives only those gradient elements from a
reduce-scatter (stage 2), and, at stage 3, holds only those parameter
elements between uses (:mod:`llmpre.parallel.stage3`). After the update the
owned elements are all-gathered back into the parameters.

Gradients are averaged over the data-parallel ranks (dp x sharding); those of
parameters replicated across tensor-parallel ranks whose ranks see different
data (sequence-parallel norms, replicated KV projections) are summed over tp
first. The global gradient norm counts every element once: split parameters
over tp, replicated ones on tp rank 0 only, over pipeline stages and shards.
"""

from __future__ import annotations

import math

import numpy as np
import paddle

from llmpre.parallel.flat import flat_layout
from llmpre.parallel.tensor_parallel import NORM_SKIP, TP_GRAD_SUM, TP_SPLIT
from llmpre.train.optim import no_decay

LOW = (paddle.float16, paddle.bfloat16)


class ShardedAdamW:
    def __init__(self, named_parameters, env, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 bucket_numel: int | None = None):
        self.env = env
        self.params = [(n, p) for n, p in named_parameters if not p.stop_gradient]
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        self.step_count = 0
        self.sharding = env.groups["sharding"]
        self.dp = env.groups["dp"]
        numels = [int(np.prod(p.shape)) for _, p in self.params]
        self.layout = flat_layout(numels, self.sharding.size, bucket_numel)
        self.rank = max(self.sharding.index, 0)
        self.pieces = self.layout.pieces(self.rank)
        n = self.layout.shard_numel(self.rank)
        master = np.zeros(n, np.float32)
        decay = np.zeros(n, np.float32)
        counted = np.zeros(n, np.float32)   # 1 where this element counts toward the global norm
        tp_first = env.groups["tp"].index == 0
        for pc in self.pieces:
            name, p = self.params[pc.param]
            flat = p.astype("float32").numpy().reshape(-1) if p.dtype in LOW else p.numpy().reshape(-1)
            span = slice(pc.local_start, pc.local_start + pc.param_end - pc.param_start)
            master[span] = flat[pc.param_start:pc.param_end]
            decay[span] = 0.0 if no_decay(name) else 1.0
            once = hasattr(p, TP_SPLIT) or tp_first
            counted[span] = 0.0 if getattr(p, NORM_SKIP, False) or not once else 1.0
        self.master = paddle.to_tensor(master)
        self.exp_avg = paddle.zeros([n], dtype="float32")
        self.exp_avg_sq = paddle.zeros([n], dtype="float32")
        self.decay_mask = paddle.to_tensor(decay)
        self.norm_mask = paddle.to_tensor(counted)
        self.grad_shard: paddle.Tensor | None = None

    # ---- gradients -------------------------------------------------------------
    @paddle.no_grad()
    def _flat_grads(self) -> list[paddle.Tensor]:
        """Per bucket: the fp32 gradients packed into the flat layout (zeros for padding)."""
        out = []
        for b in self.layout.buckets:
            parts, pos = [], b.start
            for i in b.params:
                _, p = self.params[i]
                off = self.layout.offsets[i]
                if off > pos:
                    parts.append(paddle.zeros([off - pos], dtype="float32"))
                g = p.grad
                g = paddle.zeros([self.layout.numels[i]], "float32") if g is None else g.astype("float32").reshape([-1])
                parts.append(g)
                pos = off + self.layout.numels[i]
            if b.end > pos:
                parts.append(paddle.zeros([b.end - pos], dtype="float32"))
            out.append(paddle.concat(parts) if len(parts) > 1 else parts[0])
        return out

    @paddle.no_grad()
    def reduce_gradients(self) -> None:
        """Sum tp-replicated gradients over tp, then average over the data ranks and
        keep this rank's shard (``self.grad_shard``); the parameters' own gradients
        are released (stage 2 semantics: only the shard survives)."""
        tp = self.env.groups["tp"]
        if tp.size > 1:
            for _, p in self.params:
                if getattr(p, TP_GRAD_SUM, False) and p.grad is not None:
                    tp.all_reduce(p.grad)
        scale = 1.0 / self.env.dims.data_parallel_size
        shards = []
        for flat in self._flat_grads():
            part = self.sharding.reduce_scatter(flat, axis=0)
            self.dp.all_reduce(part)
            shards.append(part)
        grad = paddle.concat(shards) if len(shards) > 1 else shards[0]
        self.grad_shard = grad * scale
        for _, p in self.params:
            p.clear_gradient(set_to_zero=False)

    @paddle.no_grad()
    def grad_norm(self) -> float:
        """Global L2 norm of the (reduced) gradient, every element counted once."""
        sq = paddle.sum(paddle.square(self.grad_shard) * self.norm_mask)
        for axis in ("sharding", "tp", "pp"):
            self.env.groups[axis].all_reduce(sq)
        return float(paddle.sqrt(sq).item())

    # ---- update ----------------------------------------------------------------
    @paddle.no_grad()
    def step(self, lr: float, grad_scale: float = 1.0) -> None:
        self.step_count += 1
        t = self.step_count
        b1, b2 = self.beta1, self.beta2
        g = self.grad_shard * grad_scale if grad_scale != 1.0 else self.grad_shard
        self.exp_avg.scale_(b1).add_(g * (1.0 - b1))
        self.exp_avg_sq.scale_(b2).add_(g * g * (1.0 - b2))
        if self.weight_decay:
            self.master.multiply_(1.0 - lr * self.weight_decay * self.decay_mask)
        denom = self.exp_avg_sq.sqrt() * (1.0 / math.sqrt(1.0 - b2 ** t)) + self.eps
        self.master.subtract_(self.exp_avg / denom * (lr / (1.0 - b1 ** t)))
        self.grad_shard = None
        self.publish()

    @paddle.no_grad()
    def publish(self) -> None:
        """All-gather the owned master elements and write every parameter."""
        pos = 0
        chunks = []
        for lo, hi in self.layout.shard_ranges(self.rank):
            chunks.append(self.master[pos:pos + hi - lo])
            pos += hi - lo
        full_buckets = [self.sharding.all_gather(c, axis=0) for c in chunks]
        for b, full in zip(self.layout.buckets, full_buckets):
            for i in b.params:
                _, p = self.params[i]
                off = self.layout.offsets[i] - b.start
                value = full[off:off + self.layout.numels[i]].reshape(p.shape)
                p.set_value(value.astype(p.dtype) if p.dtype != paddle.float32 else value)

    def zero_grad(self) -> None:
        for _, p in self.params:
            p.clear_gradient(set_to_zero=False)
        self.grad_shard = None

    # ---- checkpoints (layout independent: per-parameter element ranges) ---------
    def state_pieces(self) -> dict:
        """``{name: [(start, end, exp_avg, exp_avg_sq, master)]}`` for the elements this
        rank owns, as flat ranges of each parameter's local (tp-sliced) tensor."""
        out: dict = {}
        m, v, w = self.exp_avg.numpy(), self.exp_avg_sq.numpy(), self.master.numpy()
        for pc in self.pieces:
            name, _ = self.params[pc.param]
            span = slice(pc.local_start, pc.local_start + pc.param_end - pc.param_start)
            out.setdefault(name, []).append((pc.param_start, pc.param_end, m[span], v[span], w[span]))
        return out

    def load_state_pieces(self, lookup) -> None:
        """Fill the owned elements from ``lookup(name, start, end) -> (m, v, master)``."""
        m, v, w = self.exp_avg.numpy(), self.exp_avg_sq.numpy(), self.master.numpy()
        for pc in self.pieces:
            name, _ = self.params[pc.param]
            span = slice(pc.local_start, pc.local_start + pc.param_end - pc.param_start)
            m[span], v[span], w[span] = lookup(name, pc.param_start, pc.param_end)
        self.exp_avg.set_value(m)
        self.exp_avg_sq.set_value(v)
        self.master.set_value(w)
        self.publish()
