"""Expert parallelism: each rank of an ``ep`` group holds ``E / ep`` experts of every MoE layer.

Member ``j`` of a group of ``ep`` data ranks (:class:`llmpre.parallel.dims.ParallelDims`)
keeps experts ``[j E/ep, (j+1) E/ep)``; the other experts are never built on it. In
:meth:`llmpre.models.moe.MoE.routed` every rank sorts its (token, slot) rows by expert;
here (replacing ``MoE.run_experts``) the rows of each expert block go to the member
holding it, the local experts run over what arrived, and the outputs go back the way the
rows came, so ``routed`` combines them with the routing weights exactly as in one
process. Per layer and pass the members exchange their per-expert row counts first
(one host read: the buffers are sized from it), then the rows (``comm.exchange_rows``,
whose backward sends the gradients back).

Gradients: a local expert's gradient on a rank sums what every member's tokens gave it
(the reverse exchange brings them), so summing it over the ranks holding the same
experts (``expert_data``, dp x sharding / ep of them) and dividing by every data rank,
as for every other parameter, gives one process's gradient (``optimizer.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import paddle
import paddle.nn as nn

from llmpre.parallel import comm

EXPERT_PARAM = "llmpre_expert"     # attribute set on the parameters of a rank's local experts


def local_experts(num_experts: int, ep: int, index: int) -> range:
    """The experts member ``index`` of an ``ep`` group holds."""
    per = num_experts // ep
    return range(index * per, (index + 1) * per)


class ExpertDispatch:
    """``MoE.run_experts`` of one rank under expert parallelism (module doc)."""

    def __init__(self, moe, group: comm.Group):
        self.moe, self.group = moe, group
        self.num = moe.cfg.num_experts
        self.local = local_experts(self.num, group.size, group.index)

    def weights(self, proj: str) -> list:
        return [getattr(self.moe.experts[e], proj).weight for e in self.local]

    def __call__(self, x, offsets, index):
        """Rows ``x[index]`` ``[m, h]`` sorted by expert, offsets ``[E + 1]`` -> ``[m, h]``
        (rows past ``offsets[E]``, dropped by a capacity limit: 0)."""
        ep, me, per = self.group.size, self.group.index, len(self.local)
        rows = paddle.gather(x, index)                            # [m, h]: they travel, so they are gathered
        counts = np.array(self.group.exchange_counts(offsets[1:] - offsets[:-1]))     # [ep, E] rows per expert
        blocks = counts.reshape([ep, ep, per])                    # [source, owner, local expert]
        send = blocks.sum(-1).tolist()                            # send[s][d]: rows from s to d
        kept = int(counts[me].sum())                              # this rank's rows not dropped
        sent = rows[:kept] if kept < int(rows.shape[0]) else rows
        got = comm.exchange_rows(sent, send, self.group)          # [r, h] by source, each by local expert
        # order what arrived by local expert (then source): positions in ``got``
        mine = blocks[:, me, :]                                   # [source, local expert]
        source_start = np.concatenate([[0], np.cumsum(mine.sum(-1))[:-1]])
        within = np.concatenate([np.zeros([ep, 1], np.int64), np.cumsum(mine, -1)[:, :-1]], -1)
        perm = np.concatenate([source_start[s] + within[s, e] + np.arange(mine[s, e])
                               for e in range(per) for s in range(ep)]).astype(np.int64)
        local_offsets = np.concatenate([[0], np.cumsum(mine.sum(0))]).astype(np.int64)   # [per + 1]
        if perm.size:
            y = self.moe.ops.grouped_mlp(got, paddle.to_tensor(local_offsets), self.weights("gate_proj"),
                                         self.weights("up_proj"), self.weights("down_proj"),
                                         paddle.to_tensor(perm))                           # [r, h] by expert
            y = paddle.gather(y, paddle.to_tensor(np.argsort(perm)))                      # [r, h] by source
        else:
            y = got * 0.0
        back = comm.exchange_rows(y, [list(col) for col in zip(*send)], self.group)       # [kept, h]
        dropped = int(rows.shape[0]) - kept
        if dropped:
            back = paddle.concat([back, paddle.zeros([dropped, back.shape[1]], dtype=back.dtype)])
        return back


def apply(model, env) -> None:
    """Keep only this rank's experts of every MoE layer (before anything is materialised,
    so the others are never built; the kept ones keep their global names) and route the
    rows between the ``ep`` group's members."""
    from llmpre.models.moe import MoE

    group = env.groups.get("ep")
    if group is None or group.size == 1:
        return
    for layer in model.sublayers():
        if not isinstance(layer, MoE):
            continue
        dispatch = ExpertDispatch(layer, group)
        for e in range(dispatch.num):
            if e in dispatch.local:
                for p in layer.experts[e].parameters():
                    setattr(p, EXPERT_PARAM, True)
            else:
                layer.experts[e] = nn.Layer()       # placeholder: another member's expert
        layer.run_experts = dispatch


