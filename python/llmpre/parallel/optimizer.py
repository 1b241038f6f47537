"""Data-parallel gradient reduction and llmpre's AdamW, sharded (ZeRO stages 1-3).

This is the one AdamW of every layout, a single process included (one shard,
groups of size 1). The update (decoupled weight decay, bias-corrected moments,
as PyTorch's AdamW), with ``g`` the gradient times ``grad_scale`` (loss-scale
and clipping factors), on fp32 master weights:
    p <- p - (lr * wd) p                      (not for biases and norms)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
Its state is keyed by the model's structured parameter names, so checkpoints
load into any freshly built model of any layout.

Trainable parameters are packed into a flat fp32 layout
(:func:`llmpre.parallel.flat.flat_layout`) over the ``sharding`` ranks of
each data-parallel replica. Rank ``r`` of a sharding group owns part ``r`` of
every bucket: it keeps the fp32 master copy and the two moments of exactly
those elements (stage 1), receives only those gradient elements from a
reduce-scatter (stage 2), and, at stage 3, holds only those parameter
elements between uses (:mod:`llmpre.parallel.stage3`). After the update the
owned elements are all-gathered back into the parameters.

Without sharding (one shard: a single process, or pure tensor/pipeline/data
parallel) fp32 parameters are their own master weights: they become views of
one flat fp32 buffer, which the update changes in place (no copy, and 8 bytes
of state per parameter, as the planner counts). Otherwise each rank keeps an
fp32 master copy of the elements it owns.

Gradients are averaged over the data-parallel ranks (dp x sharding); those of
parameters replicated across tensor-parallel ranks whose ranks see different
data (sequence-parallel norms, replicated KV projections) are summed over tp
first. The global gradient norm counts every element once: split parameters
over tp, replicated ones on tp rank 0 only, over pipeline stages and shards.
"""

from __future__ import annotations

import numpy as np
import paddle

from llmpre.models import init
from llmpre.ops.select import select_ops
from llmpre.parallel.flat import flat_layout
from llmpre.parallel.tensor_parallel import NORM_SKIP, TP_GRAD_SUM, TP_SPLIT

LOW = (paddle.float16, paddle.bfloat16)


def no_decay(name: str) -> bool:
    """PaddleNLP's rule: no weight decay for parameters named *bias* or *norm*."""
    return "bias" in name or "norm" in name


def _owned_values(p, start: int, end: int) -> np.ndarray:
    """Flat elements ``[start, end)`` of parameter ``p`` as fp32 numpy (as stored: a bf16
    parameter's values rounded to bf16). A deferred parameter (stage 3: never materialised
    whole) computes only the rows that hold them."""
    if not init.is_lazy(p):
        flat = p.reshape([-1])[start:end]            # only the owned elements are copied and cast
        return (flat.astype("float32") if p.dtype in LOW else flat).numpy()
    shape = [int(s) for s in p.shape]
    row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    r0, r1 = start // row, -(-end // row)
    region = [(r0, r1)] + [(0, s) for s in shape[1:]]
    v = init.value(p, region)
    v = (v.astype("float32") if v.dtype in LOW else v).numpy().reshape(-1)
    return v[start - r0 * row:end - r0 * row]


SQ_CHUNK = 1 << 18   # elements of the gradient squared at a time by the norm


def _complement(runs: list, n: int) -> list:
    """The runs of [0, n) outside ``runs`` (sorted, disjoint)."""
    out, pos = [], 0
    for a, b in runs:
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if n > pos:
        out.append((pos, n))
    return out


def _add_run(runs: list, a: int, b: int) -> None:
    """Append [a, b) to ``runs``, merged with the last run when they touch."""
    if runs and runs[-1][1] == a:
        runs[-1] = (runs[-1][0], b)
    else:
        runs.append((a, b))


