"""How one optimizer step is computed: the single-process engine.

An engine owns the model's forward/backward, the optimizer and the checkpoint
format; the trainer owns the loop, the schedule, loss scaling, guards, logging
and evaluation cadence. :class:`llmpre.parallel.engine.ParallelEngine` has the
same interface for tensor/pipeline/data parallel and sharded runs.

    loss = engine.forward_backward(next_batch, acc, loss_scale)  # mean micro-batch loss
    engine.reduce()                       # make gradients global (no-op here)
    norm = engine.grad_norm()             # global L2 norm of the (scaled) gradients
    engine.step(lr, grad_scale)           # AdamW with gradients x grad_scale
    engine.zero_grad()
"""

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np

from llmpre.train import checkpoint as ckpt


def to_numpy(p) -> np.ndarray:
    """A tensor as numpy for safetensors; bf16 (which numpy lacks) becomes fp32."""
    if str(p.dtype).endswith("bfloat16"):
        return p.astype("float32").numpy()
    return p.numpy()


def rng_state(paddle) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}


def set_rng_state(paddle, rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    paddle.set_rng_state(rng["paddle"])


class LocalEngine:
    is_main = True
    world_size = 1

    def __init__(self, paddle, model, loss_fn, precision, args):
        from llmpre.train.optim import AdamW

        self.paddle, self.model, self.loss_fn, self.precision = paddle, model, loss_fn, precision
        self.params = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
        self.optimizer = AdamW(self.params, betas=(args.adam_beta1, args.adam_beta2),
                               eps=args.adam_epsilon, weight_decay=args.weight_decay)

    # ---- computing -------------------------------------------------------------
    def _split(self, tokens: np.ndarray):
        t = self.paddle.to_tensor(tokens)
        return t[:, :-1], t[:, 1:]

    def loss(self, tokens: np.ndarray, training: bool = True):
        """LM loss of a batch; in training, plus the MoE router's auxiliary loss
        (already scaled by its coefficient) when the model has one."""
        inputs, labels = self._split(tokens)
        with self.precision.autocast(self.paddle):
            logits = self.model(inputs)
            loss = self.loss_fn(logits, labels)
        aux = getattr(self.model, "aux_loss", None)
        return loss + aux if training and aux is not None else loss

    def forward_backward(self, next_batch, acc: int, loss_scale: float = 1.0) -> float:
        total = None
        for _ in range(acc):
            loss = self.loss(next_batch())
            (loss * (loss_scale / acc)).backward()
            total = loss.detach() if total is None else total + loss.detach()
        return float((total / acc).item())

    def eval_loss(self, tokens: np.ndarray) -> float:
        with self.paddle.no_grad():
            return float(self.loss(tokens, training=False).item())

    def reduce(self) -> None:
        pass

    def grad_norm(self) -> float:
        from llmpre.train.optim import global_grad_norm

        return global_grad_norm(self.params)

    def step(self, lr: float, grad_scale: float) -> None:
        self.optimizer.step(lr, grad_scale=grad_scale)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def train_mode(self, on: bool) -> None:
        self.model.train() if on else self.model.eval()

    def any_rank(self, value: int) -> int:
        """The largest of ``value`` over all ranks (here: this one)."""
        return value

    def full_model(self):
        """The whole model on this process (for the final HF export)."""
        return self.model

    # ---- checkpoints -------------------------------------------------------------
    def save(self, output_dir: str, step: int, state: dict) -> str:
        from safetensors.numpy import save_file

        model_arrays = {n: to_numpy(p) for n, p in self.model.named_parameters()}
        opt_arrays, opt_scalars = self.optimizer.state_dict()
        state = {**state, "optimizer": opt_scalars}
        rng = rng_state(self.paddle)
        writers = {
            "model.safetensors": lambda path: save_file(model_arrays, path),
            "optimizer.safetensors": lambda path: save_file(opt_arrays, path),
            "trainer_state.json": lambda path: _write(path, json.dumps(state, indent=1).encode()),
            "rng_state.pkl": lambda path: _write(path, pickle.dumps(rng)),
        }
        return ckpt.save_checkpoint(output_dir, step, writers)

    def load(self, path: str) -> dict:
        """Restore from a checkpoint of any layout (this process holds the whole model)."""
        from llmpre.parallel.ckpt import GlobalTensors

        tensors = GlobalTensors(path)
        own = dict(self.model.named_parameters())
        missing = sorted(set(own) - set(tensors.names()))
        unexpected = sorted(set(tensors.names()) - set(own))
        if missing or unexpected:
            raise ckpt.CheckpointError(
                f"{path}: parameters do not match this model (missing {missing[:4]}, unexpected "
                f"{unexpected[:4]}); it was saved for another configuration")
        arrays = {}
        for name, p in own.items():
            a = tensors.param(name)
            if tuple(a.shape) != tuple(p.shape):
                raise ckpt.CheckpointError(f"{path}: {name} has shape {a.shape}, the model needs "
                                           f"{tuple(p.shape)}")
            p.set_value(self.paddle.to_tensor(a).astype(p.dtype))
            m, v, master = tensors.optimizer(name)
            arrays[f"{name}.exp_avg"], arrays[f"{name}.exp_avg_sq"] = m, v
            if name in self.optimizer.master:
                arrays[f"{name}.master"] = master if master is not None else a.astype(np.float32)
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
            state = json.load(fh)
        self.optimizer.load_state_dict(arrays, state["optimizer"])
        rng_file = os.path.join(path, "rng_state.pkl")
        if os.path.exists(rng_file):
            with open(rng_file, "rb") as fh:
                set_rng_state(self.paddle, pickle.load(fh))
        return state


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
