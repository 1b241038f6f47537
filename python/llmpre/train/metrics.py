"""What the log line reports: memory, FLOPs and speed, in PaddleNLP's units and order."""

from __future__ import annotations

from llmpre.train.memory import DEVICE_KEYS, HOST_KEYS, device_fields, host_fields

# Every key of PaddleNLP's per-interval log line, in its order (trainer.py
# ``_maybe_log_save_evaluate`` and ``Trainer.log``): the device-memory keys appear on a
# GPU only, the cpu_mem ones on a CPU only (see llmpre.train.memory). PaddleNLP's
# benchmark scripts cut fields by position, so the order is part of the format.
SPEED_KEYS = ("interval_runtime", "interval_samples_per_second", "interval_tokens_per_second_per_device",
              "interval_hardware_tflops_per_device", "interval_steps_per_second")
LOG_KEYS = ("loss", "learning_rate", "global_step", *DEVICE_KEYS, *SPEED_KEYS, *HOST_KEYS,
            "progress_or_epoch")
# MoE models: the most and least loaded expert of any sparse layer, relative to the
# layer's mean load (1.0 = balanced; llmpre.train.balance)
MOE_LOG_KEYS = ("moe_load_max", "moe_load_min")


def interval_speed(runtime: float, samples: int, steps: int, seq: int, world_size: int,
                   flops_per_token: float) -> dict:
    """The interval's speed figures: samples/s over all data-parallel ranks,
    tokens/s per device (divided by every rank, tensor and pipeline ones too, as
    PaddleNLP does) and hardware TFLOP/s per device (FLOPs / 2**40)."""
    tokens_per_s = samples * seq / runtime / max(1, world_size)
    return {
        "interval_runtime": round(runtime, 4),
        "interval_samples_per_second": round(samples / runtime, 4),
        "interval_tokens_per_second_per_device": round(tokens_per_s, 4),
        "interval_hardware_tflops_per_device": round(tokens_per_s * flops_per_token / 2 ** 40, 2),
        "interval_steps_per_second": round(steps / runtime, 4),
    }


def train_log_values(loss: float, learning_rate: float, global_step: int, memory, speed: dict,
                     progress: float, skipped: int = 0, moe_load: dict | None = None) -> dict:
    """One logging interval as PaddleNLP's log line has it: loss (8 decimals),
    learning rate (3 significant digits), step, device memory (GPU), the speed
    figures, process memory (CPU), progress_or_epoch. ``memory`` is a memory
    source (llmpre.train.memory). ``skipped_steps`` (not PaddleNLP's) comes last
    and only when steps of the interval were skipped, after it (MoE models, not
    PaddleNLP's) ``moe_load_max`` / ``moe_load_min`` of ``moe_load``
    (:func:`llmpre.train.balance.load_summary` of the interval's last step)."""
    values = {"loss": round(loss, 8), "learning_rate": float(f"{learning_rate:.3e}"),
              "global_step": global_step}
    values.update(device_fields(memory))
    values.update(speed)
    values.update(host_fields(memory))
    values["progress_or_epoch"] = progress
    if skipped:
        values["skipped_steps"] = skipped
    for key in MOE_LOG_KEYS:
        if moe_load and key in moe_load:
            values[key] = moe_load[key]
    return values


def flops_per_token(hidden: int, intermediate: int, layers: int, vocab: int, seq: int,
                    recompute: bool = False, granularity: str | None = None) -> float:
    """Hardware FLOPs per trained token, PaddleNLP's formula (Megatron's, per token):
    q/k/v/o projections as 4·s·h², attention 2·s²·h, SwiGLU MLP 3·s·h·I + s·I,
    logits s·h·V; x2 for multiply-add, x3 for forward + backward, plus the
    recomputed part."""
    qkvo = seq * hidden ** 2 * 4
    core_attn = seq ** 2 * hidden * 2
    ffn = seq * hidden * intermediate * 3 + seq * intermediate
    per_layer = qkvo + core_attn + ffn
    recomputed = 0
    if recompute:
        recomputed = {"full": per_layer, "full_attn": qkvo + core_attn,
                      "core_attn": core_attn}.get(granularity or "full", 0)
    logits = seq * hidden * vocab
    return 2 * (layers * (per_layer * 3 + recomputed) + 3 * logits) / seq


def format_log(values: dict) -> str:
    """``key: value, key: value`` as PaddleNLP's logger prints it."""
    return ", ".join(f"{k}: {v}" for k, v in values.items())
