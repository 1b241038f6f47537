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
=========================  =================  ================================================

Each flag is one of:

- ``None`` (the default, "auto"): the fused op where this build has it, the
  reference otherwise, silently. Per call, tensors the kernel does not take
  (float16/float64, or a device without a kernel) go to the reference op, so
  auto never fails where the reference would work.
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
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

from llmpre.errors import ConfigError
from llmpre.ops import _library, fused, reference

logger = logging.getLogger("llmpre")


@dataclass(frozen=True)
class Ops:
    """The five functions a decoder needs; see :mod:`llmpre.ops.reference` for contracts."""

    rms_norm: Callable
    rotary: Callable
    attention: Callable
    swiglu: Callable
    cross_entropy: Callable
    names: tuple = ()  # (op, implementation) pairs, for logs


REFERENCE = Ops(
    rms_norm=reference.rms_norm,
    rotary=reference.rotary,
    attention=reference.attention,
    swiglu=reference.swiglu,
    cross_entropy=reference.cross_entropy,
    names=(("rms_norm", "reference"), ("rotary", "reference"), ("attention", "reference"),
           ("swiglu", "reference"), ("cross_entropy", "reference")),
)

# flag -> (Ops field, custom op name, fused function)
FLAGS = {
    "use_flash_attention": ("attention", "llmpre_flash_attention", fused.flash_attention),
    "use_fused_rms_norm": ("rms_norm", "llmpre_rms_norm", fused.rms_norm),
    "use_fused_rope": ("rotary", "llmpre_rotary", fused.rotary),
    "use_fused_swiglu": ("swiglu", "llmpre_swiglu", fused.swiglu),
    "use_fused_cross_entropy": ("cross_entropy", "llmpre_cross_entropy", fused.cross_entropy),
}

_warned: set = set()


def _device_kind() -> str:
    import paddle

    return "gpu" if paddle.get_device().startswith("gpu") else "cpu"


def unavailable_reason(op_name: str, device: str = "cpu") -> Optional[str]:
    """Why the custom op ``op_name`` cannot run on ``device`` ("cpu"/"gpu") in this build, or None."""
    lib = _library.load()
    if not lib.has(op_name):
        return lib.why_missing(op_name)
    if device == "gpu" and op_name.removeprefix("llmpre_") not in lib.cuda_ops:
        return (f"this build has no CUDA kernel for `{op_name}` (its CPU kernel cannot take GPU tensors; "
                "the CUDA kernels need a CUDA build of Paddle and of llmpre)")
    return None


def _auto(fused_fn: Callable, reference_fn: Callable, op_name: str) -> Callable:
    """``fused_fn`` for the tensors its kernel takes, ``reference_fn`` for the others."""
    import paddle

    cuda = op_name.removeprefix("llmpre_") in _library.load().cuda_ops
    kernel_dtypes = (paddle.float32, paddle.bfloat16)

    @functools.wraps(fused_fn)
    def op(first, *args, **kwargs):
        place = first.place
        if first.dtype in kernel_dtypes and (place.is_cpu_place() or (cuda and place.is_gpu_place())):
            return fused_fn(first, *args, **kwargs)
        return reference_fn(first, *args, **kwargs)

    return op


def _say_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)


@functools.lru_cache(maxsize=None)
def _select(flags: tuple, allow_reference_fallback: bool, device: str) -> Ops:
    chosen = {op: getattr(REFERENCE, op) for op, _ in REFERENCE.names}
    names = dict(REFERENCE.names)
    for flag, wanted in flags:
        field, op_name, fused_fn = FLAGS[flag]
        if wanted is False:
            continue
        why = unavailable_reason(op_name, device)
        if why is None:
            chosen[field] = fused_fn if wanted else _auto(fused_fn, chosen[field], op_name)
            names[field] = op_name if wanted else f"{op_name} (auto)"
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
               use_fused_cross_entropy: Optional[bool] = None,
               allow_reference_fallback: bool = False) -> Ops:
    """Return the :class:`Ops` namespace for these switches (module docstring:
    None = fused where available, True = fused required, False = reference).
    Cached per combination and device (``paddle.get_device()``)."""
    flags = (("use_flash_attention", use_flash_attention), ("use_fused_rms_norm", use_fused_rms_norm),
             ("use_fused_rope", use_fused_rope), ("use_fused_swiglu", use_fused_swiglu),
             ("use_fused_cross_entropy", use_fused_cross_entropy))
    for flag, value in flags:
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"select_ops: `{flag}` must be True, False or None, got {value!r}")
    return _select(flags, bool(allow_reference_fallback), _device_kind())


select_ops.cache_clear = _select.cache_clear  # type: ignore[attr-defined]


def flags_from_args(args) -> dict:
    """The :func:`select_ops` keyword arguments carried by a TrainingArguments-like object."""
    keys = list(FLAGS) + ["allow_reference_fallback"]
    return {key: getattr(args, key) for key in keys if hasattr(args, key)}


def describe(ops: Ops) -> str:
    """``"rms_norm=llmpre_rms_norm (auto), rotary=reference, ..."`` for logs."""
    return ", ".join(f"{op}={impl}" for op, impl in ops.names)
