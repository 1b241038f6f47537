"""llmpre's fused ops: Paddle custom ops over C++ CPU kernels.

Each function has the contract of the pure-Paddle function of the same role
in :mod:`llmpre.ops.reference` (``attention`` for :func:`flash_attention`) and
is tested against it. They work in Paddle's dynamic-graph mode, on CPU tensors
(and on GPU tensors once a CUDA build provides the op's CUDA path), with
autograd through ``backward()``/``paddle.grad``. Storage dtypes: float32 and
bfloat16; the arithmetic is fp32 inside the kernel, with one rounding per
output element.

A bad argument raises ``ValueError`` naming it and the expected shape/dtype;
calling an op this build lacks raises :class:`FusedOpUnavailable` saying why.

The op table: each function below is declared, right after it, with
:func:`_declare` — its custom op, the :class:`~llmpre.ops.select.Ops` field it
fills, its :func:`~llmpre.ops.select.select_ops` switch, and the dtypes its
kernels take on each device (``cpu`` always; ``gpu`` when a CUDA build has the
op). :data:`TABLE` collects them; ``select_ops`` reads nothing else, so no
tensor is sent to a kernel that cannot take it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import paddle

from llmpre.errors import LlmpreError
from llmpre.ops import _library

__all__ = ["FusedOpUnavailable", "rms_norm", "rotary", "flash_attention", "swiglu", "cross_entropy",
           "grouped_mlp", "moe_combine", "adamw_", "available", "TABLE", "FusedOp", "FLASH_ATTENTION_KERNELS"]

_run_custom_op = paddle._C_ops._run_custom_op
_SOURCE_SUFFIX = re.compile(r"\s*\[[^\[\]]*:\d+\]\s*$")  # Paddle's "  [file.cc:12]"


class FusedOpUnavailable(LlmpreError, RuntimeError):
    """A fused op was called but this build of llmpre cannot run it; the message says why."""


@dataclass(frozen=True)
class FusedOp:
    """One row of the op table: a fused function and what its kernels take."""
    name: str                  # the op's one name: rms_norm, rotary, flash_attention, swiglu, cross_entropy
    field: str                 # the Ops field it fills (flash_attention fills "attention")
    flag: str                  # its select_ops switch (PaddleNLP's training-argument name where one exists)
    custom_op: str             # the Paddle custom op
    fn: Callable
    dtypes: dict = field(default_factory=dict)   # device ("cpu"/"gpu") -> dtype names its kernel takes

    def takes(self, device: str, dtype) -> bool:
        return str(dtype).replace("paddle.", "") in self.dtypes.get(device, ())


TABLE: dict = {}   # op name -> FusedOp, filled by _declare beside each function

CPU = ("float32", "bfloat16")                 # every CPU kernel: fp32 arithmetic, one rounding per output
GPU = ("float32", "float16", "bfloat16")      # the CUDA row-wise kernels


def _declare(fn, field_name: str, flag: str, cpu=CPU, gpu=()):
    name = fn.__name__
    TABLE[name] = FusedOp(name=name, field=field_name, flag=flag, custom_op=f"llmpre_{name}", fn=fn,
                          dtypes={"cpu": tuple(cpu), "gpu": tuple(gpu)})


def available(op: str) -> bool:
    """Whether the custom op ``op`` (e.g. ``"llmpre_rms_norm"``) is registered in this process."""
    return _library.load().has(op)


def _run(op: str, *args):
    lib = _library.load()
    if op not in lib.ops:
        raise FusedOpUnavailable(f"{op}: {lib.why_missing(op)}")
    try:
        return _run_custom_op(op, *args)
    except OSError as e:  # how Paddle surfaces the op's PD_CHECK / PD_THROW messages
        message = str(e)
        if not message.startswith(op):
            raise
        raise ValueError(_SOURCE_SUFFIX.sub("", message)) from None


def rms_norm(x: paddle.Tensor, weight: paddle.Tensor, eps: float) -> paddle.Tensor:
    """RMSNorm over the last axis: ``weight * x / sqrt(mean(x^2) + eps)``.

    x: ``[..., hidden]`` float32 or bfloat16; weight: ``[hidden]``, x's dtype.
    Returns ``[..., hidden]`` in x's dtype. Gradients flow to x and weight; the
    weight gradient is summed over rows in a fixed order (bitwise
    reproducible for any thread count). Reference: :func:`llmpre.ops.reference.rms_norm`.
    """
    return _run("llmpre_rms_norm", x, weight, float(eps))[0]


_declare(rms_norm, "rms_norm", "use_fused_rms_norm", gpu=GPU)


def rotary(q: paddle.Tensor, k: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor,
           position_ids: paddle.Tensor | None = None, interleaved: bool = False):
    """Rotary position embedding of q and k.

    q: ``[batch, seq, heads, head_dim]``; k: ``[batch, seq, kv_heads, head_dim]``
    (any kv_heads: GQA/MQA), float32 or bfloat16. cos, sin: ``[positions, r/2]``
    float32 tables with ``r <= head_dim`` the rotated dimension (partial rotary
    passes features ``r:`` through); any RoPE scaling variant is just other
    tables. position_ids: ``[batch, seq]`` (or ``[1, seq]``) int64/int32
    positions into the tables, default ``0..seq-1``. ``interleaved=False`` is
    HF's rotate_half (pairs ``(i, i + r/2)``), ``True`` pairs ``(2i, 2i+1)``.
    Returns ``(q_rotated, k_rotated)`` with the input shapes and dtypes;
    gradients flow to q and k (not to the tables). Reference:
    :func:`llmpre.ops.reference.rotary`.
    """
    qs, ks = q.shape, k.shape
    if len(qs) != 4 or len(ks) != 4 or qs[:2] != ks[:2] or qs[3] != ks[3]:
        raise ValueError(f"rotary: q must be [batch, seq, heads, head_dim] and k [batch, seq, kv_heads, "
                         f"head_dim] with the same batch, seq and head_dim, got q {list(qs)} and k {list(ks)}")
    interleaved = bool(interleaved)
    q_out = _run("llmpre_rotary", q, cos, sin, position_ids, interleaved)[0]
    k_out = _run("llmpre_rotary", k, cos, sin, position_ids, interleaved)[0]
    return q_out, k_out


_declare(rotary, "rotary", "use_fused_rope", gpu=GPU)

# The CUDA flash-attention kernel sets (chosen by select_ops): the portable sm_80 mma.sync
# kernels, the sm_90a Hopper ones, or "auto" (Hopper where it can run, else portable).
FLASH_ATTENTION_KERNELS = {"auto": 0, "portable": 1, "hopper": 2}


def flash_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, causal: bool = True,
                    window: int | None = None, alibi_slopes: paddle.Tensor | None = None,
                    scale: float | None = None, kernel: str = "auto") -> paddle.Tensor:
    """Scaled dot-product attention, tiled with an online softmax (O(seq) extra memory).

    Layout ``[batch, seq, heads, head_dim]`` (Paddle's flash-attention layout):
    q ``[batch, seq_q, heads, head_dim]``; k ``[batch, seq_k, kv_heads, head_dim]``,
    v ``[batch, seq_k, kv_heads, v_head_dim]`` with ``heads % kv_heads == 0``
    (GQA/MQA: query head h reads KV head ``h // (heads / kv_heads)``); all
    float32 or all bfloat16. Queries are the last ``seq_q`` positions of the keys.
    ``causal`` hides later keys; ``window`` (None or >= 1) keeps the ``window``
    most recent keys (Mistral's sliding window); ``alibi_slopes`` ``[heads]``
    float32 adds ``slope_h * (j - i)``; ``scale`` defaults to ``1/sqrt(head_dim)``.
    Returns ``[batch, seq_q, heads, v_head_dim]`` in q's dtype; gradients flow to
    q, k and v. ``kernel`` picks the CUDA kernel set on a GPU (see
    :data:`FLASH_ATTENTION_KERNELS`; the CPU has one). Reference:
    :func:`llmpre.ops.reference.attention`.
    """
    if kernel not in FLASH_ATTENTION_KERNELS:
        raise ValueError(f"flash_attention: kernel must be one of {', '.join(FLASH_ATTENTION_KERNELS)}, "
                         f"got {kernel!r}")
    if window is not None and int(window) < 1:
        raise ValueError(f"flash_attention: window must be None or >= 1 keys, got {window}")
    if scale is not None and not float(scale) > 0.0:
        raise ValueError(f"flash_attention: scale must be None (1/sqrt(head_dim)) or > 0, got {scale}")
    return _run("llmpre_flash_attention", q, k, v, alibi_slopes, bool(causal),
                -1 if window is None else int(window), 0.0 if scale is None else float(scale),
                FLASH_ATTENTION_KERNELS[kernel])[0]


# the CUDA kernels are bf16/fp16 only (no fp32 path): fp32 attention on a GPU goes to the reference
_declare(flash_attention, "attention", "use_flash_attention", gpu=("float16", "bfloat16"))


def flash_attention_block(q, k, v, offset: int, causal: bool = True, window: int | None = None,
                          alibi_slopes=None, scale: float | None = None):
    """One block of ring attention on the CPU kernel: ``(out, lse)`` with query ``i``
    at key position ``i + offset``; out in q's dtype, lse ``[batch, heads, seq_q]`` fp32
    (-inf for a query that sees no key of the block). No autograd (the ring has its
    own backward). Contract: :func:`llmpre.ops.reference.attention_block`."""
    with paddle.no_grad():
        return tuple(_run("llmpre_flash_attention_block", q, k, v, alibi_slopes, bool(causal),
                          -1 if window is None else int(window), 0.0 if scale is None else float(scale),
                          int(offset)))


def flash_attention_block_grad(q, k, v, out, lse, dout, offset: int, causal: bool = True, window=None,
                               alibi_slopes=None, scale=None):
    """``(dq, dk, dv)`` of one block from the merged ``out`` and ``lse`` of the whole row.
    Contract: :func:`llmpre.ops.reference.attention_block_grad`."""
    with paddle.no_grad():
        return tuple(_run("llmpre_flash_attention_block_bwd", q, k, v, alibi_slopes, out.astype(q.dtype),
                          lse, dout.astype(q.dtype), bool(causal), -1 if window is None else int(window),
                          0.0 if scale is None else float(scale), int(offset)))


def swiglu(gate: paddle.Tensor, up: paddle.Tensor) -> paddle.Tensor:
    """SwiGLU gate ``silu(gate) * up``.

    gate, up: the same shape ``[..., intermediate]``, both float32 or both
    bfloat16. Returns that shape and dtype; gradients flow to both. Reference:
    :func:`llmpre.ops.reference.swiglu`.
    """
    return _run("llmpre_swiglu", gate, up)[0]


_declare(swiglu, "swiglu", "use_fused_swiglu", gpu=CPU)   # cuda/swiglu; the op's shared checks take fp32/bf16


def cross_entropy(logits: paddle.Tensor, labels: paddle.Tensor, ignore_index: int = -100) -> paddle.Tensor:
    """Mean token cross-entropy over positions whose label is not ``ignore_index``.

    logits: ``[..., vocab]`` float32 or bfloat16; labels: ``[...]`` int64/int32,
    logits' leading shape, each in ``[0, vocab)`` or equal to ``ignore_index``.
    The softmax is never materialised: the forward keeps one log-sum-exp per
    row, the backward recomputes the probabilities from it. Returns an fp32
    scalar, 0 when every label is ignored; the gradient flows to logits.
    Reference: :func:`llmpre.ops.reference.cross_entropy`.
    """
    per_token = _run("llmpre_cross_entropy", logits, labels, int(ignore_index))[0]  # [...] fp32, 0 if ignored
    kept = (labels != ignore_index).astype("float32").sum()
    return per_token.sum() / kept.clip(min=1.0)


_declare(cross_entropy, "cross_entropy", "use_fused_cross_entropy", gpu=GPU)


def grouped_mlp(x: paddle.Tensor, offsets: paddle.Tensor, w_gate, w_up, w_down,
                index: paddle.Tensor | None = None) -> paddle.Tensor:
    """All experts' SwiGLU MLPs in one call over rows grouped by expert: row ``r`` is
    ``x[index[r]]`` (x's own rows without an index), rows ``offsets[e]:offsets[e+1]``
    get ``down(silu(row W_gate[e]) * row W_up[e])``, rows from ``offsets[E]`` on
    (dropped by a capacity limit) get 0.

    x: ``[tokens, hidden]`` float32 on CPU, bfloat16 on GPU (a CUDA build; hidden and the
    expert width multiples of 8); index: ``[m]`` int64 in ``[0, tokens)`` or None
    (the kernel gathers the rows while packing its GEMM operands: no gathered copy);
    offsets: ``[E + 1]`` int64 (read inside the kernel: no host synchronisation);
    w_gate, w_up: lists of E ``[hidden, inter]`` tensors; w_down: E ``[inter, hidden]``
    (the experts' own parameters, never copied into a stack), x's dtype. Returns
    ``[m, hidden]``; gradients flow to x (each token sums its rows' gradients in row
    order, token by token: no atomics) and every expert's weights (an expert's weight
    gradient sums its rows in row order). Bitwise reproducible for any thread count.
    Reference: :func:`llmpre.ops.reference.grouped_mlp`.
    """
    return _run("llmpre_grouped_mlp", x, offsets, list(w_gate), list(w_up), list(w_down), index)[0]


# CPU: fp32 (Paddle has no bf16 CPU matmul to compare with); GPU: bf16, CUTLASS's grouped GEMM
# (cuda/grouped_mlp). Other dtypes take the reference (Paddle's matmuls in that dtype).
_declare(grouped_mlp, "grouped_mlp", "use_fused_grouped_mlp", cpu=("float32",), gpu=("bfloat16",))


def moe_combine(y: paddle.Tensor, pos: paddle.Tensor, weights: paddle.Tensor) -> paddle.Tensor:
    """The MoE combine ``out[t] = sum_j weights[t, j] * y[pos[t, j]]``, token-major.

    y: ``[rows, hidden]`` (the grouped MLP's output, rows sorted by expert), float32 on
    CPU; float32, float16 or bfloat16 on GPU (a CUDA build: ``cuda/moe_combine``, fp32
    math, the output rounded once to y's dtype); pos: ``[n, k]`` int64, the row of each
    (token, slot) pair, distinct and in ``[0, rows)`` (the CPU op checks this; on a GPU an
    entry outside ``[0, rows)`` gives NaN for its token's output and its weight's gradient,
    and distinctness is the caller's promise); weights: ``[n, k]`` float32, on y's device.
    Returns ``[n, hidden]`` in y's dtype; gradients flow to y (each row is one pair's:
    written once, no atomics; rows no pair reads get 0) and weights (a dot product per
    pair, accumulated in float64 on CPU, in fp32 with a fixed-order block reduction on
    GPU). Bitwise reproducible. Reference: :func:`llmpre.ops.reference.moe_combine`.
    """
    return _run("llmpre_moe_combine", y, pos, weights if weights.dtype == paddle.float32 else weights.astype("float32"))[0]


# CPU: fp32; GPU: the three storage dtypes (cuda/moe_combine; the op's shared checks take any y dtype
# and the GPU half takes fp32/fp16/bf16). Other dtypes take the reference.
_declare(moe_combine, "moe_combine", "use_fused_moe_combine", cpu=("float32",), gpu=GPU)


def adamw_(param: paddle.Tensor, grad: paddle.Tensor, exp_avg: paddle.Tensor, exp_avg_sq: paddle.Tensor, *,
           lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int,
           grad_scale: float = 1.0, decayed_runs=()) -> None:
    """One AdamW step in place on flat fp32 buffers ``[n]`` in a single pass over the
    elements (the reference makes ~20): the contract, scalars and rounding steps of
    :func:`llmpre.ops.reference.adamw_` (each scalar rounded to fp32 as the reference's
    ops round it). param, exp_avg, exp_avg_sq: contiguous float32 ``[n]``, updated in
    place; grad: float32 ``[n]``, only read. No gradient (an optimizer step).
    """
    decay = lr * weight_decay if weight_decay else 0.0
    runs = [int(v) for run in decayed_runs for v in run] if weight_decay else []
    _run("llmpre_adamw_", param, grad, exp_avg, exp_avg_sq, float(grad_scale), float(beta1), float(beta2),
         float(1.0 - beta1), float(1.0 - beta2), float(decay), float(1.0 / math.sqrt(1.0 - beta2 ** step)),
         float(eps), float(lr / (1.0 - beta1 ** step)), runs)


_declare(adamw_, "adamw", "use_fused_adamw", cpu=("float32",))
