"""The one place that decides which implementation of each hot op the model uses.

Layers never branch on flags or devices; they call ``ops.rms_norm``,
``ops.rotary``, ``ops.attention``, ``ops.swiglu`` and ``ops.cross_entropy`` on
the namespace :func:`select_ops` returns. Each switch carries PaddleNLP's
training-argument name where PaddleNLP has one:

=========================  =================  ================================================
flag                       op                 fused implementation
=========================  =================  ================================================
use_flash_attention        ``attention``      :func:`llmpre.ops.fused.flash_attention`
use_fused_rms_norm         ``rms_norm``       :func:`llmpre.ops.fused.rms_norm`
use_fused_rope             ``rotary``         :func:`llmpre.ops.fused.rotary`
use_fused_swiglu           ``swiglu``         :func:`llmpre.ops.fused.swiglu` (llmpre's flag)
use_fused_cross_entropy    ``cross_entropy``  :func:`llmpre.ops.fused.cross_entropy` (llmpre's flag)
use_fused_grouped_mlp      ``grouped_mlp``    :func:`llmpre.ops.fused.grouped_mlp` (llmpre's flag;
                                              the MoE experts, one call per layer)
use_fused_moe_combine      ``moe_combine``    :func:`llmpre.ops.fused.moe_combine` (llmpre's flag;
                                              the MoE's weighted sum of each token's rows)
use_fused_adamw            ``adamw``          :func:`llmpre.ops.fused.adamw_` (llmpre's flag; the
                                              optimizer's update, one pass over its flat buffers)
=========================  =================  ================================================

The rows come from the op table, :data:`llmpre.ops.fused.TABLE`, declared beside
each fused function: which dtypes its kernel takes on the CPU and on a GPU.
``flash_attention_kernel`` (``auto``/``portable``/``hopper``) picks the CUDA
flash-attention kernel set; the environment variable
``LLMPRE_FLASH_ATTENTION_KERNEL`` overrides it, read here and nowhere else.

Each flag is one of:

- ``None`` (the default, "auto"): the fused op where this build has it, the
  reference otherwise. Per call, tensors the kernel does not take (a dtype or
  device missing from the op's row of the table) go to the reference op, so
  auto never fails where the reference would work. When the whole op library
  is missing (e.g. ``pip install`` with build isolation), the first such call
  warns once, naming the cost and the reinstall command.
- ``True``: the fused op is required. If it is unavailable (the op library was
  not built, was built against another Paddle, lacks the op, or has no kernel
  for the current device) this raises :class:`~llmpre.errors.ConfigError`
  naming the flag and the reason, unless ``allow_reference_fallback=True``:
  then it warns once per process and uses the reference op.
- ``False``: the pure-Paddle reference op (:mod:`llmpre.ops.reference`).
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

from llmpre.errors import ConfigError
from llmpre.ops import _library, fused, reference

logger = logging.getLogger("llmpre")


@dataclass(frozen=True)
class Ops:
    """The functions a decoder needs; see :mod:`llmpre.ops.reference` for contracts."""

    rms_norm: Callable
    rotary: Callable
    attention: Callable
    swiglu: Callable
    cross_entropy: Callable
    grouped_mlp: Callable
    moe_combine: Callable
    adamw: Callable
    names: tuple = ()  # (op, implementation) pairs, for logs


REFERENCE = Ops(
    rms_norm=reference.rms_norm,
    rotary=reference.rotary,
    attention=reference.attention,
    swiglu=reference.swiglu,
    cross_entropy=reference.cross_entropy,
    grouped_mlp=reference.grouped_mlp,
    moe_combine=reference.moe_combine,
    adamw=reference.adamw_,
    names=(("rms_norm", "reference"), ("rotary", "reference"), ("attention", "reference"),
           ("swiglu", "reference"), ("cross_entropy", "reference"), ("grouped_mlp", "reference"),
           ("moe_combine", "reference"), ("adamw", "reference")),
)

# flag -> (Ops field, custom op name, fused function), from the op table
FLAGS = {op.flag: (op.field, op.custom_op, op.fn) for op in fused.TABLE.values()}
ROW_OF_FLAG = {op.flag: op for op in fused.TABLE.values()}
KERNEL_ENV = "LLMPRE_FLASH_ATTENTION_KERNEL"
# what the reference ops everywhere cost: 1.42x, the end-to-end benchmark on 2 cores (bench/RESULTS.md)
REFERENCE_COST = "about 1.4x slower training"

_warned: set = set()


def _device_kind() -> str:
    import paddle

    return "gpu" if paddle.get_device().startswith("gpu") else "cpu"


def unavailable_reason(op_name: str, device: str = "cpu") -> Optional[str]:
    """Why the custom op ``op_name`` cannot run on ``device`` ("cpu"/"gpu") in this build, or None."""
    lib = _library.load()
    if not lib.has(op_name):
        return lib.why_missing(op_name)
    row = fused.TABLE[op_name.removeprefix("llmpre_")]
    if device == "gpu" and (op_name.removeprefix("llmpre_") not in lib.cuda_ops or not row.dtypes["gpu"]):
        return (f"this build has no CUDA kernel for `{op_name}` (its CPU kernel cannot take GPU tensors; "
                "the CUDA kernels need a CUDA build of Paddle and of llmpre)")
    return None


def _auto(row, reference_fn: Callable, cuda: bool, fused_fn: Optional[Callable] = None) -> Callable:
    """``fused_fn`` (default the row's function) for the tensors its kernel takes per the
    op table (the row's dtypes on this tensor's device), ``reference_fn`` for the others."""
    fused_fn = fused_fn or row.fn

    @functools.wraps(row.fn)
    def op(first, *args, **kwargs):
        place = first.place
        device = "cpu" if place.is_cpu_place() else "gpu" if place.is_gpu_place() else None
        if device is not None and (device == "cpu" or cuda) and row.takes(device, first.dtype):
            return fused_fn(first, *args, **kwargs)
        return reference_fn(first, *args, **kwargs)

    return op


def _say_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)


def _library_missing_warning(flags: tuple) -> None:
    """Warn once when auto selection finds no op library at all (not one missing op)."""
    lib = _library.load()
    if lib.error and any(wanted is None for _, wanted in flags):
        _say_once(f"llmpre's fused ops are unavailable ({lib.error}); training runs the pure-Paddle "
                  f"reference ops, {REFERENCE_COST}. `python -c \"import llmpre.ops; print(llmpre.ops.status())\"` "
                  "says more.")


def flash_attention_kernel_choice(requested: Optional[str]) -> str:
    """The CUDA flash-attention kernel set: ``LLMPRE_FLASH_ATTENTION_KERNEL`` when set,
    else ``requested`` (default auto); an unknown name is an error naming its source."""
    env = os.environ.get(KERNEL_ENV, "").strip()
    choice, source = (env, KERNEL_ENV) if env else (requested or "auto", "flash_attention_kernel")
    if choice not in fused.FLASH_ATTENTION_KERNELS:
        raise ConfigError(f"`{source}` must be one of {', '.join(fused.FLASH_ATTENTION_KERNELS)}, got {choice!r}")
    return choice


@functools.lru_cache(maxsize=None)
def _select(flags: tuple, allow_reference_fallback: bool, device: str, kernel: str = "auto") -> Ops:
    chosen = {op: getattr(REFERENCE, op) for op, _ in REFERENCE.names}
    names = dict(REFERENCE.names)
    cuda_ops = _library.load().cuda_ops
    for flag, wanted in flags:
        row = ROW_OF_FLAG[flag]
        field, op_name = row.field, row.custom_op
        if wanted is False:
            continue
        why = unavailable_reason(op_name, device)
        if why is None:
            fused_fn = (functools.partial(row.fn, kernel=kernel) if row.name == "flash_attention"
                        and kernel != "auto" else row.fn)
            chosen[field] = fused_fn if wanted else _auto(row, chosen[field], row.name in cuda_ops, fused_fn)
            names[field] = op_name if wanted else f"{op_name} (auto)"
            if row.name == "flash_attention" and kernel != "auto":
                names[field] += f" [{kernel} kernels]"
        elif wanted is None:
            if (flag, why) not in _warned:
                _warned.add((flag, why))
                logger.info("%s unset: using the reference '%s' (fused op unavailable: %s)", flag, field, why)
        elif allow_reference_fallback:
            _say_once(f"{flag}=True but the fused '{field}' op cannot be used: {why}. Falling back to "
                      f"the pure-Paddle reference '{field}' (allow_reference_fallback=True): same "
                      "results, slower.")
        else:
            raise ConfigError(f"`{flag}` = true but the fused '{field}' op cannot be used: {why}. "
                              f"Set {flag} to false (reference op), leave it unset (fused where "
                              "available), or set allow_reference_fallback to true to fall back with "
                              "a warning.")
    return Ops(names=tuple(names.items()), **chosen)


def select_ops(use_flash_attention: Optional[bool] = None, use_fused_rms_norm: Optional[bool] = None,
               use_fused_rope: Optional[bool] = None, use_fused_swiglu: Optional[bool] = None,
               use_fused_cross_entropy: Optional[bool] = None, use_fused_grouped_mlp: Optional[bool] = None,
               use_fused_moe_combine: Optional[bool] = None, use_fused_adamw: Optional[bool] = None,
               allow_reference_fallback: bool = False,
               flash_attention_kernel: Optional[str] = None) -> Ops:
    """Return the :class:`Ops` namespace for these switches (module docstring:
    None = fused where available, True = fused required, False = reference) and
    the CUDA flash-attention kernel set. Cached per combination and device
    (``paddle.get_device()``)."""
    flags = (("use_flash_attention", use_flash_attention), ("use_fused_rms_norm", use_fused_rms_norm),
             ("use_fused_rope", use_fused_rope), ("use_fused_swiglu", use_fused_swiglu),
             ("use_fused_cross_entropy", use_fused_cross_entropy), ("use_fused_grouped_mlp", use_fused_grouped_mlp),
             ("use_fused_moe_combine", use_fused_moe_combine), ("use_fused_adamw", use_fused_adamw))
    for flag, value in flags:
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"select_ops: `{flag}` must be True, False or None, got {value!r}")
    kernel = flash_attention_kernel_choice(flash_attention_kernel)
    _library_missing_warning(flags)
    return _select(flags, bool(allow_reference_fallback), _device_kind(), kernel)


select_ops.cache_clear = _select.cache_clear  # type: ignore[attr-defined]


def flags_from_args(args) -> dict:
    """The :func:`select_ops` keyword arguments carried by a TrainingArguments-like object."""
    keys = list(FLAGS) + ["allow_reference_fallback", "flash_attention_kernel"]
    return {key: getattr(args, key) for key in keys if hasattr(args, key)}


def describe(ops: Ops) -> str:
    """``"rms_norm=llmpre_rms_norm (auto), rotary=reference, ..."`` for logs."""
    return ", ".join(f"{op}={impl}" for op, impl in ops.names)
