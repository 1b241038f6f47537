"""What the log line reports: memory, FLOPs and speed, in PaddleNLP's units."""

from __future__ import annotations

import os
import resource

GB = 2 ** 30


def memory_gb(paddle) -> tuple[float, float]:
    """(current, peak) memory in GB (2**30 bytes).

    On a GPU: Paddle's allocated device memory. On a CPU: the process's
    resident set size (current from /proc/self/statm, peak from getrusage),
    which includes the Python interpreter and Paddle itself.
    """
    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        return (paddle.device.cuda.memory_allocated() / GB,
                paddle.device.cuda.max_memory_allocated() / GB)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    try:
        with open("/proc/self/statm") as fh:
            current = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        current = peak
    return current / GB, peak / GB


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
