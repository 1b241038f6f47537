"""Process groups and the collectives llmpre's parallel layers use.

Groups are Paddle process groups (NCCL on GPUs, gloo on CPUs, picked by
``paddle.distributed.launch``); the same code runs on both. Where a backend
lacks an operation, :class:`Group` composes it from ones it has, chosen by
probing the backend once (capability, not device name): gloo has no
reduce_scatter, so it becomes all-reduce + slice there.

Autograd pairs (forward | backward), Megatron's mappings:

    copy_to(x)            identity        | all-reduce      (input of column-parallel)
    reduce_from(x)        all-reduce      | identity        (output of row-parallel)
    scatter_seq(x)        keep own slice  | all-gather      (enter sequence parallel)
    gather_seq(x)         all-gather      | keep own slice  (leave sequence parallel)
    all_gather_seq(x)     all-gather      | reduce-scatter  (input of column-parallel, SP)
    reduce_scatter_seq(x) reduce-scatter  | all-gather      (output of row-parallel, SP)
    seq_to_heads(x)       all-to-all      | all-to-all back (enter sep attention)
    heads_to_seq(x)       all-to-all      | all-to-all back (leave sep attention)
    exchange_rows(x, C)   uneven all-to-all by C | the same by C transposed (expert dispatch/combine)

Point-to-point: ``ring_shift`` (ring attention) is built from all-gather: on gloo
Paddle 3.3.1's send/recv between members of a ``new_group`` timed out (measured, 3
ranks, even ranks sending first), and ``all_to_all`` likewise, since gloo has no
all-to-all. Both move N times the data a native exchange would (open: NCCL's
send/recv and all-to-all).
"""

from __future__ import annotations

import logging

import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer

logger = logging.getLogger("llmpre")


class Group:
    """A process group plus this rank's position in it. Size-1 groups do nothing."""

    def __init__(self, ranks: list[int], handle, rank: int):
        self.ranks = list(ranks)
        self.handle = handle          # paddle group, or None when size 1
        self.size = len(ranks)
        self.index = self.ranks.index(rank) if rank in self.ranks else -1
        self.native_reduce_scatter = False

    def probe(self) -> None:
        """Find out whether the backend has reduce_scatter (gloo does not)."""
        if self.size == 1:
            return
        try:
            out = paddle.zeros([1])
            dist.reduce_scatter(out, [paddle.ones([1]) for _ in range(self.size)], group=self.handle)
            self.native_reduce_scatter = True
        except (NotImplementedError, RuntimeError, ValueError):
            self.native_reduce_scatter = False

    # -- plain collectives (no autograd) ---------------------------------------
    def all_reduce(self, x: paddle.Tensor, op=None) -> paddle.Tensor:
        """Sum (or ``op``) over the group, in place; returns x."""
        if self.size > 1:
            dist.all_reduce(x, op=op if op is not None else dist.ReduceOp.SUM, group=self.handle)
        return x

    def all_gather(self, x: paddle.Tensor, axis: int = 0) -> paddle.Tensor:
        """Concatenation of every rank's ``x`` along ``axis`` (rank order)."""
        if self.size == 1:
            return x
        parts: list = []
        dist.all_gather(parts, x.contiguous() if hasattr(x, "contiguous") else x, group=self.handle)
        return paddle.concat(parts, axis=axis)

    def reduce_scatter(self, x: paddle.Tensor, axis: int = 0) -> paddle.Tensor:
        """This rank's slice (along ``axis``, equal parts) of the group sum of ``x``."""
        if self.size == 1:
            return x
        if self.native_reduce_scatter:
            parts = [p.contiguous() if hasattr(p, "contiguous") else p
                     for p in paddle.split(x, self.size, axis=axis)]
            out = paddle.empty_like(parts[0])
            dist.reduce_scatter(out, parts, group=self.handle)
            return out
        total = x.clone()
        dist.all_reduce(total, group=self.handle)
        return paddle.split(total, self.size, axis=axis)[self.index]

    def ring_shift(self, x: paddle.Tensor) -> paddle.Tensor:
        """The ``x`` of the previous member of the ring (index - 1, wrapping)."""
        if self.size == 1:
            return x
        parts: list = []
        dist.all_gather(parts, x.contiguous() if hasattr(x, "contiguous") else x, group=self.handle)
        return parts[(self.index - 1) % self.size]

    def all_to_all(self, x: paddle.Tensor, split_axis: int, concat_axis: int) -> paddle.Tensor:
        """Split ``x`` in ``size`` equal parts along ``split_axis``, send part j to
        member j, and concatenate what arrives along ``concat_axis`` in member order."""
        if self.size == 1:
            return x
        parts: list = []
        dist.all_gather(parts, x.contiguous() if hasattr(x, "contiguous") else x, group=self.handle)
        mine = [paddle.split(p, self.size, axis=split_axis)[self.index] for p in parts]
        return paddle.concat(mine, axis=concat_axis)

    def exchange_counts(self, counts: paddle.Tensor) -> list[list[int]]:
        """Every member's ``counts`` (an int vector, the same length on each), read to the
        host as a matrix: row ``s`` is member ``s``'s. The one host read of an uneven
        all-to-all (its buffers are sized from it)."""
        if self.size == 1:
            return [[int(v) for v in counts.tolist()]]
        return [[int(v) for v in row] for row in self.all_gather(counts.unsqueeze(0), axis=0).tolist()]

    def all_to_all_rows(self, x: paddle.Tensor, counts: list[list[int]]) -> paddle.Tensor:
        """Uneven all-to-all of rows: ``counts[s][d]`` rows go from member ``s`` to member
        ``d``. Each member's ``x`` holds its rows grouped by destination (member order);
        the result holds the rows received, grouped by source (member order). ``counts``
        is the whole matrix, the same on every member (:meth:`exchange_counts`).

        Composed from all-gather (gloo has no all-to-all; module doc): every member's rows
        padded to the longest, gathered, and this member's blocks kept."""
        if self.size == 1:
            return x
        me, tail = self.index, list(x.shape[1:])
        width = max(sum(row) for row in counts)
        if width == 0:
            return paddle.zeros([0] + tail, dtype=x.dtype)
        pad = width - int(x.shape[0])
        padded = paddle.concat([x, paddle.zeros([pad] + tail, dtype=x.dtype)]) if pad else x
        parts: list = []
        dist.all_gather(parts, padded.contiguous() if hasattr(padded, "contiguous") else padded,
                        group=self.handle)
        mine = []
        for s, part in enumerate(parts):
            start, n = sum(counts[s][:me]), counts[s][me]
            if n:
                mine.append(part[start:start + n])
        if not mine:
            return paddle.zeros([0] + tail, dtype=x.dtype)
        return paddle.concat(mine) if len(mine) > 1 else mine[0].clone()

    def broadcast(self, x: paddle.Tensor, src_index: int = 0) -> paddle.Tensor:
        if self.size > 1:
            dist.broadcast(x, src=self.ranks[src_index], group=self.handle)
        return x

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(group=self.handle)


