"""Shared pieces of the fused-op tests: bf16 rounding in numpy, float64 "truth"
formulas with their gradients, naive bf16 implementations (every elementary
op's result rounded to bf16, sums accumulated in fp32 and rounded once, as a
plain low-precision framework would compute), and the error rule.

The rule (STYLE.md, after flash-attention's tests), for every output and every
gradient, both errors measured against the float64 truth computed from the
same (dtype-rounded) inputs:

    max|kernel - truth| <= 2 * max|naive - truth| + atol

"naive" is Paddle's composed reference op for float32 and the bf16 emulation
below for bfloat16 (Paddle's CPU build has no bf16 add/silu/exp kernels to run
the reference in bf16). atol is 2 float32 ulps of the largest |truth|: fp32
rounding noise, which matters only when the naive error is itself that small.
"""

from __future__ import annotations

import numpy as np
import paddle

EPS32 = 2.0 ** -23


def bf16_round(a) -> np.ndarray:
    """Round to the nearest bfloat16 (ties to even), returned as float32."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    u = a.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).reshape(a.shape)


def rounder(dtype: str):
    return bf16_round if dtype == "bfloat16" else (lambda a: np.asarray(a, dtype=np.float32))


def tensor(a, dtype: str, grad: bool = False) -> paddle.Tensor:
    t = paddle.to_tensor(np.asarray(a, dtype=np.float32)).astype(dtype)
    t.stop_gradient = not grad
    return t


def f64(t: paddle.Tensor) -> np.ndarray:
    return t.astype("float32").numpy().astype(np.float64)


def check(what: str, got, truth, naive) -> None:
    got, truth, naive = (np.asarray(a, dtype=np.float64) for a in (got, truth, naive))
    assert got.shape == truth.shape, f"{what}: shape {got.shape} != {truth.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    err_k = float(np.abs(got - truth).max()) if got.size else 0.0
    # a naive result that is NaN/inf where the truth is finite is infinitely wrong
    err_n = float(np.nan_to_num(np.abs(naive - truth), nan=np.inf).max()) if got.size else 0.0
    atol = 2 * EPS32 * (float(np.abs(truth).max()) if got.size else 0.0)
    assert err_k <= 2 * err_n + atol, (f"{what}: kernel error {err_k:.3e} > 2 x naive error {err_n:.3e} "
                                       f"+ atol {atol:.3e}")


# ----------------------------------------------------------------------------- RMSNorm
def rms_norm_truth(x, w, eps, g):
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    n = x * r
    dn = w * g
    dx = r * (dn - n * (dn * n).mean(-1, keepdims=True))
    dw = (g * n).reshape(-1, x.shape[-1]).sum(0)
    return w * n, dx, dw


def rms_norm_naive_bf16(x, w, eps, g):
    rd = bf16_round
    ms = rd(rd(x * x).astype(np.float32).mean(-1, keepdims=True))
    r = rd(1.0 / np.sqrt(rd(ms + eps)))
    n = rd(x * r)
    y = rd(w * n)
    dn = rd(w * g)
    m = rd(rd(dn * n).astype(np.float32).mean(-1, keepdims=True))
    dx = rd(r * rd(dn - rd(n * m)))
    dw = rd(rd(g * n).reshape(-1, x.shape[-1]).astype(np.float32).sum(0))
    return y, dx, dw


# ----------------------------------------------------------------------------- rotary
def _rot(x, c, s, interleaved, rd=lambda a: a):
    r = 2 * c.shape[-1]
    out = x.copy()
    if interleaved:
        a, b = x[..., 0:r:2], x[..., 1:r:2]
        out[..., 0:r:2], out[..., 1:r:2] = rd(rd(a * c) - rd(b * s)), rd(rd(b * c) + rd(a * s))
    else:
        a, b = x[..., : r // 2], x[..., r // 2: r]
        out[..., : r // 2], out[..., r // 2: r] = rd(rd(a * c) - rd(b * s)), rd(rd(b * c) + rd(a * s))
    return out


def rotary_rows(cos, sin, seq, ids):
    """Table rows broadcast over [batch, seq, heads, r/2]."""
    if ids is None:
        return cos[None, :seq, None], sin[None, :seq, None]
    ids = np.asarray(ids).reshape(-1, seq)
    return cos[ids][:, :, None], sin[ids][:, :, None]


def rotary_truth(x, c, s, interleaved, g):
    """Forward, and the input gradient: the output gradient rotated back."""
    return _rot(x, c, s, interleaved), _rot(g, c, -s, interleaved)


def rotary_naive_bf16(x, c, s, interleaved, g):
    rd = bf16_round
    c, s = rd(c), rd(s)  # the reference casts the tables to the input dtype
    return _rot(x, c, s, interleaved, rd), _rot(g, c, -s, interleaved, rd)


# ----------------------------------------------------------------------------- SwiGLU
def swiglu_truth(gate, up, g):
    sg = 1.0 / (1.0 + np.exp(-gate))
    silu = gate * sg
    return silu * up, g * up * sg * (1 + gate * (1 - sg)), g * silu


def swiglu_naive_bf16(gate, up, g):
    rd = bf16_round
    g64, gate64 = g.astype(np.float64), gate.astype(np.float64)
    sg = 1.0 / (1.0 + np.exp(-gate64))
    silu = rd(gate64 * sg)                              # silu kernel: fp32 inside, one rounding
    dsilu = rd(sg * (1 + gate64 * (1 - sg)))            # silu_grad kernel
    return rd(silu * up), rd(rd(g64 * up) * dsilu), rd(g64 * silu)


# ----------------------------------------------------------------------------- cross-entropy
def cross_entropy_truth(logits, labels, ignore_index):
    """Mean loss over kept rows, and d(mean)/d(logits)."""
    v = logits.shape[-1]
    x = logits.reshape(-1, v)
    lab = np.asarray(labels).reshape(-1)
    keep = lab != ignore_index
    m = x.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(-1))
    safe = np.where(keep, lab, 0)
    per = np.where(keep, lse - x[np.arange(len(lab)), safe], 0.0)
    count = max(int(keep.sum()), 1)
    p = np.exp(x - lse[:, None])
    p[np.arange(len(lab)), safe] -= 1.0
    grad = np.where(keep[:, None], p, 0.0) / count
    return per.sum() / count, grad.reshape(logits.shape)


def cross_entropy_naive_bf16(logits, labels, ignore_index):
    rd = bf16_round
    v = logits.shape[-1]
    x = logits.reshape(-1, v)
    lab = np.asarray(labels).reshape(-1)
    keep = lab != ignore_index
    safe = np.where(keep, lab, 0)
    e = rd(np.exp(rd(x - x.max(-1, keepdims=True))))
    s = rd(e.astype(np.float32).sum(-1, keepdims=True))
    p = rd(e / s)                                       # the materialised softmax, in bf16
    per = np.where(keep, rd(-np.log(np.maximum(p[np.arange(len(lab)), safe], 1e-45))), 0.0)
    count = max(int(keep.sum()), 1)
    loss = rd(per.astype(np.float32).sum() / count)
    q = p.copy()
    q[np.arange(len(lab)), safe] = rd(q[np.arange(len(lab)), safe] - 1.0)
    grad = np.where(keep[:, None], rd(q * rd(1.0 / count)), 0.0)
    return loss, grad.reshape(logits.shape)
