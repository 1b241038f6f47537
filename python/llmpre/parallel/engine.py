"""The engine for parallel layouts: same interface as
:class:`llmpre.train.engine.LocalEngine` (see there), over llmpre's own
tensor-parallel layers, pipeline schedules and sharded AdamW.

Logged losses are averaged over the data-parallel ranks (each rank's loss is
the mean over its own equal-sized slice of the global batch), so they equal
the single-process loss of the same global batch.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np

from llmpre.parallel import ckpt as pckpt
from llmpre.parallel.optimizer import ShardedAdamW
from llmpre.parallel.parallelize import chunk_forward, parallelize
from llmpre.parallel.schedule import timeline, transfers
from llmpre.parallel.tensor_parallel import TP_SPLIT
from llmpre.train import checkpoint as ckpt
from llmpre.train.engine import rng_state, set_rng_state, to_numpy


class ParallelEngine:
    def __init__(self, paddle, model, precision, args, env, loss_fn):
        """``loss_fn`` is the selected (fused or reference) loss; with tensor
        parallelism the vocabulary-parallel cross-entropy replaces it."""
        self.paddle, self.precision, self.env, self.args = paddle, precision, env, args
        self.config = model.config
        self.plan = parallelize(model, env)
        self.model = self.plan.model
        self.loss_fn = self.plan.loss_fn if env.dims.tp > 1 else loss_fn
        self.params = [(n, p) for n, p in self.model.named_parameters() if not p.stop_gradient]
        self.stage3 = env.dims.sharding_stage == 3 and env.dims.sharding > 1
        from llmpre.parallel import stage3

        self.optimizer = ShardedAdamW(self.params, env, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_epsilon, weight_decay=args.weight_decay,
                                      boundaries=stage3.unit_boundaries(self.params) if self.stage3 else ())
        if self.stage3:
            stage3.shard_parameters(self.model, self.params, self.optimizer)
        self.is_main = env.rank == 0
        self.world_size = env.world_size
        self.pipelined = env.dims.pp > 1
        self.kind = "interleaved" if env.dims.vpp > 1 else "1f1b"
        self._timelines: dict = {}

    # ---- computing -----------------------------------------------------------------
    def _split(self, tokens):
        t = self.paddle.to_tensor(tokens)
        return t[:, :-1], t[:, 1:]

    def any_rank(self, value: int) -> int:
        """The largest of ``value`` over every rank of the launch."""
        if self.world_size == 1:
            return value
        import paddle.distributed as dist

        t = self.paddle.to_tensor([int(value)], dtype="int64")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _data_mean(self, value: float) -> float:
        t = self.paddle.to_tensor([value], dtype="float32")
        self.env.data.all_reduce(t)
        return float(t.item()) / self.env.data.size

    def loss(self, tokens, training: bool = True):
        inputs, labels = self._split(tokens)
        with self.precision.autocast(self.paddle):
            loss = self.loss_fn(self.model(inputs), labels)
        aux = getattr(self.model, "aux_loss", None)   # MoE router loss (data parallel only)
        return loss + aux if training and aux is not None else loss

    def forward_backward(self, next_batch, acc: int, loss_scale: float = 1.0) -> float:
        if self.pipelined:
            value = self._pipeline([next_batch() for _ in range(acc)], loss_scale, train=True)
        else:
            total = 0.0
            for _ in range(acc):
                loss = self.loss(next_batch())
                (loss * (loss_scale / acc)).backward()
                total += float(loss.item())
            value = total / acc
        return self._data_mean(value)

    def eval_loss(self, tokens) -> float:
        with self.paddle.no_grad():
            if self.pipelined:
                value = self._pipeline([tokens], 1.0, train=False)
            else:
                value = float(self.loss(tokens, training=False).item())
        return self._data_mean(value)

    def _pipeline(self, batches, loss_scale: float, train: bool) -> float:
        """Run the schedule over ``batches`` (one per microbatch); returns their mean
        loss on every pipeline rank."""
        paddle, env = self.paddle, self.env
        dims, pp_group = env.dims, env.pp
        m = len(batches)
        key = ("train" if train else "forward", m)
        if key not in self._timelines:
            self._timelines[key] = timeline(self.kind if train else "forward", dims.pp, m, dims.vpp)
        rounds = self._timelines[key]
        me = env.coords["pp"]
        split = [self._split(b) for b in batches]
        bsz, seq = split[0][0].shape
        hidden = self.config.hidden_size
        act_shape = [bsz, seq // dims.tp if dims.sequence_parallel else seq, hidden]
        dtype = next(p for _, p in self.model.named_parameters()).dtype
        ctx = self.model.context(bsz, seq)
        chunk_of = {ch.stage: ch for ch in self.plan.chunks}
        inputs, saved, grads_in, to_send, losses = {}, {}, {}, {}, []
        for rnd in rounds:
            for rank, (op, mb, c) in rnd:
                if rank != me:
                    continue
                chunk = self.plan.chunks[c]
                g = chunk.stage
                if op == "F":
                    x = split[mb][0] if chunk.first else inputs.pop((mb, g))
                    if not chunk.first and train:
                        x.stop_gradient = False
                    with self.precision.autocast(paddle):
                        y = chunk_forward(self.model, chunk, x, ctx)
                        if chunk.last:
                            y = self.loss_fn(y, split[mb][1])
                    if chunk.last:
                        losses.append(float(y.item()))
                    else:   # activations travel in the parameters' dtype (autocast may differ)
                        to_send[("act", mb, g + 1)] = y.detach().astype(dtype)
                    if train:
                        saved[(mb, g)] = (x, y)
                else:
                    x, y = saved.pop((mb, g))
                    if chunk.last:
                        (y * (loss_scale / m)).backward()
                    else:
                        paddle.autograd.backward([y], [grads_in.pop((mb, g))])
                    if not chunk.first:
                        to_send[("grad", mb, g - 1)] = x.grad.astype(dtype)
            tasks = []
            for src, dst, kind, mb, g in transfers(rnd, dims.pp, dims.vpp):
                if src == me:
                    t = to_send.pop((kind, mb, g)).contiguous()
                    tasks.append(paddle.distributed.isend(t, dst=pp_group.ranks[dst], group=pp_group.handle))
                if dst == me:
                    buf = paddle.empty(act_shape, dtype=dtype)
                    tasks.append(paddle.distributed.irecv(buf, src=pp_group.ranks[src], group=pp_group.handle))
                    (inputs if kind == "act" else grads_in)[(mb, g)] = buf
            for t in tasks:
                t.wait()
        mean = paddle.to_tensor([sum(losses) / m if losses else 0.0], dtype="float32")
        pp_group.all_reduce(mean)            # only the last stage contributed
        return float(mean.item())

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

    # ---- checkpoints -----------------------------------------------------------------
    def _tp_slice(self, p, full: np.ndarray) -> np.ndarray:
        split = getattr(p, TP_SPLIT, None)
        return full if split is None else pckpt.local_slice(full, split[0], self.env.tp.index, self.env.tp.size)

    def save(self, output_dir: str, step: int, state: dict) -> str:
        from safetensors.numpy import save_file

        env, world = self.env, self.env.groups
        tmp = os.path.join(output_dir, f".{ckpt.PREFIX}{step}.tmp-sharded")
        final = os.path.join(output_dir, f"{ckpt.PREFIX}{step}")
        if self.is_main:
            os.makedirs(output_dir, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        self.env.barrier()
        files = pckpt.rank_files(env)
        writers = {files["rng"]: lambda path: _write(path, pickle.dumps(rng_state(self.paddle)))}
        gathered = self.optimizer.materialise_all()     # stage 3: parameters are shards now
        if files["writes_model"]:
            arrays = {n: to_numpy(p) for n, p in self.model.named_parameters()}
            meta = {n: pckpt.param_meta(p) for n, p in self.model.named_parameters()}
            c = env.coords
            writers[files["model"]] = lambda path: save_file(arrays, path)
            writers[f"params-tp{c['tp']}-pp{c['pp']}.json"] = lambda path: _write(path, json.dumps(meta).encode())
        if files["writes_optim"]:
            pieces = {}
            for name, items in self.optimizer.state_pieces().items():
                for start, end, m, v, w in items:
                    for kind, arr in (("exp_avg", m), ("exp_avg_sq", v), ("master", w)):
                        pieces[f"{name}|{start}|{end}|{kind}"] = np.ascontiguousarray(arr)
            writers[files["optim"]] = lambda path: save_file(pieces, path)
        for k in gathered:
            self.optimizer.release_bucket(k)
        if self.is_main:
            dims = env.dims
            layout = {"format": "llmpre-sharded-1", "dims": {"dp": dims.dp, "sharding": dims.sharding,
                      "stage": dims.sharding_stage, "tp": dims.tp, "pp": dims.pp, "vpp": dims.vpp}}
            state = {**state, "optimizer": {"step": self.optimizer.step_count}}
            writers[pckpt.LAYOUT] = lambda path: _write(path, json.dumps(layout, indent=1).encode())
            writers["trainer_state.json"] = lambda path: _write(path, json.dumps(state, indent=1).encode())
        error = None
        try:
            ckpt.write_files(tmp, writers)
        except Exception as e:  # disk full etc.: every rank must learn, then all stop together
            error = e
        failed = self.paddle.to_tensor([1.0 if error else 0.0])
        world["data"].all_reduce(failed)
        for axis in ("tp", "pp"):
            world[axis].all_reduce(failed)
        if float(failed.item()) > 0:
            self.env.barrier()
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise ckpt.save_failed(final, error or RuntimeError("another rank could not write its files"))
        self.env.barrier()
        if self.is_main:
            ckpt.finalize(tmp, output_dir, step)
        self.env.barrier()
        return final

    def load(self, path: str) -> dict:
        tensors = pckpt.GlobalTensors(path)
        own = dict(self.model.named_parameters())
        missing = sorted(set(own) - set(tensors.names()))
        if missing:
            raise ckpt.CheckpointError(f"{path}: parameters missing for this model ({missing[:4]}); it "
                                       "was saved for another configuration")
        cache: dict = {}
        released = self.optimizer.materialise_all()
        for name, p in own.items():
            value = self._tp_slice(p, tensors.param(name))
            if tuple(value.shape) != tuple(p.shape):
                raise ckpt.CheckpointError(f"{path}: {name} has shape {value.shape} here, the model "
                                           f"needs {tuple(p.shape)}")
            p.set_value(self.paddle.to_tensor(value).astype(p.dtype))

        def lookup(name, start, end):
            if name not in cache:
                p = own[name]
                m, v, master = tensors.optimizer(name)
                if master is None:
                    master = tensors.param(name).astype(np.float32)
                cache[name] = [self._tp_slice(p, a).reshape(-1) for a in (m, v, master)]
            return tuple(a[start:end] for a in cache[name])

        self.optimizer.load_state_pieces(lookup)
        for k in released:
            self.optimizer.release_bucket(k)
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
            state = json.load(fh)
        self.optimizer.step_count = int(state["optimizer"]["step"])
        rng_file = os.path.join(path, pckpt.rank_files(self.env)["rng"])
        same_layout = tensors.layout is not None and tensors.layout["dims"]["tp"] == self.env.dims.tp
        if same_layout and os.path.exists(rng_file):
            with open(rng_file, "rb") as fh:
                set_rng_state(self.paddle, pickle.load(fh))
        return state

    def full_model(self):
        """The whole model, assembled on the main rank from the latest checkpoint of
        ``output_dir`` (other ranks return None)."""
        return None


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
