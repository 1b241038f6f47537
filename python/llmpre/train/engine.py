"""How one optimizer step is computed: the training engine, for every layout.

A single process is the layout with every degree at 1 (groups of size 1, whose
collectives do nothing): one code path for one process and for tensor,
sequence, pipeline, data parallel and sharded runs. The engine owns the
model's forward/backward, the optimizer (llmpre's flat-bucket AdamW,
:class:`llmpre.parallel.optimizer.ShardedAdamW`), every collective and the
checkpoint format; the trainer owns the loop, the schedule, loss scaling,
guards, logging and evaluation cadence.

    loss = engine.forward_backward(next_batch, acc, loss_scale)  # mean micro-batch loss
    engine.reduce()                       # make gradients global
    norm = engine.grad_norm()             # global L2 norm of the (scaled) gradients
    engine.step(lr, grad_scale)           # AdamW with gradients x grad_scale
    engine.zero_grad()

Logged losses are averaged over the data-parallel ranks (each rank's loss is
the mean over its own equal-sized slice of the global batch), so they equal
the single-process loss of the same global batch.

Checkpoints (:mod:`llmpre.parallel.ckpt` describes the files) load onto any
layout; those of llmpre versions with a separate single-process engine
(``model.safetensors`` + ``optimizer.safetensors``) load too.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil

import numpy as np

from llmpre.parallel import ckpt as pckpt
from llmpre.parallel import context
from llmpre.parallel import stage3
from llmpre.parallel.expert import EXPERT_PARAM, make_optimizer
from llmpre.ops.select import flags_from_args, select_ops
from llmpre.parallel.parallelize import parallelize
from llmpre.parallel.pipeline import PipelineRunner
from llmpre.parallel.tensor_parallel import TP_SPLIT
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


class Engine:
    def __init__(self, paddle, model, precision, args, env, loss_fn):
        """``loss_fn`` is the selected (fused or reference) loss; with tensor
        parallelism the vocabulary-parallel cross-entropy replaces it."""
        self.paddle, self.precision, self.env, self.args = paddle, precision, env, args
        self.config = model.config
        self.stage3 = env.dims.sharding_stage == 3 and env.dims.sharding > 1
        # stage 3: decoder-layer parameters are never materialised whole on a rank; the
        # optimizer computes its own shard of them and gathers a layer only while it runs
        self.plan = parallelize(model, env, materialize=stage3.outside_units if self.stage3 else True)
        self.model = self.plan.model
        context.apply(self.model, env)   # sep / cp: attention across the sequence split, positions
        self.loss_fn = context.wrap_loss(self.plan.loss_fn if env.dims.tp > 1 else loss_fn,
                                         context.seq_group(env))
        self.params = [(n, p) for n, p in self.model.named_parameters() if not p.stop_gradient]
        self.optimizer = make_optimizer(self.params, env, betas=(args.adam_beta1, args.adam_beta2),
                                        eps=args.adam_epsilon, weight_decay=args.weight_decay,
                                        update=select_ops(**flags_from_args(args)).adamw,
                                        boundaries=stage3.unit_boundaries(self.params) if self.stage3 else ())
        if self.stage3:
            stage3.shard_parameters(self.model, self.params, self.optimizer)
        self.is_main = env.rank == 0
        self.world_size = env.world_size
        self.pipeline = PipelineRunner(self.model, self.plan, env, self.loss_fn,
                                       lambda: precision.autocast(paddle)) if env.dims.pp > 1 else None

    # ---- computing -----------------------------------------------------------------
    def _split(self, tokens):
        t = self.paddle.to_tensor(tokens)
        return context.keep_own_part(t[:, :-1], t[:, 1:], self.env)   # all of it without sep / cp

    def _data_mean(self, value: float) -> float:
        """The mean over the data ranks of a loss that sep / cp ranks hold in shares."""
        seq = context.seq_group(self.env)
        if self.env.data.size == 1 and seq.size == 1:
            return value
        t = self.paddle.to_tensor([value], dtype="float32")
        seq.all_reduce(t)
        self.env.data.all_reduce(t)
        return float(t.item()) / self.env.data.size

    def loss(self, tokens, training: bool = True):
        """LM loss of a batch; in training, plus the MoE router's auxiliary loss
        (already scaled by its coefficient) when the model has one."""
        inputs, labels = self._split(tokens)
        mtp = training and getattr(self.model, "mtp", None) is not None    # MTP: its loss needs the labels
        with self.precision.autocast(self.paddle):
            loss = self.loss_fn(self.model(inputs, labels=labels) if mtp else self.model(inputs), labels)
        aux = getattr(self.model, "aux_loss", None)
        return loss + aux if training and aux is not None else loss

    def forward_backward(self, next_batch, acc: int, loss_scale: float = 1.0) -> float:
        if self.pipeline is not None:
            value = self.pipeline.run([self._split(next_batch()) for _ in range(acc)], loss_scale, train=True)
        else:
            total = None
            for _ in range(acc):
                loss = self.loss(next_batch())
                (loss * (loss_scale / acc)).backward()
                total = loss.detach() if total is None else total + loss.detach()
            value = float((total / acc).item())
        return self._data_mean(value)

    def eval_loss(self, tokens) -> float:
        with self.paddle.no_grad():
            if self.pipeline is not None:
                value = self.pipeline.run([self._split(tokens)], 1.0, train=False)
            else:
                value = float(self.loss(tokens, training=False).item())
        return self._data_mean(value)

    def reduce(self) -> None:
        if self.plan.tied_embedding and self.env.embed_group.size > 1:
            for _, p in self.model.embed_tokens.named_parameters():
                if p.grad is not None:
                    self.env.embed_group.all_reduce(p.grad)
        self.optimizer.reduce_gradients()

    def grad_norm(self) -> float:
        return self.optimizer.grad_norm()

    def step(self, lr: float, grad_scale: float) -> None:
        self.optimizer.step(lr, grad_scale=grad_scale)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def train_mode(self, on: bool) -> None:
        self.model.train() if on else self.model.eval()

    # ---- agreement between ranks -------------------------------------------------------
    def any_rank(self, value: int) -> int:
        """The largest of ``value`` over every rank of the launch."""
        if self.world_size == 1:
            return value
        import paddle.distributed as dist

        t = self.paddle.to_tensor([int(value)], dtype="int64")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def broadcast_text(self, text: str | None) -> str | None:
        """The main rank's string (or None) on every rank."""
        if self.world_size == 1:
            return text
        paddle = self.paddle
        data = (text or "").encode()
        length = paddle.to_tensor([len(data)], dtype="int64")
        paddle.distributed.broadcast(length, src=0)
        n = int(length.item())
        buf = paddle.to_tensor(np.frombuffer(data.ljust(n, b" "), dtype=np.uint8).copy()
                               if n else np.zeros(1, np.uint8))
        paddle.distributed.broadcast(buf, src=0)
        return bytes(buf.numpy()[:n]).decode() or None

    def barrier(self) -> None:
        self.env.barrier()

    # ---- checkpoints -----------------------------------------------------------------
    def checkpoint_files(self, state: dict) -> dict:
        """``{file name: write(path)}``: this rank's files of a checkpoint (the values are
        taken now; stage 3's buckets must be gathered). No collective: any rank of any
        layout can be written from one process (``detached_env``)."""
        from safetensors.numpy import save_file

        env = self.env
        files = pckpt.rank_files(env)
        writers = {files["rng"]: lambda path: _write(path, pickle.dumps(rng_state(self.paddle)))}
        if files["writes_model"]:
            arrays = {n: to_numpy(p) for n, p in self.model.named_parameters()}
            meta = {pckpt.PARAMS_KEY: json.dumps({n: pckpt.param_meta(p) for n, p in self.model.named_parameters()})}
            writers[files["model"]] = lambda path: save_file(arrays, path, metadata=meta)
        if files["expert_model"]:      # expert parallelism: this rank's experts
            experts = {n: p for n, p in self.model.named_parameters() if getattr(p, EXPERT_PARAM, False)}
            arrays = {n: to_numpy(p) for n, p in experts.items()}
            meta = {pckpt.PARAMS_KEY: json.dumps({n: pckpt.param_meta(p) for n, p in experts.items()})}
            writers[files["expert_model"]] = lambda path: save_file(arrays, path, metadata=meta)
        split = getattr(self.optimizer, "experts", None)     # expert parallelism: two parts
        if files["writes_optim"]:
            dense = self.optimizer.dense if split is not None else self.optimizer
            writers[files["optim"]] = self._optim_writer(dense.state_pieces())
        if split is not None and files["expert_optim"]:
            writers[files["expert_optim"]] = self._optim_writer(split.state_pieces())
        if self.is_main:
            dims = env.dims
            layout = {"format": "llmpre-sharded-1", "dims": {"dp": dims.dp, "sharding": dims.sharding,
                      "stage": dims.sharding_stage, "tp": dims.tp, "pp": dims.pp, "vpp": dims.vpp,
                      "ep": dims.ep}}
            state = {**state, "optimizer": {"step": self.optimizer.step_count}, "layout": layout}
            writers["trainer_state.json"] = lambda path: _write(path, json.dumps(state, indent=1).encode())
        return writers

    def _optim_writer(self, state_pieces: dict):
        from safetensors.numpy import save_file

        pieces = {}
        own = dict(self.params)
        for name, items in state_pieces.items():
            # an fp32 parameter equals its master weight after every step: not stored twice
            kinds = ("exp_avg", "exp_avg_sq") + (("master",) if own[name].dtype != self.paddle.float32 else ())
            for start, end, *values in items:
                for kind, arr in zip(kinds, values):
                    pieces[f"{name}|{start}|{end}|{kind}"] = np.ascontiguousarray(arr)
        return lambda path: save_file(pieces, path)

    def save(self, output_dir: str, step: int, state: dict) -> str:
        env = self.env
        final = os.path.join(output_dir, f"{ckpt.PREFIX}{step}")
        made = None
        if self.is_main:
            os.makedirs(output_dir, exist_ok=True)
            made = ckpt.temp_dir(output_dir, step)     # named after rank 0, the writer of record
        tmp = self.broadcast_text(made)
        gathered = self.optimizer.materialise_all()     # stage 3: parameters are shards now
        writers = self.checkpoint_files(state)
        for k in gathered:
            self.optimizer.release_bucket(k)
        error = None
        try:
            ckpt.write_files(tmp, writers)
        except Exception as e:  # disk full etc.: every rank must learn, then all stop together
            error = e
        if self.any_rank(1 if error else 0):
            self.barrier()
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise ckpt.save_failed(final, error or RuntimeError("another rank could not write its files"))
        self.barrier()
        if self.is_main:
            ckpt.finalize(tmp, output_dir, step)
        self.barrier()
        return final

    def load(self, path: str) -> dict:
        """Restore from a checkpoint of any layout, reading only what this rank keeps.

        The optimizer reads the state of the elements it owns (``optimizer.pieces``): the
        moments, and the master weights (stored, or an fp32 parameter's own values), and
        writes the parameters from them (stage 3's decoder layers stay released: they are
        gathered from the new shards at their next use). A parameter outside the optimizer
        reads its tp slice (whole if replicated). No whole tensor is assembled unless this
        rank keeps it whole; :class:`llmpre.parallel.ckpt.GlobalTensors` reads the parts of
        the files that overlap each request and closes them at the end."""
        with pckpt.GlobalTensors(path) as tensors:
            own = dict(self.model.named_parameters())
            missing = sorted(set(own) - set(tensors.names()))
            if missing:
                raise ckpt.CheckpointError(f"{path}: parameters missing for this model ({missing[:4]}); it "
                                           "was saved for another configuration")
            tp = self.env.tp
            regions = {}
            for name, p in own.items():
                stored, needed = list(tensors.meta(name)["shape"]), [int(s) for s in p.shape]
                here = list(stored)                          # the checkpoint's, sliced as this rank
                split = getattr(p, TP_SPLIT, None)
                if split is not None and len(here) > split[0]:
                    here[split[0]] //= tp.size
                    needed[split[0]] = split[1]
                if tuple(here) != tuple(p.shape) or stored != needed:
                    raise ckpt.CheckpointError(f"{path}: {name} has shape {tuple(here)} here, the model "
                                               f"needs {tuple(p.shape)}")
                regions[name] = pckpt.tp_region(p, tp.index)
            trainable = {name for name, _ in self.params}
            for name, p in own.items():
                if name not in trainable:      # not the optimizer's: its slice is read here
                    p.set_value(self.paddle.to_tensor(tensors.region(name, regions[name])).astype(p.dtype))

            def lookup(name, start, end):
                m, v, master = tensors.optimizer_elements(name, regions[name], start, end)
                if master is None:     # an fp32 parameter was its own master weight
                    master = tensors.elements(name, regions[name], start, end).astype(np.float32, copy=False)
                return m, v, master

            self.optimizer.load_state_pieces(lookup)
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
            state = json.load(fh)
        self.optimizer.step_count = int(state["optimizer"]["step"])
        if tensors.layout is None:      # a checkpoint of the former single-process format
            rng_file = os.path.join(path, "rng_state.pkl")
            same_layout = self.world_size == 1
        else:
            rng_file = os.path.join(path, pckpt.rank_files(self.env)["rng"])
            same_layout = tensors.layout["dims"]["tp"] == self.env.dims.tp
        if same_layout and os.path.exists(rng_file):
            with open(rng_file, "rb") as fh:
                set_rng_state(self.paddle, pickle.load(fh))
        return state

    # ---- the final model ---------------------------------------------------------------
    @property
    def holds_whole_model(self) -> bool:
        """Whether this process holds every parameter whole (one process of any kind)."""
        return self.world_size == 1

    def final_weights(self, checkpoint: str | None):
        """``(shapes, tensor, dtype)`` for the final HF export, on the main rank (None on the
        others): every parameter's global shape, ``tensor(name)`` giving one whole parameter,
        and the dtype to write. A process holding the whole model gives its own parameters
        in their dtype; otherwise they are read from ``checkpoint`` (a checkpoint of this
        run) one at a time, reassembled from their slices, and written as float32 (the
        checkpoint's dtype), so no rank ever holds the whole model."""
        if self.holds_whole_model:
            params = dict(self.model.named_parameters())
            dtype = str(next(iter(params.values())).dtype).replace("paddle.", "")
            return {n: list(p.shape) for n, p in params.items()}, params.__getitem__, dtype
        if not self.is_main:
            return None
        with pckpt.GlobalTensors(checkpoint) as tensors:
            shapes = {n: list(tensors.meta(n)["shape"]) for n in tensors.names()}
        return shapes, tensors.param_closing, "float32"      # each read closes its files


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
