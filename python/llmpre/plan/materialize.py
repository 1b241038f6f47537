"""``llmpre plan --materialize``: build one rank's real training state and measure it.

Rank ``R`` of the planned layout is built in this process, without its peers and
without process groups, through the trainer's own code: the deferred model
(:func:`llmpre.models.build_model` with ``lazy=True``), :func:`llmpre.parallel.
parallelize.parallelize` (this rank's pipeline stage and tensor-parallel slices,
everything else never allocated), llmpre's sharded AdamW (master weights and
moments of this rank's shard) and one gradient buffer per parameter, as a
backward allocates them. The bytes of each category are counted from the
tensors themselves and set against the plan's figures; the peak resident
memory of the process and the build time are measured too.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

__all__ = ["Materialized", "materialize", "render_materialized"]

GIB = float(2 ** 30)


@dataclass
class Materialized:
    rank: int
    world: int
    coords: dict
    stage: int
    params: int = 0
    weights: int = 0
    gradients: int = 0
    optimizer: int = 0            # master weights (when not the parameters) + both moments
    optimizer_padding: int = 0    # of which: the flat layout's padding elements
    seconds: float = 0.0
    rss_before: int = 0
    peak_rss: int = 0
    planned: dict = field(default_factory=dict)


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _bytes(t) -> int:
    return int(t.numel().item() if hasattr(t.numel(), "item") else t.numel()) * t.element_size()


def materialize(settings, rank: int, seed: int = 42) -> Materialized:
    """Build rank ``rank`` of ``settings``' layout (see the module doc) and measure it."""
    import paddle

    from llmpre.models import build_model
    from llmpre.parallel.dims import ParallelDims
    from llmpre.parallel.env import detached_env
    from llmpre.parallel.optimizer import ShardedAdamW
    from llmpre.parallel.parallelize import parallelize
    from llmpre.parallel import stage3
    from llmpre.plan import plan_memory

    s = settings
    make_optimizer = ShardedAdamW
    experts = {}
    if s.ep > 1:    # this rank builds only its E / ep experts of each layer (llmpre.parallel.expert)
        from llmpre.parallel.expert import make_optimizer

        experts = {"ep": s.ep}
    dims = ParallelDims(dp=s.dp, sharding=s.sharding, sharding_stage=max(s.stage, 1), tp=s.tp, pp=s.pp,
                        sep=s.sep, cp=s.cp, vpp=s.vpp, sequence_parallel=s.sequence_parallel, recompute=s.recompute,
                        recompute_granularity=s.granularity, no_recompute_layers=tuple(s.no_recompute_layers),
                        pipeline_layers=tuple(s.pipeline_layers),
                        **experts)
    dims.validate(dims.world_size, s.model, s.grad_accum)
    env = detached_env(dims, rank)        # refuses a rank outside the world
    plan = plan_memory(s)
    stage = env.coords["pp"]
    planned = plan.stages[stage]
    out = Materialized(rank=rank, world=dims.world_size, coords=env.coords, stage=stage,
                       planned={"params": planned.params, "weights": planned.weights,
                                "gradients": planned.gradients_full, "optimizer": planned.optimizer})
    out.rss_before = _rss_peak()
    start = time.perf_counter()
    dtype = s.dtype if s.o2 else "float32"
    model = build_model(s.model, seed=seed, lazy=True, dtype=dtype)
    model = parallelize(model, env).model
    params = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    staged3 = dims.sharding_stage == 3 and dims.sharding > 1
    optimizer = make_optimizer(params, env, boundaries=stage3.unit_boundaries(params) if staged3 else ())
    held = list(model.named_parameters())     # with those outside the optimizer (DeepSeek-V3's bias)
    out.params = sum(int(p.numel().item()) for _, p in held)
    out.weights = sum(_bytes(p) for _, p in held)
    grads = [paddle.zeros(p.shape, dtype=p.dtype) for _, p in params]   # what a backward allocates
    out.gradients = sum(_bytes(g) for g in grads)
    for part in getattr(optimizer, "parts", (optimizer,)):     # ep: the dense part and the experts'
        states = [part.exp_avg, part.exp_avg_sq] + ([] if part.aliased else [part.master])
        out.optimizer += sum(_bytes(t) for t in states)
        shard = part.layout.shard_numel(part.rank)
        owned = sum(pc.param_end - pc.param_start for pc in part.pieces)
        out.optimizer_padding += (shard - owned) * 4 * len(states)
    if staged3:
        stage3.shard_parameters(model, params, optimizer)
        out.weights = sum(_bytes(p) for _, p in held if p._is_initialized())
    out.seconds = time.perf_counter() - start
    out.peak_rss = _rss_peak()
    del grads, optimizer, model
    return out


def render_materialized(m: Materialized) -> str:
    def gib(x):
        return f"{x / GIB:9.3f} GiB"

    coords = " ".join(f"{k} {v}" for k, v in m.coords.items())
    rows = [f"materialized rank {m.rank} of {m.world} ({coords}; pipeline stage {m.stage}) in {m.seconds:.1f} s",
            f"  {'':22}{'measured':>14}{'planned':>14}",
            f"  {'parameters':22}{m.params:>14,}{m.planned['params']:>14,}"]
    for key, label in (("weights", "weights"), ("gradients", "gradients"), ("optimizer", "optimizer states")):
        got, want = getattr(m, key), m.planned[key]
        mark = "equal" if abs(got - want) < 1 else f"{got - want:+,.0f} bytes"
        rows.append(f"  {label:22}{gib(got):>14}{gib(want):>14}  {mark}")
    if m.optimizer_padding:
        rows.append(f"  (optimizer states include {m.optimizer_padding:,} bytes of flat-layout padding)")
    total = m.weights + m.gradients + m.optimizer
    planned = m.planned["weights"] + m.planned["gradients"] + m.planned["optimizer"]
    rows += [f"  {'state total':22}{gib(total):>14}{gib(planned):>14}",
             f"  {'peak resident memory':22}{gib(m.peak_rss):>14}  (process before the build: "
             f"{m.rss_before / GIB:.2f} GiB; {(m.peak_rss - planned) / GIB:+.2f} GiB over the planned state)"]
    return "\n".join(rows)
