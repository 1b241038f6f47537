"""AdamW whose state llmpre owns, keyed by the model's parameter names.

Paddle's own optimizer names its state after auto-generated tensor names
(``linear_3.w_0_moment1_0``), which change with construction order; keying by
structured names (``layers.0.mlp.down_proj.weight``) makes checkpoints
loadable into any freshly built model, and gives later parallel layouts one
place to shard the state.

Update (decoupled weight decay, bias-corrected moments, as PyTorch's AdamW):
    p <- p * (1 - lr * wd)                    (not for biases and norms)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
"""

from __future__ import annotations

import math

import numpy as np
import paddle


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

    @paddle.no_grad()
    def step(self, lr: float) -> None:
        self.step_count += 1
        t = self.step_count
        b1, b2 = self.beta1, self.beta2
        step_size = lr / (1.0 - b1 ** t)
        inv_bc2_sqrt = 1.0 / math.sqrt(1.0 - b2 ** t)
        for name, p in self.params:
            g = p.grad
            if g is None:
                continue
            m, v = self.state[name]
            m.scale_(b1).add_(g * (1.0 - b1))
            v.scale_(b2).add_(g * g * (1.0 - b2))
            if self.weight_decay and not no_decay(name):
                p.scale_(1.0 - lr * self.weight_decay)
            denom = v.sqrt() * inv_bc2_sqrt + self.eps
            p.subtract_(m / denom * step_size)

    def zero_grad(self) -> None:
        for _, p in self.params:
            p.clear_gradient(set_to_zero=False)

    def state_dict(self) -> tuple[dict, dict]:
        """(tensors as numpy arrays, scalars) for a checkpoint."""
        arrays = {}
        for n, (m, v) in self.state.items():
            arrays[f"{n}.exp_avg"] = m.numpy()
            arrays[f"{n}.exp_avg_sq"] = v.numpy()
        scalars = {"step": self.step_count, "betas": [self.beta1, self.beta2], "eps": self.eps,
                   "weight_decay": self.weight_decay}
        return arrays, scalars

    def load_state_dict(self, arrays: dict, scalars: dict) -> None:
        expected = {f"{n}.{k}" for n in self.state for k in ("exp_avg", "exp_avg_sq")}
        missing, unexpected = expected - set(arrays), set(arrays) - expected
        if missing or unexpected:
            raise ValueError(f"optimizer state does not match the model: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        for n, (m, v) in self.state.items():
            for t, key in ((m, "exp_avg"), (v, "exp_avg_sq")):
                a = arrays[f"{n}.{key}"]
                if tuple(a.shape) != tuple(t.shape):
                    raise ValueError(f"optimizer state {n}.{key} has shape {a.shape}, the model "
                                     f"needs {tuple(t.shape)}")
                t.set_value(np.ascontiguousarray(a, dtype=np.float32))
        self.step_count = int(scalars["step"])


@paddle.no_grad()
def clip_grad_norm_(params, max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most ``max_norm``; returns the
    norm before clipping (Paddle's ClipGradByGlobalNorm rule)."""
    grads = [p.grad for _, p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = paddle.sqrt(paddle.add_n([paddle.sum(g * g) for g in grads]))
    norm = float(total.item())
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / norm
        for g in grads:
            g.scale_(scale)
    return norm
