"""Pure-Paddle reference implementations of the decoder's hot ops.

Every fused kernel llmpre adds later is tested against these functions, so
they favour clarity and fp32 accumulation over speed.  They run on any device
Paddle runs on.  Layouts follow PaddleNLP's flash-attention path:
activations are ``[batch, seq, heads, head_dim]``.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F


def rms_norm(x: paddle.Tensor, weight: paddle.Tensor, eps: float) -> paddle.Tensor:
    """Root-mean-square layer norm over the last axis.

    x: ``[..., hidden]`` any float dtype; weight: ``[hidden]``.
    The statistics and the normalisation are computed in fp32, the result is
    cast back to ``x.dtype`` and then scaled by ``weight``:
    ``y = weight * (x / sqrt(mean(x^2) + eps))``.  Returns ``[..., hidden]``.
    """
    x32 = x.astype("float32")
    variance = x32.pow(2).mean(axis=-1, keepdim=True)  # [..., 1]
    return weight * (x32 * paddle.rsqrt(variance + eps)).astype(x.dtype)


def rotate_half(x: paddle.Tensor) -> paddle.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last axis (pairs ``i`` and ``i + d/2``)."""
    x1, x2 = x.chunk(2, axis=-1)
    return paddle.concat([-x2, x1], axis=-1)


def rotary(q: paddle.Tensor, k: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor):
    """Rotary position embedding in the HF "rotate_half" (non-interleaved) layout.

    q: ``[batch, seq, heads, head_dim]``; k: ``[batch, seq, kv_heads, head_dim]``;
    cos, sin: ``[batch or 1, seq, 1, head_dim]`` (fp32 tables, cast to q's dtype).
    Returns ``(q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin)``
    with the input shapes.
    """
    cos = cos.astype(q.dtype)
    sin = sin.astype(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x: paddle.Tensor, groups: int) -> paddle.Tensor:
    """``[b, s, kv_heads, d] -> [b, s, kv_heads * groups, d]``; head h reads KV head ``h // groups``."""
    return x if groups == 1 else x.repeat_interleave(groups, axis=2)


def attention_math(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, causal: bool = True) -> paddle.Tensor:
    """Scaled dot-product attention written out: ``softmax(q k^T / sqrt(d) + mask) v``.

    q: ``[batch, seq_q, heads, head_dim]``; k, v: ``[batch, seq_k, kv_heads, head_dim]``
    with ``heads % kv_heads == 0`` (grouped-query attention: query head h uses KV
    head ``h // (heads / kv_heads)``).  Scores and softmax are fp32.  With
    ``causal``, query i attends to keys ``j <= i + seq_k - seq_q``.
    Returns ``[batch, seq_q, heads, head_dim]`` in q's dtype.
    """
    groups = q.shape[2] // k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    qt = (q * scale).transpose([0, 2, 1, 3])                # [b, h, sq, d]
    kt = repeat_kv(k, groups).transpose([0, 2, 1, 3])       # [b, h, sk, d]
    vt = repeat_kv(v, groups).transpose([0, 2, 1, 3])       # [b, h, sk, d]
    scores = paddle.matmul(qt, kt, transpose_y=True).astype("float32")  # [b, h, sq, sk]
    if causal:
        sq, sk = q.shape[1], k.shape[1]
        # 0 on and below the (shifted) diagonal, -inf above it.
        scores = scores + paddle.triu(paddle.full([sq, sk], float("-inf"), "float32"), diagonal=sk - sq + 1)  # [sq, sk]
    probs = F.softmax(scores, axis=-1).astype(q.dtype)     # [b, h, sq, sk]
    return paddle.matmul(probs, vt).transpose([0, 2, 1, 3])  # [b, sq, h, d]


def attention_sdpa(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, causal: bool = True) -> paddle.Tensor:
    """The same contract as :func:`attention_math`, through Paddle's
    ``scaled_dot_product_attention`` (which reads GQA natively)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, training=False)


# Which of the two is the default `attention`: measured on the 2-core CPU box
# (Paddle 3.3.1, fp32, OMP_NUM_THREADS=1, the other core busy), llama-tiny training
# shape q [8, 256, 4, 64], k/v [8, 256, 2, 64], forward + backward, 3 runs of 22 calls:
# attention_math median 184-233 ms (min 168-195), attention_sdpa median 220-262 ms
# (min 182-202).  Outputs agree to 0.0 in fp32.  The written-out version wins by ~10%.
attention = attention_math


def swiglu(gate: paddle.Tensor, up: paddle.Tensor) -> paddle.Tensor:
    """SwiGLU gate: ``silu(gate) * up``; both ``[..., intermediate]``, same shape out."""
    return F.silu(gate) * up


def cross_entropy(logits: paddle.Tensor, labels: paddle.Tensor, ignore_index: int = -100) -> paddle.Tensor:
    """Mean token cross-entropy over positions whose label is not ``ignore_index``.

    logits: ``[..., vocab]`` any float dtype (computed in fp32); labels: ``[...]``
    integer, the same leading shape.  Returns an fp32 scalar; 0 when every label is
    ignored (rather than 0/0).
    """
    vocab = logits.shape[-1]
    flat_logits = logits.reshape([-1, vocab]).astype("float32")  # [n, vocab]
    flat_labels = labels.reshape([-1]).astype("int64")           # [n]
    per_token = F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index, reduction="none")  # [n]
    keep = (flat_labels != ignore_index).astype("float32")       # [n]
    return (per_token.reshape([-1]) * keep).sum() / keep.sum().clip(min=1.0)
