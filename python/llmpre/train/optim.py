"""AdamW whose state llmpre owns, keyed by the model's parameter names.

Paddle's own optimizer names its state after auto-generated tensor names
(``linear_3.w_0_moment1_0``), which change with construction order; keying by
structured names (``layers.0.mlp.down_proj.weight``) makes checkpoints
loadable into any freshly built model, and gives later parallel layouts one
place to shard the state.

Update (decoupled weight decay, bias-corrected moments, as PyTorch's AdamW),
with ``g`` the gradient times ``grad_scale`` (loss-scale and clipping factors):
    p <- p * (1 - lr * wd)                    (not for biases and norms)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

Mixed precision (bf16/fp16 "O2"): a parameter stored in low precision gets an
fp32 master copy here; moments and the update are fp32 (the gradient is cast
to fp32 first, PaddleNLP's ``amp_master_grad``), and the parameter receives the
rounded master value after each step. State per parameter: 8 bytes (two fp32
moments) plus 4 bytes of master weight for low-precision parameters.
"""

from __future__ import annotations

import math

import numpy as np
import paddle

_LOW = (paddle.float16, paddle.bfloat16)


def no_decay(name: str) -> bool:
    """PaddleNLP's rule: no weight decay for parameters named *bias* or *norm*."""
    return "bias" in name or "norm" in name


class AdamW:
    def __init__(self, named_parameters, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.params = [(n, p) for n, p in named_parameters if not p.stop_gradient]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.step_count = 0
        self.state = {
            n: (paddle.zeros(p.shape, dtype="float32"), paddle.zeros(p.shape, dtype="float32"))
            for n, p in self.params
        }
        # fp32 master weights for parameters kept in bf16/fp16
        self.master = {n: p.astype("float32") for n, p in self.params if p.dtype in _LOW}

    @paddle.no_grad()
    def step(self, lr: float, grad_scale: float = 1.0) -> None:
        """One update; gradients are multiplied by ``grad_scale`` as they are read."""
        self.step_count += 1
        t = self.step_count
        b1, b2 = self.beta1, self.beta2
        step_size = lr / (1.0 - b1 ** t)
        inv_bc2_sqrt = 1.0 / math.sqrt(1.0 - b2 ** t)
        for name, p in self.params:
            g = p.grad
            if g is None:
                continue
            if g.dtype != paddle.float32:
                g = g.astype("float32")
            if grad_scale != 1.0:
                g = g * grad_scale
            m, v = self.state[name]
            w = self.master.get(name, p)
            m.scale_(b1).add_(g * (1.0 - b1))
            v.scale_(b2).add_(g * g * (1.0 - b2))
            if self.weight_decay and not no_decay(name):
                w.scale_(1.0 - lr * self.weight_decay)
            denom = v.sqrt() * inv_bc2_sqrt + self.eps
            w.subtract_(m / denom * step_size)
            if w is not p:
                p.set_value(w.astype(p.dtype))

    def zero_grad(self) -> None:
        for _, p in self.params:
            p.clear_gradient(set_to_zero=False)

    def state_dict(self) -> tuple[dict, dict]:
        """(tensors as numpy arrays, scalars) for a checkpoint."""
        arrays = {}
        for n, (m, v) in self.state.items():
            arrays[f"{n}.exp_avg"] = m.numpy()
            arrays[f"{n}.exp_avg_sq"] = v.numpy()
        for n, w in self.master.items():
            arrays[f"{n}.master"] = w.numpy()
        scalars = {"step": self.step_count, "betas": [self.beta1, self.beta2], "eps": self.eps,
                   "weight_decay": self.weight_decay}
        return arrays, scalars

    def load_state_dict(self, arrays: dict, scalars: dict) -> None:
        expected = {f"{n}.{k}" for n in self.state for k in ("exp_avg", "exp_avg_sq")}
        expected |= {f"{n}.master" for n in self.master}
        missing, unexpected = expected - set(arrays), set(arrays) - expected
        if missing or unexpected:
            raise ValueError(f"optimizer state does not match the model: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        targets = [(f"{n}.exp_avg", m) for n, (m, _) in self.state.items()]
        targets += [(f"{n}.exp_avg_sq", v) for n, (_, v) in self.state.items()]
        targets += [(f"{n}.master", w) for n, w in self.master.items()]
        for key, t in targets:
            a = arrays[key]
            if tuple(a.shape) != tuple(t.shape):
                raise ValueError(f"optimizer state {key} has shape {a.shape}, the model "
                                 f"needs {tuple(t.shape)}")
            t.set_value(np.ascontiguousarray(a, dtype=np.float32))
        self.step_count = int(scalars["step"])

    def state_bytes(self) -> int:
        """Bytes of optimizer state (moments and master weights)."""
        total = 0
        for m, v in self.state.values():
            total += 4 * (int(np.prod(m.shape)) + int(np.prod(v.shape)))
        for w in self.master.values():
            total += 4 * int(np.prod(w.shape))
        return total


@paddle.no_grad()
def global_grad_norm(params) -> float:
    """L2 norm over every gradient, accumulated in fp32 (inf/nan when any is)."""
    grads = [p.grad for _, p in params if p.grad is not None]
    if not grads:
        return 0.0
    squares = [paddle.sum(paddle.square(g.astype("float32") if g.dtype != paddle.float32 else g))
               for g in grads]
    return float(paddle.sqrt(paddle.add_n(squares)).item())


def clip_coefficient(norm: float, max_norm: float) -> float:
    """Paddle's ClipGradByGlobalNorm factor: ``max_norm / max(norm, max_norm)``
    (1 when clipping is off or the norm is not finite)."""
    if max_norm <= 0 or not math.isfinite(norm) or norm <= max_norm:
        return 1.0
    return max_norm / norm


@paddle.no_grad()
def clip_grad_norm_(params, max_norm: float) -> float:
    """Scale gradients in place so their global norm is at most ``max_norm``;
    returns the norm before clipping."""
    norm = global_grad_norm(params)
    coef = clip_coefficient(norm, max_norm)
    if coef != 1.0:
        for _, p in params:
            if p.grad is not None:
                p.grad.scale_(coef)
    return norm
