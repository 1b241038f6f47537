"""Which change makes a plan fit, at the least estimated throughput cost.

Candidate changes (each keeps the number of GPUs and the global batch):

* recompute: ``core_attn`` (without flash attention only), then ``full_attn``,
  then ``full``;
* sequence parallelism when tp > 1;
* data parallelism turned into sharding stage 1 (same GPUs);
* the next sharding stage (1, 2, then 3; only 1 with pipeline parallelism);
* tp doubled, up to 8 (one node) and within the attention heads, taking the
  GPUs from data parallelism or sharding;
* the micro-batch halved, gradient accumulation doubled.

"Cheapest" is the least estimated throughput loss.  Recompute costs what it
recomputes: its extra forward FLOPs over the step's FLOPs (a step is one forward
and a backward of twice the forward's FLOPs).  The others cost a fixed estimate
(:data:`FIXED_LOSS`), from their extra communication or smaller matmuls on
NVLink-connected GPUs; they are rough, and the report says "estimated".
Changes combine multiplicatively; up to four are combined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from llmpre.errors import ConfigError
from llmpre.plan.memory import MemoryPlan, plan_memory
from llmpre.plan.settings import PlanSettings

MAX_TP = 8
MAX_CHANGES = 4
FIXED_LOSS = {
    "sequence_parallel": 0.01,   # same communication volume as tp's all-reduce, split in two
    "dp_to_sharding": 0.01,      # reduce-scatter/all-gather in place of all-reduce
    "stage1": 0.01,
    "stage2": 0.03,              # gradients reduced every micro-batch instead of once a step
    "stage3": 0.10,              # parameters gathered in every forward and backward
    "tp": 0.08,                  # per doubling: more all-reduces, narrower matmuls
    "micro_batch": 0.03,         # per halving: smaller matmuls, more steps of overhead
}


@dataclass(frozen=True)
class Change:
    label: str            # what to pass on the command line
    kind: str
    apply: Callable[[PlanSettings], Optional[PlanSettings]]


@dataclass(frozen=True)
class Suggestion:
    changes: Tuple[str, ...]   # command-line flags, one per changed setting
    settings: PlanSettings
    plan: MemoryPlan
    loss: float           # estimated fraction of throughput lost


def layer_forward_flops(s: PlanSettings) -> Tuple[float, float, float]:
    """Forward FLOPs per token of one layer: (attention projections, attention core, MLP).
    The causal core counts half of the s x s products."""
    m = s.model
    h, d = m.hidden_size, m.head_dim
    q, kv = m.num_attention_heads * d, m.num_key_value_heads * d
    proj = 2 * h * (q + 2 * kv) + 2 * q * h
    core = 2 * s.seq_length * q          # QK^T and PV, each 2*s*q per token, halved for causal
    n = 3 if getattr(m, "mlp_type", "gated") == "gated" else 2
    mlp = 2 * n * h * m.intermediate_size
    return float(proj), float(core), float(mlp)


def recompute_flops(s: PlanSettings) -> float:
    """Extra forward FLOPs per token a step spends on recomputation."""
    if not s.recompute:
        return 0.0
    proj, core, mlp = layer_forward_flops(s)
    per_layer = {"full": proj + core + mlp, "full_attn": proj + core, "core_attn": core}[s.granularity]
    layers = s.model.num_hidden_layers - len(set(s.no_recompute_layers))
    return per_layer * layers


def step_flops(s: PlanSettings) -> float:
    proj, core, mlp = layer_forward_flops(s)
    forward = (proj + core + mlp) * s.model.num_hidden_layers + 2 * s.model.hidden_size * s.model.vocab_size
    return 3 * forward


def recompute_loss(old: PlanSettings, new: PlanSettings) -> float:
    base = step_flops(old)
    return 1 - (base + recompute_flops(old)) / (base + recompute_flops(new))


def _candidates(s: PlanSettings) -> List[Change]:
    out: List[Change] = []
    order = ["core_attn", "full_attn", "full"]
    current = order.index(s.granularity) if s.recompute else -1
    for g in order[current + 1:]:
        if g == "core_attn" and s.flash_attention:
            continue   # flash attention keeps almost nothing a core recompute would drop
        out.append(Change(f"--recompute --recompute-granularity {g}", "recompute",
                          lambda x, g=g: x.replace(recompute=True, granularity=g)))
    if s.tp > 1 and not s.sequence_parallel:
        out.append(Change("--sequence-parallel", "sequence_parallel",
                          lambda x: x.replace(sequence_parallel=True)))
    if s.dp > 1:
        out.append(Change(f"--sharding {s.sharding * s.dp} --dp 1 (sharding over the data-parallel GPUs)",
                          "dp_to_sharding",
                          lambda x: x.replace(sharding=x.sharding * x.dp, dp=1, stage=max(x.stage, 1))))
    top = 1 if s.pp > 1 else 3
    if s.sharding > 1 and s.stage < top:
        out.append(Change(f"--stage {s.stage + 1}", f"stage{s.stage + 1}",
                          lambda x: x.replace(stage=x.stage + 1)))
    tp2 = s.tp * 2
    if tp2 <= MAX_TP and s.model.num_attention_heads % tp2 == 0 and s.model.intermediate_size % tp2 == 0:
        if s.dp % 2 == 0:
            out.append(Change(f"--tp {tp2} --dp {s.dp // 2}", "tp",
                              lambda x: x.replace(tp=x.tp * 2, dp=x.dp // 2)))
        elif s.sharding % 2 == 0:
            out.append(Change(f"--tp {tp2} --sharding {s.sharding // 2}", "tp",
                              lambda x: x.replace(tp=x.tp * 2, sharding=x.sharding // 2,
                                                  stage=x.stage if x.sharding > 2 else 0)))
    if s.micro_batch > 1:
        out.append(Change(f"--micro-batch {s.micro_batch // 2} --gradient-accumulation-steps "
                          f"{s.grad_accum * 2}", "micro_batch",
                          lambda x: x.replace(micro_batch=x.micro_batch // 2, grad_accum=x.grad_accum * 2)))
    return out


def _loss(before: PlanSettings, after: PlanSettings, kind: str) -> float:
    if kind == "recompute":
        return recompute_loss(before, after)
    return FIXED_LOSS[kind]


def _try(s: PlanSettings, change: Change) -> Optional[PlanSettings]:
    try:
        return change.apply(s)
    except ConfigError:
        return None       # not a valid layout for this model (e.g. heads vs tp)


def _explore(s: PlanSettings):
    """Every layout reachable with up to :data:`MAX_CHANGES` changes, each with
    the cheapest path found to it: ``{settings: (estimated loss, plan)}``."""
    best = {s: (0.0, plan_memory(s))}
    frontier = {s: 1.0}
    for _ in range(MAX_CHANGES):
        nxt: dict = {}
        for cur, keep in frontier.items():
            for change in _candidates(cur):
                new = _try(cur, change)
                if new is None:
                    continue
                kept = keep * (1 - _loss(cur, new, change.kind))
                if new in best and 1 - kept >= best[new][0]:
                    continue
                best[new] = (1 - kept, best[new][1] if new in best else plan_memory(new))
                nxt[new] = max(kept, nxt.get(new, 0.0))
        frontier = nxt
    return best


def settings_delta(old: PlanSettings, new: PlanSettings) -> Tuple[str, ...]:
    """The command-line flags that turn ``old`` into ``new``."""
    out = []
    if (new.recompute, new.granularity) != (old.recompute, old.granularity) and new.recompute:
        out.append(f"--recompute --recompute-granularity {new.granularity}")
    if new.sequence_parallel and not old.sequence_parallel:
        out.append("--sequence-parallel")
    for flag, name in (("--tp", "tp"), ("--dp", "dp"), ("--sharding", "sharding"), ("--stage", "stage"),
                       ("--micro-batch", "micro_batch"), ("--gradient-accumulation-steps", "grad_accum")):
        if getattr(new, name) != getattr(old, name):
            out.append(f"{flag} {getattr(new, name)}")
    return tuple(out)


def cheapest_fits(s: PlanSettings, gpu_bytes: float, limit: int = 3) -> List[Suggestion]:
    """Up to ``limit`` fitting layouts, cheapest first (none a superset of the
    changes of a cheaper one), or an empty list when none within
    :data:`MAX_CHANGES` changes fits."""
    fitting = [Suggestion(settings_delta(s, new), new, plan, loss)
               for new, (loss, plan) in _explore(s).items() if new != s and plan.fits(gpu_bytes)]
    fitting.sort(key=lambda g: (g.loss, g.plan.peak_reserved))
    out: List[Suggestion] = []
    for g in fitting:
        if any(set(o.changes) <= set(g.changes) for o in out):
            continue                      # a cheaper suggestion already does part of this one
        out.append(g)
        if len(out) == limit:
            break
    return out


def smallest_peak(s: PlanSettings) -> MemoryPlan:
    """The lowest-peak layout within :data:`MAX_CHANGES` changes."""
    return min((plan for _, plan in _explore(s).values()), key=lambda p: p.peak_reserved)


__all__ = ["cheapest_fits", "smallest_peak", "settings_delta", "Suggestion", "FIXED_LOSS",
           "recompute_loss", "layer_forward_flops"]
