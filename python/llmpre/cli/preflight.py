"""What ``llmpre train`` checks before it starts any worker of a parallel launch.

- **The layout**: the degrees against the world size and the model (heads, KV
  heads, vocabulary, intermediate size, layers), with the trainer's own
  adjustments of the model config (vocabulary padded for the tokenizer), so an
  impossible layout is one error from this process instead of one per worker.
- **Host memory** (on a CPU machine): every process builds only its own shard,
  from the seed or from its slices of a ``continue_training`` checkpoint
  (:mod:`llmpre.models.init`, :mod:`llmpre.models.hf_load`), so a launch needs the
  planner's per-process peak times the processes of this node, against what
  the kernel says is available (``MemAvailable``). When it cannot fit, the
  error gives both figures and what would make it fit, instead of the workers
  being killed by the OOM killer without a word. ``--force`` skips the check.
- **Device memory** (on a GPU machine): the planner's per-device figure against
  the smallest visible GPU's memory (``nvidia-smi``); when it cannot fit, both
  figures and the planner's cheapest changes. ``--force`` skips it too.
"""

from __future__ import annotations

from llmpre.errors import ConfigError

GIB = 2 ** 30


def available_host_memory() -> int | None:
    """Bytes the kernel can give new allocations (``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_layout(args, world: int):
    """The layout and the model config of ``args`` on ``world`` processes; errors name the fix."""
    from llmpre.parallel.dims import dims_from_args
    from llmpre.train.trainer import _model_config

    config = _model_config(args)
    dims = dims_from_args(args, world)
    dims.validate(world, config, args.gradient_accumulation_steps, args.max_seq_length)
    if dims.seq_parallel_size > 1:
        from llmpre.parallel.context import check_supported

        check_supported(config, dims)
    return dims, config


def plan_settings(args, dims, config):
    """The planner's settings for this run (llmpre's fused kernels on)."""
    from llmpre.plan import PlanSettings

    dtype = "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"
    return PlanSettings(
        model=config, model_name=str(args.model_name_or_path), seq_length=args.max_seq_length,
        micro_batch=args.per_device_train_batch_size, grad_accum=args.gradient_accumulation_steps,
        tp=dims.tp, pp=dims.pp, vpp=dims.vpp, dp=dims.dp, sharding=dims.sharding, ep=dims.ep,
        pipeline_layers=dims.pipeline_layers,
        sep=dims.sep, cp=dims.cp,
        stage=dims.sharding_stage if dims.sharding > 1 else 0, sequence_parallel=dims.sequence_parallel,
        recompute=dims.recompute, granularity=dims.recompute_granularity,
        no_recompute_layers=tuple(dims.no_recompute_layers),
        dtype=dtype, opt_level=args.fp16_opt_level,
        amp_master_grad=bool(args.amp_master_grad) and dtype != "float32" and args.fp16_opt_level == "O2",
        flash_attention=True, fused_rms_norm=True, fused_rope=True)


def process_bytes(args, dims, config) -> tuple[float, float]:
    """(what a process holds beyond its shard while it builds or loads the model, the
    planner's per-process peak or 0 when it cannot model this model) in bytes, for one
    process. The first is 0: a run from scratch computes only its own shard
    (llmpre.models.init) and ``continue_training`` reads only its own slices of the
    checkpoint (llmpre.models.hf_load), one parameter slice at a time."""
    from llmpre.plan import plan_memory

    build = 0.0
    try:
        planned = plan_memory(plan_settings(args, dims, config)).peak_allocated
    except ConfigError:      # the planner does not model MoE / latent attention yet
        planned = 0.0
    return build, planned


def gpu_memory_bytes() -> int | None:
    """The smallest visible GPU's memory (``nvidia-smi``), or None when it cannot be read."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        sizes = [int(float(line)) * 2 ** 20 for line in out.split() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return min(sizes) if sizes else None


def check_device_memory(args, dims, config, device_bytes: int | None = None) -> None:
    """Refuse a run whose per-device plan does not fit the GPUs (planner's rules)."""
    from llmpre.plan import cheapest_fits, plan_memory

    device_bytes = gpu_memory_bytes() if device_bytes is None else device_bytes
    if not device_bytes:
        return
    try:
        settings = plan_settings(args, dims, config)
        plan = plan_memory(settings)
    except ConfigError:      # MoE / latent attention: not modelled yet
        return
    if plan.fits(device_bytes):
        return
    fixes = cheapest_fits(settings, device_bytes)
    shown = "; ".join(" ".join(f.changes) + f" ({f.plan.device_total / GIB:.1f} GiB)" for f in fixes)
    raise ConfigError(
        f"the plan for this layout needs {plan.device_total / GIB:.1f} GiB per GPU but the GPUs have "
        f"{device_bytes / GIB:.1f} GiB. " + (f"Cheapest changes that fit: {shown}" if fixes else
        "None of the planner's changes makes it fit (`llmpre plan ... --gpu-memory` shows the details)")
        + "; --force starts it anyway")


def check_host_memory(args, dims, config, processes: int, available: int | None = None) -> None:
    """Refuse a launch whose processes on this node cannot fit in host memory."""
    available = available_host_memory() if available is None else available
    if available is None or processes < 1:
        return
    build, planned = process_bytes(args, dims, config)
    per_process = max(build, planned)
    need = per_process * processes
    if need <= available:
        return
    fits = int(available // per_process)
    changes = (f"fewer processes on this machine (at most {fits} fit: smaller tensor/pipeline/sharding "
               "degrees, or more nodes), " if fits else "")
    raise ConfigError(
        f"this launch needs about {need / GIB:.1f} GiB of host memory ({processes} processes x "
        f"{per_process / GIB:.1f} GiB: the planner's per-process peak is {planned / GIB:.1f} GiB) but "
        f"{available / GIB:.1f} GiB are available. Cheapest "
        f"changes: {changes}a smaller model, fewer layers (--num_hidden_layers), a smaller batch or "
        "sequence, or a machine with more memory; --force starts it anyway")