class ShardedAdamW:
    def __init__(self, named_parameters, env, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 bucket_numel: int | None = None, boundaries=(), update=None):
        self.env = env
        # the update's arithmetic: llmpre.ops' adamw (fused where built, unless the caller chose)
        self.update = update if update is not None else select_ops().adamw
        self.params = [(n, p) for n, p in named_parameters if not p.stop_gradient]
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        self.step_count = 0
        self.sharding = env.groups["sharding"]
        self.dp = env.groups["dp"]
        numels = [int(np.prod(p.shape)) for _, p in self.params]
        self.layout = flat_layout(numels, self.sharding.size, bucket_numel, boundaries=boundaries)
        self.rank = max(self.sharding.index, 0)
        self.pieces = self.layout.pieces(self.rank)
        n = self.layout.shard_numel(self.rank)
        # filled piece by piece: no staging copy of the shard; padding stays 0
        self.master = paddle.zeros([n], dtype="float32")
        decayed, uncounted = [], []     # (start, end) runs of the shard; padding is neither
        tp_first = env.groups["tp"].index == 0
        for pc in self.pieces:
            name, p = self.params[pc.param]
            a, b = pc.local_start, pc.local_start + pc.param_end - pc.param_start
            self.master[a:b] = paddle.to_tensor(_owned_values(p, pc.param_start, pc.param_end))
            if not no_decay(name):
                _add_run(decayed, a, b)
            once = hasattr(p, TP_SPLIT) or tp_first
            if getattr(p, NORM_SKIP, False) or not once:     # another copy is counted elsewhere
                _add_run(uncounted, a, b)
        # one shard of fp32 parameters: the parameters themselves are the master weights
        self.aliased = (self.sharding.size == 1 and not boundaries
                        and all(p.dtype == paddle.float32 for _, p in self.params))
        if self.aliased:
            self._alias_parameters()
        # the weight-decay and grad-norm masks as runs, not arrays (two fp32 values an
        # element would cost as much as the master weights); padding elements are 0 in
        # every buffer, so what a mask says about them changes nothing
        self.decayed_runs = decayed
        self.uncounted_runs = uncounted
        self.norm_all = not uncounted   # every element counts: nothing to zero
        self.exp_avg = paddle.zeros([n], dtype="float32")
        self.exp_avg_sq = paddle.zeros([n], dtype="float32")
        self.grad_shard: paddle.Tensor | None = None
        self._grad_buffer: paddle.Tensor | None = None   # see _flat_grad(reuse=True)
        # Stage 3: buckets whose parameters are materialised only while in use;
        # their gradients are reduced as each unit finishes its backward.
        self.released: set = set()
        self.grad_accum: dict = {}

    def _alias_parameters(self) -> None:
        """Make every parameter a view of ``self.master`` (one shard: the master
        covers every element, in the flat layout's order)."""
        for i, (_, p) in enumerate(self.params):
            off = self.layout.offsets[i]
            self.master[off:off + self.layout.numels[i]].reshape(p.shape)._share_buffer_to(p)

    def _check_aliases(self) -> None:
        for name, p in self.params:
            if not p._is_shared_buffer_with(self.master):
                raise RuntimeError(f"parameter {name} no longer shares the optimizer's flat buffer "
                                   "(its storage was replaced after the optimizer was built); "
                                   "change parameters in place (set_value) instead")

    # ---- gradients -------------------------------------------------------------
    @paddle.no_grad()
    def _flat_grad(self, b, reuse: bool = False) -> paddle.Tensor:
        """The fp32 gradients of bucket ``b`` packed into the flat layout (zeros for padding).
        ``reuse``: written into one buffer kept between steps (its pages stay mapped; a fresh
        ~100 MB concatenation faulted them in every step): only for a caller that is done
        with the result before the next call."""
        if reuse:
            return self._flat_grad_into(b)
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
        return paddle.concat(parts) if len(parts) > 1 else parts[0]

    def _flat_grad_into(self, b) -> paddle.Tensor:
        buf = self._grad_buffer
        if buf is None or int(buf.shape[0]) != b.end - b.start:
            buf = self._grad_buffer = paddle.zeros([b.end - b.start], dtype="float32")
        pos = b.start
        for i in b.params:
            g = self.params[i][1].grad
            off, n = self.layout.offsets[i], self.layout.numels[i]
            if off > pos:
                buf[pos - b.start:off - b.start].zero_()
            view = buf[off - b.start:off - b.start + n]
            if g is None:
                view.zero_()
            else:
                view.copy_(g.astype("float32").reshape([-1]), False)
            pos = off + n
        if b.end > pos:
            buf[pos - b.start:].zero_()
        return buf

    @paddle.no_grad()
    def _reduce_bucket(self, k: int, reuse: bool = False) -> paddle.Tensor:
        """Sum tp-replicated gradients over tp, then this rank's shard of the bucket's
        gradient summed over every data rank (not yet averaged); frees the gradients.
        ``reuse``: see :meth:`_flat_grad`."""
        b = self.layout.buckets[k]
        tp = self.env.groups["tp"]
        if tp.size > 1:
            for i in b.params:
                p = self.params[i][1]
                if getattr(p, TP_GRAD_SUM, False) and p.grad is not None:
                    tp.all_reduce(p.grad)
        part = self.sharding.reduce_scatter(self._flat_grad(b, reuse), axis=0)
        self.dp.all_reduce(part)
        seq = self.env.groups.get("seq")
        if seq is not None:     # sep / cp: each rank's loss is its share of the group's (a sum)
            seq.all_reduce(part)
        for i in b.params:
            self.params[i][1].clear_gradient(set_to_zero=False)
        return part

    @paddle.no_grad()
    def reduce_bucket_now(self, k: int) -> None:
        """Stage 3: reduce one unit's gradients as soon as its backward is done."""
        part = self._reduce_bucket(k)
        self.grad_accum[k] = part if k not in self.grad_accum else self.grad_accum[k] + part

    @paddle.no_grad()
    def reduce_gradients(self) -> None:
        """Average the gradients over the data ranks and keep this rank's shard
        (``self.grad_shard``); the parameters' own gradients are released (stage 2
        semantics: only the shard survives)."""
        scale = 1.0 / self.env.dims.data_parallel_size
        # one bucket, one shard: the packed gradient is the shard, spent by step()
        # before the next reduction rewrites it
        reuse = self.sharding.size == 1 and len(self.layout.buckets) == 1
        shards = []
        for k, b in enumerate(self.layout.buckets):
            if k in self.released:
                part = self.grad_accum.pop(k, None)
                shards.append(part if part is not None else
                              paddle.zeros([(b.end - b.start) // self.sharding.size], "float32"))
            else:
                shards.append(self._reduce_bucket(k, reuse))
        grad = paddle.concat(shards) if len(shards) > 1 else shards[0]
        self.grad_shard = grad.scale_(scale) if scale != 1.0 else grad   # ours: changed in place

    @paddle.no_grad()
    def grad_norm(self) -> float:
        """Global L2 norm of the (reduced) gradient, every element counted once."""
        return float(paddle.sqrt(self.grad_sq()).item())

    @paddle.no_grad()
    def grad_sq(self) -> paddle.Tensor:
        """The squared norm of :meth:`grad_norm`, summed over the sharding, tp and pp ranks."""
        g = self.grad_shard
        runs = [(0, int(g.shape[0]))] if self.norm_all else _complement(self.uncounted_runs, int(g.shape[0]))
        # one partial sum per 1 MiB chunk: the squares of a chunk reuse one cached block,
        # where the squares of the whole shard (~100 MB) were fresh pages faulted in each step
        parts = [paddle.sum(paddle.square(g[i:min(i + SQ_CHUNK, b)]))
                 for a, b in runs for i in range(a, b, SQ_CHUNK)]
        sq = paddle.sum(paddle.stack(parts)) if parts else paddle.zeros([], "float32")
        for axis in ("sharding", "tp", "pp"):
            self.env.groups[axis].all_reduce(sq)
        return sq

    # ---- update ----------------------------------------------------------------
    @paddle.no_grad()
    def step(self, lr: float, grad_scale: float = 1.0) -> None:
        """The update of the module docstring, in place on the flat buffers
        (:func:`llmpre.ops.reference.adamw_`, or its one-pass kernel
        :func:`llmpre.ops.fused.adamw_`): the gradient shard (ours after
        :meth:`reduce_gradients`) is spent."""
        self.step_count += 1
        self.update(self.master, self.grad_shard, self.exp_avg, self.exp_avg_sq, lr=lr, beta1=self.beta1,
                    beta2=self.beta2, eps=self.eps, weight_decay=self.weight_decay, step=self.step_count,
                    grad_scale=grad_scale, decayed_runs=self.decayed_runs)   # g is spent
        self.grad_shard = None
        if self.aliased:
            self._check_aliases()   # the update already changed the parameters
        else:
            self.publish()

    def _owned_chunks(self) -> list[paddle.Tensor]:
        """This rank's master elements, one slice per bucket."""
        pos, chunks = 0, []
        for lo, hi in self.layout.shard_ranges(self.rank):
            chunks.append(self.master[pos:pos + hi - lo])
            pos += hi - lo
        return chunks

    @paddle.no_grad()
    def _write_bucket(self, k: int, full: paddle.Tensor, share: bool) -> None:
        b = self.layout.buckets[k]
        for i in b.params:
            _, p = self.params[i]
            off = self.layout.offsets[i] - b.start
            value = full[off:off + self.layout.numels[i]].reshape(p.shape)
            dtype = init.storage_dtype(p)
            if dtype != "float32":
                value = value.astype(dtype)
            if share or not p._is_initialized():
                value.contiguous()._share_buffer_to(p)
            else:
                p.set_value(value)

    @paddle.no_grad()
    def publish(self) -> None:
        """All-gather the owned master elements and write every parameter (stage-3
        buckets are left released: they are gathered on their next use)."""
        if self.aliased:
            return
        for k, chunk in enumerate(self._owned_chunks()):
            if k not in self.released:
                self._write_bucket(k, self.sharding.all_gather(chunk, axis=0), share=False)

    @paddle.no_grad()
    def gather_bucket(self, k: int) -> None:
        """Stage 3: materialise bucket ``k``'s parameters from the shards."""
        chunk = self._owned_chunks()[k]
        self._write_bucket(k, self.sharding.all_gather(chunk, axis=0), share=True)

    def release_bucket(self, k: int) -> None:
        """Stage 3: free bucket ``k``'s parameters until their next use."""
        for i in self.layout.buckets[k].params:
            self.params[i][1]._clear_data()
        self.released.add(k)

    def materialise_all(self) -> list:
        """Gather every released bucket (for saving or loading); returns them."""
        ks = sorted(self.released)
        for k in ks:
            self.gather_bucket(k)
        return ks

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
        """Fill the owned elements from ``lookup(name, start, end) -> (m, v, master)`` and
        write the parameters from the master weights (stage 3's released buckets stay
        released: their next use gathers them from the new shards)."""
        m, v, w = self.exp_avg.numpy(), self.exp_avg_sq.numpy(), self.master.numpy()
        for pc in self.pieces:
            name, _ = self.params[pc.param]
            span = slice(pc.local_start, pc.local_start + pc.param_end - pc.param_start)
            m[span], v[span], w[span] = lookup(name, pc.param_start, pc.param_end)
        self.exp_avg.set_value(m)
        self.exp_avg_sq.set_value(v)
        self.master.set_value(w)
        self.publish()
        for k in sorted(self.released):     # gathered since (a save): free them again
            self.release_bucket(k)
