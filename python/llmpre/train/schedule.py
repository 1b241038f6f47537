"""Learning-rate schedules as pure functions of the step.

PaddleNLP's run_pretrain semantics (CosineAnnealingWithWarmupDecay and
LinearAnnealingWithWarmupDecay): linear warmup from 0 over ``warmup`` steps
(``lr * step / warmup``), then decay to ``min_lr`` at ``decay_steps``, then
``min_lr``. PaddleNLP builds the scheduler with ``last_epoch=0`` and Paddle's
``LRScheduler`` steps once at construction, so optimizer update ``g`` (counting
from 1) uses ``lr_at(g)``: the first update of a 5-step warmup uses ``lr / 5``,
the last one (``g = decay_steps``) ``min_lr``. The value logged at global_step
``g`` is ``lr_at(g + 1)``, the rate the next update will use, as PaddleNLP logs
``optimizer.get_lr()`` after ``scheduler.step()``
(``../shared/fixtures/paddlenlp_run`` records both, ``tests/e2e/test_paddlenlp_run.py``).
"""

from __future__ import annotations

import math


def lr_at(step: int, *, kind: str, max_lr: float, min_lr: float, warmup: float,
          decay_steps: int) -> float:
    if warmup > 0 and step <= warmup:
        return max_lr * step / warmup
    if kind == "constant":
        return max_lr
    if step > decay_steps:
        return min_lr
    span = decay_steps - warmup
    ratio = (step - warmup) / span if span > 0 else 1.0
    if kind == "cosine":
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    elif kind == "linear":
        coeff = 1.0 - ratio
    else:
        raise ValueError(f"unknown lr_scheduler_type {kind!r}")
    return min_lr + coeff * (max_lr - min_lr)


def schedule_from_args(args):
    """``step -> lr`` for the training arguments."""
    decay = args.decay_steps if args.decay_steps else args.max_steps
    params = dict(kind=args.lr_scheduler_type, max_lr=args.learning_rate,
                  min_lr=args.min_learning_rate, warmup=args.warmup, decay_steps=decay)
    return lambda step: lr_at(step, **params)
