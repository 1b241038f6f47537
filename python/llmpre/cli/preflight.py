"""What ``llmpre train`` checks before it starts any worker of a parallel launch.

- **The layout**: the degrees against the world size and the model (heads, KV
  heads, vocabulary, intermediate size, layers), with the trainer's own
  adjustments of the model config (vocabulary padded for the tokenizer), so an
  impossible layout is one error from this process instead of one per worker.
- **Host memory** (on a CPU machine): every process first builds the whole
  model in fp32 and then keeps its shard (shard-local building is not there
  yet), so a launch needs, per process, the larger of that build and the
  planner's per-process peak; times the processes of this node, against what
  the kernel says is available (``MemAvailable``). When it cannot fit, the
  error gives both figures and what would make it fit, instead of the workers
  being killed by the OOM killer without a word. ``--force`` skips the check.
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
    dims.validate(world, config, args.gradient_accumulation_steps)
    return dims, config


def process_bytes(args, dims, config) -> tuple[float, float]:
    """(whole-model fp32 build, the planner's per-process peak or 0 when it cannot model
    this model) in bytes, for one process."""
    build = 4.0 * config.num_parameters()
    try:
        from llmpre.plan import PlanSettings, plan_memory

        settings = PlanSettings(
            model=config, model_name=str(args.model_name_or_path), seq_length=args.max_seq_length,
            micro_batch=args.per_device_train_batch_size, grad_accum=args.gradient_accumulation_steps,
            tp=dims.tp, pp=dims.pp, vpp=dims.vpp, dp=dims.dp, sharding=dims.sharding,
            stage=dims.sharding_stage if dims.sharding > 1 else 0, sequence_parallel=dims.sequence_parallel,
            recompute=dims.recompute, granularity=dims.recompute_granularity,
            no_recompute_layers=tuple(dims.no_recompute_layers), flash_attention=True,
            fused_rms_norm=True, fused_rope=True)
        planned = plan_memory(settings).peak_allocated
    except ConfigError:      # the planner does not model MoE / latent attention yet
        planned = 0.0
    return build, planned


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
        f"{per_process / GIB:.1f} GiB: the planner's per-process peak is {planned / GIB:.1f} GiB and "
        f"every process first builds the whole fp32 model, {build / GIB:.1f} GiB for "
        f"{config.num_parameters():,} parameters) but {available / GIB:.1f} GiB are available. Cheapest "
        f"changes: {changes}a smaller model, fewer layers (--num_hidden_layers), a smaller batch or "
        "sequence, or a machine with more memory; --force starts it anyway")
