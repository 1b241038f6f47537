"""Mixed precision as PaddleNLP configures it.

``bf16`` / ``fp16`` with ``fp16_opt_level``:

- **O1**: fp32 weights; ops run under ``paddle.amp.auto_cast`` in low
  precision except those on the black list.
- **O2**: weights stored in bf16/fp16 (``model.to(dtype)``; fp32 buffers such
  as RoPE tables are kept fp32), fp32 master weights and moments in the
  optimizer (:class:`llmpre.parallel.optimizer.ShardedAdamW`), gradients cast to fp32 before
  clipping and the update (PaddleNLP's ``amp_master_grad``; llmpre always does
  this, so ``amp_master_grad`` only documents it).

The black list keeps reductions and the loss in fp32 (PaddleNLP always lists
``reduce_sum`` and ``c_softmax_with_cross_entropy``); llmpre's loss also casts
logits to fp32 itself. ``amp_custom_black_list`` / ``amp_custom_white_list`` add
Paddle op names to the lists given to ``paddle.amp.auto_cast``, as PaddleNLP
passes them (:func:`unknown_ops` names those this Paddle build does not have).

fp16 uses dynamic loss scaling (:class:`DynamicLossScaler`, Paddle
GradScaler's rule): the loss is multiplied by the scale before backward, the
gradients are divided by it before clipping; a step whose gradients overflow
is skipped and after ``decr_every_n_nan_or_inf`` such steps the scale halves;
after ``incr_every_n_steps`` clean steps it doubles. bf16 needs no scaling.

Paddle's CPU wheel has no bf16/fp16 matmul, softmax or most math kernels, so
asking for mixed precision without a GPU build is one clear error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from llmpre.errors import ConfigError

BLACK_LIST = frozenset({
    "reduce_sum", "reduce_mean", "mean", "sum",
    "c_softmax_with_cross_entropy", "softmax_with_cross_entropy", "cross_entropy_with_softmax",
})
WHITE_LIST_O2 = frozenset({"lookup_table", "lookup_table_v2"})


@dataclass(frozen=True)
class Precision:
    dtype: str = "float32"      # float32, bfloat16 or float16
    level: str | None = None    # None (fp32), "O1" or "O2"
    black: frozenset = frozenset()   # amp_custom_black_list: more ops kept in fp32
    white: frozenset = frozenset()   # amp_custom_white_list: ops run in low precision

    @property
    def low(self) -> bool:
        return self.dtype != "float32"

    @property
    def loss_scaling(self) -> bool:
        return self.dtype == "float16"

    @classmethod
    def from_args(cls, args) -> "Precision":
        if args.bf16 and args.fp16:
            raise ConfigError("set only one of bf16 and fp16")
        if not (args.bf16 or args.fp16):
            return cls()
        black, white = (frozenset(_names(getattr(args, f"amp_custom_{k}_list", None)))
                        for k in ("black", "white"))
        return cls("bfloat16" if args.bf16 else "float16", args.fp16_opt_level, black, white)

    def check_available(self, paddle) -> None:
        if self.low and not paddle.is_compiled_with_cuda():
            flag = "bf16" if self.dtype == "bfloat16" else "fp16"
            raise ConfigError(
                f"`{flag}` needs Paddle's low-precision kernels, which exist only in a GPU build: "
                "install paddlepaddle-gpu (see the README) or set "
                f"{flag} to false to train in fp32 on this CPU")

    def autocast(self, paddle):
        """The context the forward pass (and loss) runs in."""
        if not self.low:
            return contextlib.nullcontext()
        white = (set(WHITE_LIST_O2) if self.level == "O2" else set()) | set(self.white)
        return paddle.amp.auto_cast(enable=True, level=self.level, dtype=self.dtype,
                                    custom_black_list=(set(BLACK_LIST) - set(self.white)) | set(self.black),
                                    custom_white_list=white or None)

    @property
    def param_dtype(self) -> str:
        """The dtype parameters are stored in (O2: the low dtype)."""
        return self.dtype if self.low and self.level == "O2" else "float32"

    def prepare_model(self, model) -> None:
        """O2: store parameters in low precision, keep fp32 buffers fp32."""
        if not self.low or self.level != "O2":
            return
        fp32_buffers = [(layer, name, buf.clone()) for layer in model.sublayers(include_self=True)
                        for name, buf in layer._buffers.items()
                        if buf is not None and str(buf.dtype).endswith("float32")]
        model.to(dtype=self.dtype)
        for layer, name, buf in fp32_buffers:
            persistable = name not in layer._non_persistable_buffer_names_set
            layer.register_buffer(name, buf, persistable=persistable)


def _names(value) -> list[str]:
    return [w for w in str(value or "").replace(",", " ").split() if w]


def unknown_ops(names, paddle) -> list[str]:
    """The op names among ``names`` that this Paddle build does not register (a
    name there can change nothing; a GPU build has more ops, e.g. flash_attn)."""
    try:
        known = set(paddle.base.core._get_all_register_op_kernels("all"))
    except AttributeError:   # a Paddle without this registry: nothing to check against
        return []
    return sorted(n for n in names if n not in known)


class DynamicLossScaler:
    """Dynamic loss scale with Paddle GradScaler's defaults and update rule."""

    def __init__(self, init_scale: float = 2.0 ** 15, incr_ratio: float = 2.0,
                 decr_ratio: float = 0.5, incr_every_n_steps: int = 1000,
                 decr_every_n_nan_or_inf: int = 2, enabled: bool = True):
        self.scale = float(init_scale) if enabled else 1.0
        self.incr_ratio, self.decr_ratio = incr_ratio, decr_ratio
        self.incr_every_n_steps, self.decr_every_n_nan_or_inf = incr_every_n_steps, decr_every_n_nan_or_inf
        self.enabled = enabled
        self.good_steps = 0
        self.bad_steps = 0

    def update(self, found_inf: bool) -> None:
        """Record one step's outcome (the step itself is skipped when ``found_inf``)."""
        if not self.enabled:
            return
        if found_inf:
            self.good_steps = 0
            self.bad_steps += 1
            if self.bad_steps == self.decr_every_n_nan_or_inf:
                self.scale = max(self.scale * self.decr_ratio, 1.0)
                self.bad_steps = 0
        else:
            self.bad_steps = 0
            self.good_steps += 1
            if self.good_steps == self.incr_every_n_steps:
                self.scale *= self.incr_ratio
                self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "bad_steps": self.bad_steps,
                "enabled": self.enabled}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps, self.bad_steps = int(state["good_steps"]), int(state["bad_steps"])
