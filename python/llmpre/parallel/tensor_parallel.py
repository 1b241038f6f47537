"""Tensor-parallel layers (Megatron style) on llmpre's comm pairs.

Each rank builds only its slice of a weight: from the loaded tensor, or, for a
deferred model (:mod:`llmpre.models.init`), computed directly by the
counter-based initialisation, so a tensor-parallel run starts from exactly the
parameters of a single-process run with the same seed without any rank holding
the whole weight. With ``sequence_parallel`` the activations between
tensor-parallel regions are split along the sequence axis (axis 1 of
``[batch, seq, hidden]``): a column-parallel layer all-gathers its input and a
row-parallel layer reduce-scatters its output instead of all-reducing it.
"""

from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from llmpre.models import init
from llmpre.parallel import comm
from llmpre.parallel.comm import Group

# Parameter attributes read by the gradient synchroniser and the checkpointer.
TP_SPLIT = "_llmpre_tp_split"        # (axis, full_size) of a sliced parameter
TP_GRAD_SUM = "_llmpre_tp_grad_sum"  # replicated across tp, gradients must be summed over tp
NORM_SKIP = "_llmpre_norm_skip"      # a second copy (tied embedding on the last pipeline stage)


def _param(value: paddle.Tensor, split=None, grad_sum=False) -> paddle.Tensor:
    """A parameter holding ``value``'s memory (no copy), or ``value`` itself when it is a
    deferred parameter (``init.view``: computed only when materialised or read)."""
    if init.is_lazy(value):
        p = value
    else:
        with paddle.LazyGuard():
            p = paddle.create_parameter(list(value.shape), "float32",
                                        default_initializer=paddle.nn.initializer.Constant(0.0))
        value.contiguous()._share_buffer_to(p)
    if split is not None:
        setattr(p, TP_SPLIT, split)
    if grad_sum:
        setattr(p, TP_GRAD_SUM, True)
    return p


def _span(index) -> tuple[int, int]:
    """``index`` (consecutive integers) as (start, stop)."""
    index = list(index)
    if index != list(range(index[0], index[0] + len(index))):
        raise ValueError("tensor-parallel slices are contiguous ranges")
    return index[0], index[0] + len(index)


def _slice(w: paddle.Tensor, axis: int, index) -> paddle.Tensor:
    """Elements ``index`` (a contiguous range) of ``w`` along ``axis``: a new tensor, or, of a
    deferred weight, a deferred parameter that computes only them when materialised."""
    region = [(0, int(s)) for s in w.shape]
    region[axis] = _span(index)
    return init.view(w, region)


def _whole(w: paddle.Tensor) -> paddle.Tensor:
    return init.view(w, [(0, int(s)) for s in w.shape])


def _columns(w: paddle.Tensor, index) -> paddle.Tensor:
    return _slice(w, w.ndim - 1, index)


class ColumnParallelLinear(nn.Layer):
    """y[..., local out] = x @ W[:, cols] (+ b[cols]); input all-gathered along the
    sequence (SP) or copied to the group (its gradient all-reduced). ``enter_region=False``:
    the input is already inside the tensor-parallel region (an MLA latent), taken as it is."""

    def __init__(self, linear: nn.Linear, cols: list[int], group: Group, sequence_parallel: bool,
                 full_out: int | None = None, enter_region: bool = True):
        super().__init__()
        self.group, self.sp, self.enter_region = group, sequence_parallel, enter_region
        full_out = full_out if full_out is not None else linear.weight.shape[1]
        self.weight = _param(_columns(linear.weight, cols), split=(1, full_out))
        self.bias = (_param(_columns(linear.bias, cols), split=(0, full_out))
                     if linear.bias is not None else None)

    def forward(self, x):
        if self.enter_region:
            x = comm.all_gather_seq(x, self.group) if self.sp else comm.copy_to(x, self.group)
        return F.linear(x, self.weight, self.bias)


class ReplicatedLinear(nn.Layer):
    """A whole projection at the entry of a tensor-parallel region whose output each rank uses
    only in part (MLA's q_a / kv_a latents feed this rank's heads): input all-gathered (SP) or
    copied to the group, gradients of the replicated weight summed over the group."""

    def __init__(self, linear: nn.Linear, group: Group, sequence_parallel: bool):
        super().__init__()
        self.group, self.sp = group, sequence_parallel
        self.weight = _param(_whole(linear.weight), grad_sum=True)
        self.bias = _param(_whole(linear.bias), grad_sum=True) if linear.bias is not None else None

    def forward(self, x):
        x = comm.all_gather_seq(x, self.group) if self.sp else comm.copy_to(x, self.group)
        return F.linear(x, self.weight, self.bias)