# -- autograd pairs -------------------------------------------------------------
class _CopyTo(PyLayer):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return ctx.group.all_reduce(g.clone())


class _ReduceFrom(PyLayer):
    @staticmethod
    def forward(ctx, x, group):
        return group.all_reduce(x.clone())

    @staticmethod
    def backward(ctx, g):
        return g


class _ScatterSeq(PyLayer):
    @staticmethod
    def forward(ctx, x, group, axis):
        ctx.group, ctx.axis = group, axis
        return paddle.split(x, group.size, axis=axis)[group.index].clone()

    @staticmethod
    def backward(ctx, g):
        return ctx.group.all_gather(g, ctx.axis)


class _GatherSeq(PyLayer):
    @staticmethod
    def forward(ctx, x, group, axis):
        ctx.group, ctx.axis = group, axis
        return group.all_gather(x, axis)

    @staticmethod
    def backward(ctx, g):
        return paddle.split(g, ctx.group.size, axis=ctx.axis)[ctx.group.index].clone()


class _AllGatherSeq(PyLayer):
    @staticmethod
    def forward(ctx, x, group, axis):
        ctx.group, ctx.axis = group, axis
        return group.all_gather(x, axis)

    @staticmethod
    def backward(ctx, g):
        return ctx.group.reduce_scatter(g, ctx.axis)


class _ReduceScatterSeq(PyLayer):
    @staticmethod
    def forward(ctx, x, group, axis):
        ctx.group, ctx.axis = group, axis
        return group.reduce_scatter(x, axis)

    @staticmethod
    def backward(ctx, g):
        return ctx.group.all_gather(g, ctx.axis)


class _AllToAll(PyLayer):
    @staticmethod
    def forward(ctx, x, group, split_axis, concat_axis):
        ctx.group, ctx.axes = group, (split_axis, concat_axis)
        return group.all_to_all(x, split_axis, concat_axis)

    @staticmethod
    def backward(ctx, g):
        split_axis, concat_axis = ctx.axes
        return ctx.group.all_to_all(g, concat_axis, split_axis)


class _ExchangeRows(PyLayer):
    @staticmethod
    def forward(ctx, x, group, counts):
        ctx.group, ctx.counts = group, counts
        return group.all_to_all_rows(x, counts)

    @staticmethod
    def backward(ctx, g):
        back = [list(col) for col in zip(*ctx.counts)]      # counts transposed: the rows return
        return ctx.group.all_to_all_rows(g, back)


def exchange_rows(x, counts: list[list[int]], group: Group):
    """:meth:`Group.all_to_all_rows` with autograd (its backward sends the gradients
    back the way the rows came)."""
    return x if group.size == 1 else _ExchangeRows.apply(x, group, counts)


def seq_to_heads(x, group: Group):
    """``[b, s/N, heads, d]`` (this member's sequence part) -> ``[b, s, heads/N, d]``
    (this member's heads of the whole sequence)."""
    return x if group.size == 1 else _AllToAll.apply(x, group, 2, 1)


def heads_to_seq(x, group: Group):
    """The inverse of :func:`seq_to_heads`."""
    return x if group.size == 1 else _AllToAll.apply(x, group, 1, 2)


def copy_to(x, group: Group):
    return x if group.size == 1 else _CopyTo.apply(x, group)


def reduce_from(x, group: Group):
    return x if group.size == 1 else _ReduceFrom.apply(x, group)


def scatter_seq(x, group: Group, axis: int = 1):
    return x if group.size == 1 else _ScatterSeq.apply(x, group, axis)


def gather_seq(x, group: Group, axis: int = 1):
    return x if group.size == 1 else _GatherSeq.apply(x, group, axis)


def all_gather_seq(x, group: Group, axis: int = 1):
    return x if group.size == 1 else _AllGatherSeq.apply(x, group, axis)


def reduce_scatter_seq(x, group: Group, axis: int = 1):
    return x if group.size == 1 else _ReduceScatterSeq.apply(x, group, axis)
