"""Hot ops of the decoder: pure-Paddle references and the single selection point.

``select_ops(...)`` returns the namespace (``rms_norm``, ``rotary``, ``attention``,
``swiglu``, ``cross_entropy``) the model calls; fused kernels plug in there.
"""

from llmpre.ops.reference import attention, cross_entropy, rms_norm, rotary, swiglu
from llmpre.ops.select import Ops, select_ops

__all__ = ["Ops", "select_ops", "rms_norm", "rotary", "attention", "swiglu", "cross_entropy"]
