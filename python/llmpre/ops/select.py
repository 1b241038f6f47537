"""The one place that decides which implementation of each hot op the model uses.

Layers never branch on flags or devices; they call ``ops.rms_norm``,
``ops.rotary``, ``ops.attention``, ``ops.swiglu`` and ``ops.cross_entropy`` on
the namespace :func:`select_ops` returns.  The switches carry PaddleNLP's
training-argument names so a PaddleNLP argument file maps onto them directly:

=====================  ==========================================
flag                   op it will replace when a kernel exists
=====================  ==========================================
use_flash_attention    ``attention``
use_fused_rms_norm     ``rms_norm``
use_fused_rope         ``rotary``
=====================  ==========================================

Today only the pure-Paddle reference set (:mod:`llmpre.ops.reference`) exists.
Asking for a fused op that is not available warns once, naming the flag, and
uses the reference op.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable

from llmpre.ops import reference


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

# flag -> op it selects.  A later issue registers kernels in _FUSED.
_FLAG_TO_OP = {
    "use_flash_attention": "attention",
    "use_fused_rms_norm": "rms_norm",
    "use_fused_rope": "rotary",
}
_FUSED: dict = {}  # op name -> (implementation name, function)


@functools.lru_cache(maxsize=None)
def select_ops(use_flash_attention: bool = False, use_fused_rms_norm: bool = False,
               use_fused_rope: bool = False) -> Ops:
    """Return the :class:`Ops` namespace for these switches (cached per combination)."""
    flags = {"use_flash_attention": use_flash_attention, "use_fused_rms_norm": use_fused_rms_norm,
             "use_fused_rope": use_fused_rope}
    chosen = {op: getattr(REFERENCE, op) for op, _ in REFERENCE.names}
    names = dict(REFERENCE.names)
    for flag, wanted in flags.items():
        if not wanted:
            continue
        op = _FLAG_TO_OP[flag]
        if op in _FUSED:
            names[op], chosen[op] = _FUSED[op]
        else:
            warnings.warn(f"{flag}=True but llmpre has no fused '{op}' kernel in this build; "
                          f"using the pure-Paddle reference '{op}' (correct, slower).", stacklevel=2)
    return Ops(names=tuple(names.items()), **chosen)
