"""Hot ops of the decoder: fused kernels, pure-Paddle references, and the single selection point.

    import llmpre.ops as ops                 # registers llmpre's Paddle custom ops
    y = ops.rms_norm(x, weight, 1e-6)        # fused (C++ kernel), Paddle autograd
    y_ref = ops.reference.rms_norm(x, weight, 1e-6)   # the pure-Paddle contract

Fused functions (:mod:`llmpre.ops.fused`): ``rms_norm``, ``rotary``,
``flash_attention``, ``swiglu``, ``cross_entropy``; each has a reference of
the same contract in :mod:`llmpre.ops.reference` (``attention`` for
``flash_attention``). ``select_ops(...)`` returns the namespace (``rms_norm``,
``rotary``, ``attention``, ``swiglu``, ``cross_entropy``) a model calls:
fused or reference per flag, in one place. ``status()`` says what this build has.

Importing this module imports Paddle and registers the op library (built
into the package at install time; nothing is compiled at run time). If the
library is unusable the import still succeeds: fused calls then raise
:class:`FusedOpUnavailable` with the reason, and ``select_ops`` falls back or
refuses as its flags say.
"""

from llmpre.ops import _library, reference
from llmpre.ops.fused import (FusedOpUnavailable, available, cross_entropy, flash_attention, rms_norm,
                              rotary, swiglu)
from llmpre.ops.select import REFERENCE, Ops, describe, select_ops

__all__ = ["Ops", "REFERENCE", "select_ops", "describe", "status", "available", "FusedOpUnavailable",
           "rms_norm", "rotary", "flash_attention", "swiglu", "cross_entropy", "reference"]


def status() -> dict:
    """What this build provides: the library path, registered ops, the CPU code
    path, the ops with CUDA kernels, and why anything is missing."""
    lib = _library.load()
    return {
        "library": lib.path,
        "ops": sorted(lib.ops),
        "cpu_isa": lib.cpu_isa,
        "cuda_ops": list(lib.cuda_ops),
        "built_against_paddle": lib.paddle_version,
        "unavailable": {op: lib.why_missing(op) for op in _library.SIGNATURES if op not in lib.ops},
    }


_library.load()  # register the ops now (errors are recorded, not raised)
