"""What the planner is asked about: a model, a batch shape, a parallel layout,
a precision and a set of kernels, validated the way a training run would be."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

from llmpre.errors import ConfigError
from llmpre.parallel.dims import GRANULARITIES  # the one list of recompute granularities
from llmpre.parallel.dims import pipeline_split  # the one pipeline split (even or not)

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class PlanSettings:
    """One training configuration, per device unless said otherwise.

    ``sharding`` is the sharding *degree* (devices that split optimizer state,
    and from stage 2 gradients, from stage 3 parameters) and ``stage`` its
    level (0: no sharding).  World size is ``dp * sharding * tp * pp``.
    ``dtype`` is the training precision: ``float32``, or ``bfloat16`` /
    ``float16`` mixed precision at ``opt_level`` O1 (fp32 weights, autocast) or
    O2 (low-precision weights, fp32 master weights in the optimizer).
    """

    model: object                      # llmpre.models.ModelConfig
    seq_length: int
    micro_batch: int
    model_name: str = ""
    grad_accum: int = 1
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    pipeline_layers: Tuple[int, ...] = ()  # layers of each pipeline chunk (forward order); (): the default split
    dp: int = 1
    sharding: int = 1
    ep: int = 1                        # expert parallelism: drawn from the dp x sharding ranks
    sep: int = 1                       # sep_parallel_degree: sequence split, all-to-all around attention
    cp: int = 1                        # context_parallel_degree: sequence split, ring attention
    stage: int = 0
    sequence_parallel: bool = False
    recompute: bool = False
    granularity: str = "full"
    no_recompute_layers: Tuple[int, ...] = ()
    dtype: str = "float32"
    opt_level: str = "O1"
    amp_master_grad: bool = False
    flash_attention: bool = False
    fused_rms_norm: bool = False
    fused_rope: bool = False
    fuse_attention_qkv: bool = False
    fuse_attention_ffn: bool = False
    sources: dict = field(default_factory=dict, compare=False, hash=False)  # setting -> where it came from

    def __post_init__(self):
        for name in ("no_recompute_layers", "pipeline_layers"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self._validate()

    # ------------------------------------------------------------ derived
    @property
    def world_size(self) -> int:
        return self.dp * self.sharding * self.tp * self.pp * self.sep * self.cp

    @property
    def local_seq(self) -> int:
        """Tokens of each sequence one rank holds (seq_length / (sep x cp))."""
        return self.seq_length // (self.sep * self.cp)

    def chunk_layers(self) -> tuple:
        """The decoder layers of every pipeline chunk, forward order (llmpre.parallel.dims.pipeline_split)."""
        return pipeline_split(self.model.num_hidden_layers, self.pp, self.vpp, self.pipeline_layers)

    @property
    def low_precision(self) -> bool:
        return self.dtype != "float32"

    @property
    def o2(self) -> bool:
        return self.low_precision and self.opt_level == "O2"

    def replace(self, **changes) -> "PlanSettings":
        return dataclasses.replace(self, **changes)

    def describe_precision(self) -> str:
        if not self.low_precision:
            return "float32"
        name = {"bfloat16": "bf16", "float16": "fp16"}[self.dtype]
        if self.opt_level == "O1":
            return f"{name} O1 (fp32 weights, autocast)"
        grads = "fp32 gradients (amp_master_grad)" if self.amp_master_grad else f"{name} gradients"
        return f"{name} O2 ({name} weights, fp32 master weights, {grads})"

    # ------------------------------------------------------------ checks
    def _validate(self) -> None:
        m = self.model
        for name in ("seq_length", "micro_batch", "grad_accum", "tp", "pp", "vpp", "dp", "sharding", "ep",
                     "sep", "cp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"plan: `{name}` must be a positive integer, got {value!r}")
        if self.stage not in (0, 1, 2, 3):
            raise ConfigError(f"plan: sharding stage must be 0 (none), 1, 2 or 3, got {self.stage!r}")
        if self.sharding > 1 and self.stage == 0:
            raise ConfigError(f"plan: a sharding degree of {self.sharding} needs a sharding stage: add "
                              "--stage 1/2/3 (PaddleNLP: \"sharding\": \"stage1\"), or set --sharding 1")
        if self.dtype not in DTYPES:
            raise ConfigError(f"plan: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.opt_level not in ("O1", "O2"):
            raise ConfigError(f"plan: fp16_opt_level must be O1 or O2, got {self.opt_level!r}")
        if self.amp_master_grad and not self.o2:
            raise ConfigError("plan: amp_master_grad only applies to bf16/fp16 at fp16_opt_level O2; "
                              "add --bf16 --fp16-opt-level O2 or drop --amp-master-grad")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"plan: recompute_granularity must be one of {', '.join(GRANULARITIES)}, "
                              f"got {self.granularity!r}")
        if self.sequence_parallel and self.tp == 1:
            raise ConfigError("plan: sequence_parallel needs tensor parallelism: set --tp 2 or more, "
                              "or drop --sequence-parallel")
        if self.pp > 1 and self.stage >= 2:
            raise ConfigError(f"plan: pipeline parallelism (pp={self.pp}) combines only with sharding stage 1 "
                              "(PaddleNLP's rule): use --stage 1, or --pp 1")
        if self.vpp > 1 and self.pp == 1:
            raise ConfigError(f"plan: virtual_pp_degree={self.vpp} needs pipeline parallelism (--pp 2 or more)")
        if self.vpp > 1 and self.grad_accum % self.pp:
            raise ConfigError(f"plan: the interleaved schedule (vpp={self.vpp}) needs gradient_accumulation_steps "
                              f"({self.grad_accum}) to be a multiple of pp={self.pp}")
        heads, kv, layers = m.num_attention_heads, m.num_key_value_heads, m.num_hidden_layers
        if heads % self.tp:
            raise ConfigError(f"plan: tp={self.tp} must divide num_attention_heads={heads}; "
                              f"use a tp among {', '.join(str(t) for t in _divisors(heads) if t <= 64)}")
        if kv % self.tp and self.tp % kv:
            raise ConfigError(f"plan: tp={self.tp} and num_key_value_heads={kv}: one must divide the other "
                              "(KV heads are split when tp divides them and replicated when fewer than tp)")
        self._validate_moe()
        self._validate_seq()
        if m.intermediate_size % self.tp:
            raise ConfigError(f"plan: tp={self.tp} must divide intermediate_size={m.intermediate_size}")
        try:
            self.chunk_layers()
        except ConfigError as e:
            raise ConfigError(f"plan: {e}") from None
        bad = [i for i in self.no_recompute_layers if not 0 <= i < layers]
        if bad:
            raise ConfigError(f"plan: no_recompute_layers {bad} are outside 0..{layers - 1}")


    def _validate_seq(self) -> None:
        """sep / cp: the rules of llmpre.parallel.dims.ParallelDims (one message each)."""
        if self.sep == 1 and self.cp == 1:
            return
        from llmpre.parallel.dims import ParallelDims

        try:
            ParallelDims(tp=self.tp, sep=self.sep, cp=self.cp)._validate_seq(self.model, self.seq_length)
        except ConfigError as e:
            raise ConfigError(f"plan: {e}") from None
        if getattr(self.model, "moe", None) is not None or getattr(self.model, "mla", None):
            raise ConfigError("plan: sep_parallel_degree / context_parallel_degree are not built for "
                              "mixture-of-experts or latent-attention models")

    def _validate_moe(self) -> None:
        moe = getattr(self.model, "moe", None)
        if moe is None:
            if self.ep > 1:
                raise ConfigError(f"plan: expert_parallel_degree={self.ep} is set for a dense model (no experts); "
                                  "remove it or set it to 1")
            return
        data = self.dp * self.sharding
        if data % self.ep:
            raise ConfigError(f"plan: expert_parallel_degree={self.ep} draws its ranks from the data ranks (dp "
                              f"{self.dp} x sharding {self.sharding} = {data}) and must divide {data}; change "
                              "--ep, --dp or --sharding")
        if moe.num_experts % self.ep:
            raise ConfigError(f"plan: expert_parallel_degree={self.ep} must divide the {moe.num_experts} experts "
                              f"of each layer; use one of {', '.join(str(d) for d in _divisors(moe.num_experts))}")
        for key in ("moe_intermediate_size", "shared_expert_intermediate_size"):
            if getattr(moe, key) % self.tp:
                raise ConfigError(f"plan: tp={self.tp} must divide {key}={getattr(moe, key)} (experts are split "
                                  "over the tensor-parallel ranks)")


def _divisors(n: int):
    return [d for d in range(1, n + 1) if n % d == 0]
