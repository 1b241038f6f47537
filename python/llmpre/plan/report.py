"""Text and JSON renderings of a :class:`~llmpre.plan.memory.MemoryPlan`."""

from __future__ import annotations

from typing import List, Optional

from llmpre.plan.memory import (ALLOCATOR_OVERHEAD, GIB, MIB, RUNTIME_BYTES, MemoryPlan, dtypes,
                                layer_inventory)
from llmpre.plan.search import Suggestion


def _gib(b: float) -> str:
    return f"{b / GIB:8.2f}"


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _layout(p: MemoryPlan) -> str:
    s = p.settings
    parts = [f"dp {s.dp}"]
    if s.stage:
        parts.append(f"sharding {s.sharding} (stage {s.stage})")
    parts.append(f"tp {s.tp}" + (" + sequence parallel" if s.sequence_parallel else ""))
    parts.append(f"pp {s.pp}" + (f" x vpp {s.vpp}" if s.vpp > 1 else ""))
    if s.sep > 1:
        parts.append(f"sep {s.sep}")
    if s.cp > 1:
        parts.append(f"cp {s.cp} (ring attention)")
    ep = f" (experts split over ep {s.ep} of the data ranks)" if s.ep > 1 else ""
    return f"{s.world_size} GPUs = " + " x ".join(parts) + ep


def _split(p: MemoryPlan) -> str:
    """Layers of each pipeline chunk in forward order, runs shortened: ``3, 3, 4 x13, 3``."""
    counts = [len(r) for r in p.settings.chunk_layers()]
    runs: List[list] = []
    for n in counts:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    text = ", ".join(f"{n} x{k}" if k > 2 else ", ".join([str(n)] * k) for n, k in runs)
    how = "given (--pipeline-layers)" if p.settings.pipeline_layers else (
        "even" if len(set(counts)) == 1 else "uneven: the short shares on the last, then the first chunks")
    return f"{text} ({how})"


def _kernels(p: MemoryPlan) -> str:
    s = p.settings
    ks = [name for name, on in (("flash attention", s.flash_attention), ("fused rms_norm", s.fused_rms_norm),
                                ("fused rope", s.fused_rope), ("fused qkv", s.fuse_attention_qkv),
                                ("fused gate/up", s.fuse_attention_ffn)) if on]
    return ", ".join(ks) if ks else "reference ops (no fused kernels)"


def _recompute(p: MemoryPlan) -> str:
    s = p.settings
    if not s.recompute:
        return "no recompute"
    extra = f", except layers {list(s.no_recompute_layers)}" if s.no_recompute_layers else ""
    return f"recompute {s.granularity}{extra}"


