"""Execute a pipeline schedule (:mod:`llmpre.parallel.schedule`) on this rank.

:class:`PipelineRunner` runs the forward and backward actions of this rank's
chunks round by round, exchanging activations and their gradients with the
neighbouring stages (point-to-point on the pipeline group), and returns the
mean loss of the micro-batches on every pipeline rank. Activations travel in
the parameters' dtype (autocast may compute in another). Every rank reads each
micro-batch's token ids, so every stage builds that micro-batch's context
(:func:`llmpre.models.stage.micro_batch_context`: e.g. GPT's dropout keys).
"""

from __future__ import annotations

import paddle

from llmpre.models.mtp import mtp_loss
from llmpre.models.stage import micro_batch_context
from llmpre.parallel.parallelize import chunk_forward
from llmpre.parallel.schedule import timeline, transfers


class PipelineRunner:
    def __init__(self, model, plan, env, loss_fn, autocast):
        """``autocast()`` returns the context manager the forward runs under."""
        self.model, self.plan, self.env = model, plan, env
        self.loss_fn, self.autocast = loss_fn, autocast
        self.kind = "interleaved" if env.dims.vpp > 1 else "1f1b"
        self._timelines: dict = {}

    def run(self, split_batches, loss_scale: float, train: bool) -> float:
        """Run the schedule over ``split_batches`` (one ``(inputs, labels)`` per
        micro-batch); returns their mean loss on every pipeline rank."""
        env = self.env
        dims, pp_group = env.dims, env.pp
        m = len(split_batches)
        key = ("train" if train else "forward", m)
        if key not in self._timelines:
            self._timelines[key] = timeline(self.kind if train else "forward", dims.pp, m, dims.vpp)
        me = env.coords["pp"]
        bsz, seq = split_batches[0][0].shape
        act_shape = [bsz, seq // dims.tp if dims.sequence_parallel else seq, self.model.config.hidden_size]
        dtype = next(p for _, p in self.model.named_parameters()).dtype
        contexts: dict = {}          # micro-batch -> its context (built at its first forward here)
        inputs, saved, grads_in, to_send, losses = {}, {}, {}, {}, []
        # MoE: the router statistics' partial sum travels with the activations (model.aux_carry)
        carry_size = self.model.aux_carry_size() if train and hasattr(self.model, "aux_carry_size") else 0
        mtp = isinstance(getattr(self.model, "mtp", None), paddle.nn.LayerList)   # kept on the last stage
        for rnd in self._timelines[key]:
            for rank, (op, mb, c) in rnd:
                if rank != me:
                    continue
                chunk = self.plan.chunks[c]
                g = chunk.stage
                if op == "F":
                    x = split_batches[mb][0] if chunk.first else inputs.pop((mb, g))
                    if not chunk.first and train:
                        x.stop_gradient = False
                    if mb not in contexts:
                        contexts[mb] = micro_batch_context(self.model, split_batches[mb][0])
                    ctx = contexts[mb]
                    before = len(ctx.get("router_stats", ()))
                    carry_in = carry = None
                    hidden = [] if train and chunk.last and mtp else None
                    with self.autocast():
                        y = chunk_forward(self.model, chunk, x, ctx, hidden)
                        if carry_size:   # this chunk's sparse layers, plus the earlier stages'
                            carry = self.model.aux_carry(ctx["router_stats"][before:], bsz)
                            if not chunk.first:
                                carry_in = inputs.pop(("carry", mb, g))
                                carry_in.stop_gradient = False
                                carry = carry_in + carry
                        if chunk.last:
                            y = self.loss_fn(y, split_batches[mb][1])
                            if carry_size:
                                y = y + self.model.aux_from_carry(carry)
                            if hidden:   # DeepSeek-V3's MTP depths, from the last hidden states
                                y = y + mtp_loss(self.model, hidden[0], split_batches[mb][0], split_batches[mb][1])
                    if chunk.last:
                        losses.append(float(y.item()))
                    else:   # activations travel in the parameters' dtype (autocast may differ)
                        to_send[("act", mb, g + 1)] = y.detach().astype(dtype)
                        if carry_size:
                            to_send[("carry", mb, g + 1)] = carry.detach()
                    if train:
                        saved[(mb, g)] = (x, y, carry_in, carry)
                else:
                    x, y, carry_in, carry = saved.pop((mb, g))
                    if chunk.last:
                        (y * (loss_scale / m)).backward()
                    else:
                        outs, grads = [y], [grads_in.pop((mb, g))]
                        carry_grad = grads_in.pop(("carry", mb, g), None)
                        if carry is not None and not carry.stop_gradient:
                            outs.append(carry)
                            grads.append(carry_grad)
                        paddle.autograd.backward(outs, grads)
                    if not chunk.first:
                        to_send[("grad", mb, g - 1)] = x.grad.astype(dtype)
                        if carry_size:
                            to_send[("carry_grad", mb, g - 1)] = (carry_in.grad if carry_in.grad is not None
                                                                  else paddle.zeros([carry_size], "float32"))
            tasks = []
            for src, dst, kind, mb, g in transfers(rnd, dims.pp, dims.vpp):
                if src == me:
                    t = to_send.pop((kind, mb, g)).contiguous()
                    tasks.append(paddle.distributed.isend(t, dst=pp_group.ranks[dst], group=pp_group.handle))
                    if carry_size:
                        c = to_send.pop(("carry" if kind == "act" else "carry_grad", mb, g)).contiguous()
                        tasks.append(paddle.distributed.isend(c, dst=pp_group.ranks[dst], group=pp_group.handle))
                if dst == me:
                    buf = paddle.empty(act_shape, dtype=dtype)
                    tasks.append(paddle.distributed.irecv(buf, src=pp_group.ranks[src], group=pp_group.handle))
                    (inputs if kind == "act" else grads_in)[(mb, g)] = buf
                    if carry_size:   # fp32 always: counts and sums of probabilities
                        c = paddle.empty([carry_size], dtype="float32")
                        tasks.append(paddle.distributed.irecv(c, src=pp_group.ranks[src], group=pp_group.handle))
                        (inputs if kind == "act" else grads_in)[("carry", mb, g)] = c
            for t in tasks:
                t.wait()
        mean = paddle.to_tensor([sum(losses) / m if losses else 0.0], dtype="float32")
        pp_group.all_reduce(mean)            # only the last stage contributed
        return float(mean.item())
