"""Gradient clipping: the factor the update multiplies the gradients by.

The update itself is :class:`llmpre.parallel.optimizer.ShardedAdamW`, the one
AdamW of every layout.
"""

from __future__ import annotations

import math


def clip_coefficient(norm: float, max_norm: float) -> float:
    """Paddle's ClipGradByGlobalNorm factor: ``max_norm / max(norm, max_norm)``
    (1 when clipping is off or the norm is not finite)."""
    if max_norm <= 0 or not math.isfinite(norm) or norm <= max_norm:
        return 1.0
    return max_norm / norm
