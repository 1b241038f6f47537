"""The parallel layout of a run: how many ranks along each axis.

Ranks are laid out as PaddleNLP's hybrid topology orders them, tensor
parallel innermost (so a TP group sits on neighbouring ranks, i.e. one node):

    rank = ((dp_i * pp + pp_i) * sharding + sharding_i) * tp + tp_i

``dp`` and ``sharding`` are both data parallel (each reads its own slice of
the batch); sharding additionally splits the optimizer state (stage 1), the
gradients (stage 2) and the parameters (stage 3) across its group.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmpre.errors import ConfigError

STAGES = (1, 2, 3)
GRANULARITIES = ("full", "full_attn", "core_attn")


@dataclass(frozen=True)
class ParallelDims:
    dp: int = 1
    sharding: int = 1
    sharding_stage: int = 1
    tp: int = 1
    pp: int = 1
    vpp: int = 1                  # virtual pipeline stages per rank (interleaved schedule)
    sequence_parallel: bool = False
    recompute: bool = False
    recompute_granularity: str = "full"
    no_recompute_layers: tuple = ()

    @property
    def world_size(self) -> int:
        return self.dp * self.sharding * self.tp * self.pp

    @property
    def data_parallel_size(self) -> int:
        """Ranks that read different data (dp x sharding)."""
        return self.dp * self.sharding

    def coords(self, rank: int) -> dict:
        """``{"dp": i, "pp": j, "sharding": k, "tp": l}`` of a global rank."""
        tp_i = rank % self.tp
        rest = rank // self.tp
        sh_i = rest % self.sharding
        rest //= self.sharding
        pp_i = rest % self.pp
        dp_i = rest // self.pp
        return {"dp": dp_i, "pp": pp_i, "sharding": sh_i, "tp": tp_i}

    def rank_of(self, dp: int = 0, pp: int = 0, sharding: int = 0, tp: int = 0) -> int:
        return ((dp * self.pp + pp) * self.sharding + sharding) * self.tp + tp

    def group_ranks(self, axis: str) -> list[list[int]]:
        """Every group of ranks that differ only along ``axis`` (``dp``, ``sharding``,
        ``tp``, ``pp``, or ``data`` = dp x sharding), in a fixed order."""
        axes = {"dp": self.dp, "pp": self.pp, "sharding": self.sharding, "tp": self.tp}
        moving = ["dp", "sharding"] if axis == "data" else [axis]
        fixed = [a for a in ("dp", "pp", "sharding", "tp") if a not in moving]
        groups = []

        def walk(i, coords):
            if i == len(fixed):
                members = []

                def inner(j, c):
                    if j == len(moving):
                        members.append(self.rank_of(**c))
                        return
                    for v in range(axes[moving[j]]):
                        inner(j + 1, {**c, moving[j]: v})
                inner(0, coords)
                groups.append(sorted(members))
                return
            for v in range(axes[fixed[i]]):
                walk(i + 1, {**coords, fixed[i]: v})

        walk(0, {})
        return groups

    def data_rank(self, rank: int) -> int:
        """Which slice of each global batch this rank reads (0 .. dp*sharding-1)."""
        c = self.coords(rank)
        return c["dp"] * self.sharding + c["sharding"]

    def describe(self) -> str:
        parts = [f"dp {self.dp}", f"sharding {self.sharding} (stage {self.sharding_stage})",
                 f"tp {self.tp}" + (" + sp" if self.sequence_parallel else ""),
                 f"pp {self.pp}" + (f" x vpp {self.vpp}" if self.vpp > 1 else "")]
        if self.recompute:
            parts.append(f"recompute {self.recompute_granularity}")
        return f"{self.world_size} ranks = " + " x ".join(parts)

    def validate(self, world_size: int, config=None, num_microbatches: int | None = None) -> None:
        """Check the layout against the world and the model; errors say what to change."""
        for name in ("dp", "sharding", "tp", "pp", "vpp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} degree must be >= 1, got {getattr(self, name)}")
        if self.sharding_stage not in STAGES:
            raise ConfigError(f"sharding stage must be 1, 2 or 3, got {self.sharding_stage}")
        if self.recompute_granularity not in GRANULARITIES:
            raise ConfigError(f"recompute_granularity must be one of {', '.join(GRANULARITIES)}")
        if self.world_size != world_size:
            raise ConfigError(
                f"the layout needs dp {self.dp} x sharding {self.sharding} x tp {self.tp} x "
                f"pp {self.pp} = {self.world_size} ranks but {world_size} were started; change "
                f"the degrees or start {self.world_size} processes (--nproc-per-node)")
        if self.sequence_parallel and self.tp == 1:
            raise ConfigError("sequence_parallel needs tensor_parallel_degree > 1")
        if self.pp > 1 and self.sharding > 1 and self.sharding_stage > 1:
            raise ConfigError("pipeline parallelism combines only with sharding stage 1 "
                              "(as in PaddleNLP); use sharding stage1 or pp 1")
        if self.vpp > 1 and self.pp == 1:
            raise ConfigError("virtual_pp_degree > 1 needs pipeline_parallel_degree > 1")
        if self.vpp > 1 and num_microbatches is not None and num_microbatches % self.pp:
            raise ConfigError(
                f"the interleaved schedule needs gradient_accumulation_steps ({num_microbatches}) "
                f"to be a multiple of pipeline_parallel_degree ({self.pp})")
        if config is None:
            return
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        if heads % self.tp:
            raise ConfigError(f"{heads} attention heads do not divide over tp {self.tp}; "
                              f"choose a tp that divides {heads}")
        if kv % self.tp and self.tp % kv:
            raise ConfigError(f"{kv} KV heads can be neither split over nor replicated across tp "
                              f"{self.tp}; choose a tp that divides or is a multiple of {kv}")
        if config.vocab_size % self.tp:
            raise ConfigError(f"vocab_size {config.vocab_size} does not divide over tp {self.tp}; "
                              "pad the vocabulary (from-scratch runs pad to a multiple of 128) or "
                              "change tp")
        if config.intermediate_size % self.tp:
            raise ConfigError(f"intermediate_size {config.intermediate_size} does not divide over "
                              f"tp {self.tp}")
        layers = config.num_hidden_layers
        chunks = self.pp * self.vpp
        if layers < chunks or layers % chunks:
            raise ConfigError(
                f"{layers} layers do not split evenly into pp {self.pp} x virtual pp {self.vpp} = "
                f"{chunks} pipeline chunks; choose degrees whose product divides {layers}")


def split_world(world_size: int | None, tp: int, pp: int, sharding: int, sharded: bool,
                dp: int | None = None) -> tuple[int, int]:
    """``(dp, sharding)`` of a layout, PaddleNLP's rule, the one place it is computed.

    ``tp``, ``pp`` <= 0 mean 1. ``sharding`` > 0 is the sharding degree; <= 0 means
    all ranks left after tp x pp (x dp) when ``sharded`` (a sharding stage was
    given), else 1. ``dp``, when not given, is what remains of ``world_size``
    after tp x pp x sharding (1 without a world size). Errors say what to change."""
    tp, pp = max(1, tp), max(1, pp)
    if sharding <= 0:
        if not sharded:
            sharding = 1
        elif world_size is None:
            raise ConfigError("sharding_parallel_degree -1 means all remaining ranks: give the world "
                              "size (number of processes / GPUs) or the degree")
        else:
            rest = world_size // (tp * pp * (dp or 1))
            if rest * tp * pp * (dp or 1) != world_size or rest == 0:
                raise ConfigError(f"{world_size} ranks are not a multiple of tp {tp} x pp {pp}"
                                  + (f" x dp {dp}" if dp else "") + "; change the degrees or the number "
                                  "of processes")
            sharding = rest
    if dp is None:
        if world_size is None:
            dp = 1
        else:
            dp = world_size // (tp * pp * sharding)
            if dp == 0 or dp * tp * pp * sharding != world_size:
                raise ConfigError(f"{world_size} ranks cannot be split into tp {tp} x pp {pp} x "
                                  f"sharding {sharding} x dp; change the degrees or the number of processes")
    elif world_size is not None and dp * sharding * tp * pp != world_size:
        raise ConfigError(f"{world_size} ranks but dp*sharding*tp*pp = {dp}*{sharding}*{tp}*{pp} = "
                          f"{dp * sharding * tp * pp}; change one of them")
    return dp, sharding


def processes_needed(args) -> int:
    """How many processes a run of training arguments ``args`` starts when the
    launcher is not told (tp x pp x the sharding degree, dp 1)."""
    dp, sharding = split_world(None, args.tensor_parallel_degree, args.pipeline_parallel_degree,
                               max(1, args.sharding_parallel_degree), sharded=True)
    return dp * sharding * max(1, args.tensor_parallel_degree) * max(1, args.pipeline_parallel_degree)


def dims_from_args(args, world_size: int) -> ParallelDims:
    """The layout from training arguments (PaddleNLP's keys); ``sharding`` is the
    stage word ("stage1"/"stage2"/"stage3", with "offload" refused) and the
    sharding degree defaults, as in PaddleNLP, to all remaining ranks."""
    tp = max(1, args.tensor_parallel_degree)
    pp = max(1, args.pipeline_parallel_degree)
    words = args.sharding.split() if isinstance(args.sharding, str) else []
    if "offload" in words:
        raise ConfigError("sharding offload is not supported; remove 'offload'")
    stages = [int(w[len("stage"):]) for w in words if w.startswith("stage") and w[5:].isdigit()]
    unknown = [w for w in words if not (w.startswith("stage") and w[5:].isdigit())]
    if unknown or len(stages) > 1:
        raise ConfigError(f"sharding '{args.sharding}': write one of stage1, stage2, stage3")
    stage = stages[0] if stages else 1
    dp, sharding = split_world(world_size, tp, pp, args.sharding_parallel_degree, sharded=bool(stages))
    no_recompute = tuple(int(i) for i in str(args.no_recompute_layers or "").split(",") if i.strip())
    return ParallelDims(dp=dp, sharding=sharding, sharding_stage=stage, tp=tp, pp=pp,
                        vpp=max(1, args.virtual_pp_degree), sequence_parallel=bool(args.sequence_parallel),
                        recompute=bool(args.recompute), recompute_granularity=args.recompute_granularity,
                        no_recompute_layers=no_recompute)