class LocalLinear(nn.Layer):
    """``x @ W_local`` inside a tensor-parallel region, no communication: this rank's columns
    (``axis`` 1) or rows (``axis`` 0, a partial sum the region's exit reduces) of a weight
    ``[in, out]`` without bias (the experts of expert tensor parallelism)."""

    def __init__(self, weight: paddle.Tensor, axis: int, index):
        super().__init__()
        self.weight = _param(_slice(weight, axis, index), split=(axis, int(weight.shape[axis])))

    def forward(self, x):
        return paddle.matmul(x, self.weight)


class RowParallelLinear(nn.Layer):
    """y = sum over ranks of x[..., local in] @ W[rows, :] (+ b, replicated); the sum is an
    all-reduce, or a reduce-scatter along the sequence (SP)."""

    def __init__(self, linear: nn.Linear, rows: list[int], group: Group, sequence_parallel: bool):
        super().__init__()
        self.group, self.sp = group, sequence_parallel
        full_in = linear.weight.shape[0]
        self.weight = _param(_slice(linear.weight, 0, rows), split=(0, full_in))
        self.bias = (_param(_whole(linear.bias), grad_sum=sequence_parallel)
                     if linear.bias is not None else None)

    def forward(self, x):
        y = paddle.matmul(x, self.weight)
        y = comm.reduce_scatter_seq(y, self.group) if self.sp else comm.reduce_from(y, self.group)
        return y + self.bias if self.bias is not None else y


class ReplicatedKVProjection(nn.Layer):
    """K or V projection when there are fewer KV heads than tensor-parallel ranks:
    every rank keeps the whole projection and uses the KV head(s) its query heads
    read; the gradients of the replicated weight are summed over the group."""

    def __init__(self, linear: nn.Linear, heads: list[int], head_dim: int, group: Group,
                 sequence_parallel: bool):
        super().__init__()
        self.group, self.sp = group, sequence_parallel
        self.cols = paddle.to_tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype="int64")
        self.weight = _param(_whole(linear.weight), grad_sum=True)
        self.bias = _param(_whole(linear.bias), grad_sum=True) if linear.bias is not None else None

    def forward(self, x):
        x = comm.all_gather_seq(x, self.group) if self.sp else comm.copy_to(x, self.group)
        w = paddle.gather(self.weight, self.cols, axis=1)
        b = paddle.gather(self.bias, self.cols, axis=0) if self.bias is not None else None
        return F.linear(x, w, b)


class VocabParallelEmbedding(nn.Layer):
    """Rows ``[start, end)`` of the embedding on each rank; ids outside give 0 and the
    ranks' outputs are summed (all-reduce, or reduce-scatter along the sequence)."""

    def __init__(self, embedding: nn.Embedding, group: Group, sequence_parallel: bool):
        super().__init__()
        self.group, self.sp = group, sequence_parallel
        vocab = embedding.weight.shape[0]
        per = vocab // group.size
        self.start, self.end = group.index * per, (group.index + 1) * per
        self.weight = _param(_slice(embedding.weight, 0, range(self.start, self.end)), split=(0, vocab))

    def forward(self, ids):
        inside = (ids >= self.start) & (ids < self.end)
        local = paddle.where(inside, ids - self.start, paddle.zeros_like(ids))
        out = F.embedding(local, self.weight) * inside.unsqueeze(-1).astype(self.weight.dtype)
        return comm.reduce_scatter_seq(out, self.group) if self.sp else comm.reduce_from(out, self.group)