def render(p: MemoryPlan, gpu_gib: Optional[float] = None, suggestions: Optional[List[Suggestion]] = None,
           smallest: Optional[MemoryPlan] = None, verbose: bool = False) -> str:
    s, st = p.settings, p.worst
    dt = dtypes(s)
    w = {2: "16-bit", 4: "fp32"}
    lines = [
        f"model      {s.model_name or 'model'}: {_count(p.total_params)} parameters"
        + (f" ({_count(p.activated_params)} activated per token)" if p.activated_params != p.total_params else "")
        + f", {s.model.num_hidden_layers} layers, hidden {s.model.hidden_size}, vocab {s.model.vocab_size}",
        f"layout     {_layout(p)}",
        *([f"pipeline   layers per chunk {_split(p)}"] if s.pp > 1 else []),
        f"batch      micro-batch {s.micro_batch} x seq {s.seq_length}, gradient accumulation {s.grad_accum}",
        f"precision  {s.describe_precision()}",
        f"kernels    {_kernels(p)}; {_recompute(p)}",
        "",
        f"per device (pipeline stage {st.rank} of {s.pp}, {st.layers} layers)" if s.pp > 1 else "per device",
        f"  parameters           {st.params:>15,}",
    ]
    shard = f", 1/{s.sharding} kept" if s.stage >= 2 else ""
    lines += [
        f"  weights          {_gib(st.weights)} GiB  {w[dt.weight]}"
        + (f", 1/{s.sharding} (stage 3) + {_gib(st.stage3_gathered).strip()} GiB gathered" if s.stage >= 3 else ""),
        f"  gradients        {_gib(st.gradients)} GiB  {w[dt.grad]}{shard}",
        f"  optimizer states {_gib(st.optimizer)} GiB  AdamW fp32 moments"
        + (" + fp32 master weights" if s.o2 or (s.stage >= 1 and s.sharding > 1) else "") + (f", 1/{s.sharding}" if s.stage >= 1 else "")
        + (f" (routed experts 1/{s.dp * s.sharding // s.ep})" if s.ep > 1 and s.stage >= 1 and s.sharding > 1 else ""),
        *([f"  gradient buffer  {_gib(st.grad_buffer)} GiB  fp32, the packed gradients the update reads, kept "
           "between steps (one shard)"] if st.grad_buffer else []),
        f"  activations      {_gib(st.activations)} GiB  {st.layers} layers x {st.micro_batches:g} micro-batch(es)"
        f" in flight, {st.layer_activation / MIB:,.0f} MiB per layer",
    ]
    if st.logits:
        lines.append(f"  logits + loss    {_gib(st.logits)} GiB  (+ {st.head / MIB:,.0f} MiB final norm/head input)")
    lines += [
        f"  peak allocated   {_gib(p.peak_allocated)} GiB  {p.peak_allocated / MIB:,.0f} MiB at {st.peak_phase}",
        f"  peak reserved    {_gib(p.peak_reserved)} GiB  {p.peak_reserved / MIB:,.0f} MiB "
        f"(+{ALLOCATOR_OVERHEAD:.0%} allocator; what PaddleNLP's table reports)",
    ]
    if verbose:
        lines += ["", "phases (allocated):"]
        for stage in p.stages:
            for name, b in stage.phases.items():
                lines.append(f"  stage {stage.rank}  {name:<48} {_gib(b)} GiB")
        lines += ["", "one layer, one micro-batch, bytes per token (no recompute):"]
        for name, b in layer_inventory(s).items():
            lines.append(f"  {name:<46} {b:>12,.0f}")
    if gpu_gib is not None:
        cap = gpu_gib * GIB
        need = p.device_total
        lines.append("")
        verdict = "fits" if p.fits(cap) else "does NOT fit"
        lines.append(f"{verdict} in {gpu_gib:g} GiB: needs {need / GIB:.2f} GiB = reserved peak + "
                     f"{RUNTIME_BYTES / GIB:.1f} GiB CUDA context/NCCL ({(cap - need) / GIB:+.2f} GiB to spare)")
        if not p.fits(cap):
            if suggestions:
                lines.append("cheapest changes that fit (estimated throughput loss):")
                for g in suggestions:
                    lines.append(f"  {' '.join(g.changes):<64} -{g.loss:5.1%}  -> "
                                 f"needs {g.plan.device_total / GIB:.2f} GiB")
            else:
                low = smallest.device_total / GIB if smallest is not None else float("nan")
                lines.append(f"no combination of up to 4 changes fits; the lowest found needs {low:.2f} GiB: "
                             "use more GPUs (sharding or pipeline stages) or a shorter sequence")
    return "\n".join(lines)


def to_dict(p: MemoryPlan, gpu_gib: Optional[float] = None,
            suggestions: Optional[List[Suggestion]] = None) -> dict:
    st = p.worst
    out = {
        "model": p.settings.model_name, "total_parameters": p.total_params,
        "activated_parameters": p.activated_params,
        "world_size": p.settings.world_size, "stage_of_peak": st.rank,
        "parameters_per_device": st.params,
        "bytes": {"weights": st.weights, "gradients": st.gradients, "optimizer_states": st.optimizer,
                  "activations": st.activations, "logits": st.logits, "head": st.head,
                  "stage3_gathered": st.stage3_gathered,
                  "peak_allocated": p.peak_allocated, "peak_reserved": p.peak_reserved,
                  "device_total": p.device_total},
        "peak_phase": st.peak_phase,
        "phases": {f"stage{x.rank}": x.phases for x in p.stages},
        "pipeline_layers": [len(r) for r in p.settings.chunk_layers()],
        "layers_per_stage": [x.layers for x in p.stages],
    }
    if gpu_gib is not None:
        out["gpu_memory_gib"] = gpu_gib
        out["fits"] = p.fits(gpu_gib * GIB)
        out["suggestions"] = [{"changes": list(g.changes), "estimated_throughput_loss": g.loss,
                               "device_total": g.plan.device_total} for g in (suggestions or [])]
    return out