class ExpertSplitAdamW:
    """The optimizer of a rank under expert parallelism: one :class:`ShardedAdamW` over the
    parameters every data rank holds (as without ep) and one over this rank's experts,
    whose data ranks are the ``expert_data`` group: their gradients are summed there (dp),
    or reduce-scattered there with the state sharded over it (sharding > 1). Both divide by
    every data rank (see the module doc). The gradient norm adds the experts' squares over
    the ``ep`` group (each member holds other experts)."""

    def __init__(self, named_parameters, env, **kwargs):
        from llmpre.parallel import stage3
        from llmpre.parallel.optimizer import ShardedAdamW

        named = [(n, p) for n, p in named_parameters if not p.stop_gradient]
        groups, single = env.groups, comm.Group([env.rank], None, env.rank)
        sharded = env.dims.sharding > 1
        view = dataclasses.replace(env, groups={**groups, "sharding": groups["expert_data"] if sharded else single,
                                                "dp": single if sharded else groups["expert_data"]})
        staged = bool(kwargs.pop("boundaries", ()))     # stage 3: each part's own decoder-layer units
        dense = [(n, p) for n, p in named if not getattr(p, EXPERT_PARAM, False)]
        experts = [(n, p) for n, p in named if getattr(p, EXPERT_PARAM, False)]
        self.dense = ShardedAdamW(dense, env, boundaries=stage3.unit_boundaries(dense) if staged else (), **kwargs)
        self.experts = ShardedAdamW(experts, view, boundaries=stage3.unit_boundaries(experts) if staged else (),
                                    **kwargs)
        self.parts = (self.dense, self.experts)
        self.ep = groups["ep"]
        self.params = self.dense.params + self.experts.params

    @property
    def step_count(self) -> int:
        return self.dense.step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        for part in self.parts:
            part.step_count = value

    def reduce_gradients(self) -> None:
        for part in self.parts:
            part.reduce_gradients()

    @paddle.no_grad()
    def grad_norm(self) -> float:
        sq = self.dense.grad_sq() + self.ep.all_reduce(self.experts.grad_sq())
        return float(paddle.sqrt(sq).item())

    def step(self, lr: float, grad_scale: float = 1.0) -> None:
        for part in self.parts:
            part.step(lr, grad_scale=grad_scale)

    def zero_grad(self) -> None:
        for part in self.parts:
            part.zero_grad()

    def publish(self) -> None:
        for part in self.parts:
            part.publish()

    def materialise_all(self) -> list:
        """Stage 3: gather every released bucket of both parts; returns ``(part, bucket)``s."""
        return [(i, k) for i, part in enumerate(self.parts) for k in part.materialise_all()]

    def release_bucket(self, key) -> None:
        i, k = key
        self.parts[i].release_bucket(k)

    def state_pieces(self) -> dict:
        """The dense part's pieces (key "dense") and the experts' (key "experts"): they are
        written by different ranks (:func:`llmpre.parallel.ckpt.rank_files`)."""
        return {"dense": self.dense.state_pieces(), "experts": self.experts.state_pieces()}

    def load_state_pieces(self, lookup) -> None:
        for part in self.parts:
            part.load_state_pieces(lookup)


def make_optimizer(named_parameters, env, **kwargs):
    """:class:`ShardedAdamW`, or :class:`ExpertSplitAdamW` when this rank holds a share of
    the experts."""
    from llmpre.parallel.optimizer import ShardedAdamW

    named = list(named_parameters)
    if any(getattr(p, EXPERT_PARAM, False) for _, p in named):
        return ExpertSplitAdamW(named, env, **kwargs)
    return ShardedAdamW(named, env, **kwargs)