class ParallelLMHead(nn.Layer):
    """Logits for this rank's vocabulary slice. Untied: the head's own ``[hidden,
    vocab/tp]`` columns (``x @ W``, the Linear layout, columns unit-normalised for
    Baichuan2's NormHead); tied: the vocab-parallel embedding's ``[vocab/tp, hidden]``
    rows (``x @ E^T``). Input all-gathered (SP) or copied to the group."""

    def __init__(self, group: Group, sequence_parallel: bool, tied_to: VocabParallelEmbedding | None = None,
                 linear: nn.Linear | None = None, normalize: bool = False):
        super().__init__()
        self.group, self.sp, self.normalize = group, sequence_parallel, normalize
        self.tied_to = [tied_to] if tied_to is not None else None  # a list: not a sublayer
        if tied_to is None:
            vocab = linear.weight.shape[1]
            per = vocab // group.size
            self.weight = _param(_slice(linear.weight, 1, range(group.index * per, (group.index + 1) * per)),
                                 split=(1, vocab))

    def forward(self, x, whole_sequence: bool = False):
        """``whole_sequence``: ``x`` holds every position although sequence parallelism is on
        (:class:`WholeSequence`): copied to the group, not gathered."""
        x = comm.all_gather_seq(x, self.group) if self.sp and not whole_sequence else comm.copy_to(x, self.group)
        if self.tied_to is not None:
            return paddle.matmul(x, self.tied_to[0].weight, transpose_y=True)
        w = F.normalize(self.weight, axis=0) if self.normalize else self.weight
        return paddle.matmul(x, w)


class WholeSequence:
    """Under sequence parallelism, for what needs every position at once (DeepSeek-V3's MTP
    depths shift the sequence by ``k``; :func:`llmpre.models.mtp.mtp_loss`): ``gather`` joins
    the ranks' parts (backward keeps this rank's part of the gradient, which is whole and the
    same on every rank outside the tensor-parallel regions), ``head`` is the vocabulary-split
    LM head on whole-sequence input. The layers run on the whole sequence are built without
    the sequence split (plain tensor parallelism)."""

    def __init__(self, group: Group, head: ParallelLMHead):
        self.group, self.lm_head = group, head

    def gather(self, x):
        return comm.gather_seq(x, self.group)      # [b, s / tp, ...] -> [b, s, ...]

    def head(self, x):
        return self.lm_head(x, whole_sequence=True)


class _VocabParallelCE(PyLayer):
    """Per-token cross-entropy of vocabulary-split logits without gathering them:
    a global max, a global sum of exponentials and the target logit are each one
    all-reduce of a ``[tokens]`` vector; backward is ``softmax - onehot`` locally."""

    @staticmethod
    def forward(ctx, logits, labels, group, start, ignore_index):
        x = logits.astype("float32")                                   # [n, V/tp]
        vloc = x.shape[-1]
        row_max = x.max(axis=-1)                                       # [n]
        group.all_reduce(row_max, op=paddle.distributed.ReduceOp.MAX)
        shifted = x - row_max.unsqueeze(-1)
        exp = shifted.exp()
        sum_exp = exp.sum(axis=-1)                                     # [n]
        group.all_reduce(sum_exp)
        inside = (labels >= start) & (labels < start + vloc)
        local = paddle.where(inside, labels - start, paddle.zeros_like(labels))
        target = paddle.take_along_axis(shifted, local.unsqueeze(-1), axis=-1).squeeze(-1)
        target = target * inside.astype("float32")
        group.all_reduce(target)
        loss = sum_exp.log() - target                                  # [n]
        keep = labels != ignore_index
        loss = loss * keep.astype("float32")
        ctx.save_for_backward(exp, sum_exp, local, inside, keep)
        ctx.dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, g):
        exp, sum_exp, local, inside, keep = ctx.saved_tensor()
        grad = exp / sum_exp.unsqueeze(-1)                              # softmax rows
        onehot = F.one_hot(local, grad.shape[-1]) * inside.astype("float32").unsqueeze(-1)
        scale = (g * keep.astype("float32")).unsqueeze(-1)
        return ((grad - onehot) * scale).astype(ctx.dtype), None


def vocab_parallel_cross_entropy(logits, labels, group: Group, ignore_index: int = -100):
    """Mean token cross-entropy over non-ignored positions, logits split over the
    vocabulary across ``group`` (``[..., vocab/tp]``). Matches
    :func:`llmpre.ops.reference.cross_entropy` on the gathered logits."""
    vloc = logits.shape[-1]
    flat = logits.reshape([-1, vloc])
    flat_labels = labels.reshape([-1]).astype("int64")
    per_token = _VocabParallelCE.apply(flat, flat_labels, group, group.index * vloc, ignore_index)
    keep = (flat_labels != ignore_index).astype("float32")
    return per_token.sum() / keep.sum().clip(min=1.0)
