"""The parallel layout of a run: how many ranks along each axis.

Ranks are laid out as PaddleNLP's hybrid topology orders them, tensor
parallel innermost (so a TP group sits on neighbouring ranks, i.e. one node):

    rank = ((((dp_i * pp + pp_i) * sharding + sharding_i) * sep + sep_i) * cp + cp_i) * tp + tp_i

``dp`` and ``sharding`` are both data parallel (each reads its own slice of
the batch); sharding additionally splits the optimizer state (stage 1), the
gradients (stage 2) and the parameters (stage 3) across its group.

``sep`` and ``cp`` split every sequence (llmpre.parallel.context): the ranks of
one "seq" group read the same samples and each keeps its part of every
sequence; their gradients are summed. ``sep`` (PaddleNLP's sep_parallel_degree,
Ulysses) trades the sequence split for a head split around attention by
all-to-all; ``cp`` (context_parallel_degree) keeps load-balanced causal chunks
and runs ring attention. PaddleNLP 2.8.1's order is dp, pp, sharding, sep, mp;
cp takes sep's place (one of the two at a time).

``ep`` (expert_parallel_degree) adds no ranks: it is drawn from the data
dimension. The data ranks of one (pp, sep, cp, tp) position, in data-rank order
(``data_rank``), form groups of ``ep`` consecutive ranks ("ep" groups); member
``j`` of each holds experts ``[j E/ep, (j+1) E/ep)`` of every MoE layer, and tokens
travel to their expert's owner by all-to-all inside the group (parallel.expert).
The ranks holding the same experts (every ep-th data rank, "expert_data") reduce
those experts' gradients among themselves. PaddleNLP 2.8.1's ``use_expert_parallel``
sets ep to the dp degree (its expert groups are the dp groups; llmpre's groups of consecutive
data ranks give each rank as many experts and the same results).

Pipeline chunks: ``pp x vpp`` of them, numbered in forward order; chunk ``g = c * pp + p``
is the ``c``-th chunk of pipeline rank ``p``. :func:`pipeline_split` gives each its run of
consecutive decoder layers, the one place this is computed (the trainer and the planner
both ask it). When the layers divide evenly every chunk gets ``L / (pp vpp)``. When they
do not, every chunk gets ``floor`` or ``ceil`` of it, and the shorter shares go first to
the last chunk (it also holds the final norm, the LM head, the logits and any
multi-token-prediction depths), then to the first (the embedding and the token ids),
then to chunks 1, 2, ... (under 1F1B rank ``p`` keeps ``pp - p`` micro-batches in flight,
so the early ranks hold the most activations). Megatron-LM likewise gives the first and
last stages fewer layers (``--decoder-first/last-pipeline-num-layers``); Paddle's
``SegmentLayers`` "uniform" method, which PaddleNLP 2.8.1 uses when the layers do not
divide, splits the embedding, layer, norm and head items alike and gives the extra items
to the last parts. ``pipeline_layers`` (``--pipeline_layers 3,4,...``, one count per
chunk in forward order) overrides the default.
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
    sep: int = 1                  # sequence split, heads exchanged by all-to-all around attention
    cp: int = 1                   # sequence split into 2*cp causal chunks, ring attention
    ep: int = 1                   # experts split over groups of ep data ranks (no extra ranks)
    vpp: int = 1                  # virtual pipeline stages per rank (interleaved schedule)
    sequence_parallel: bool = False
    recompute: bool = False
    recompute_granularity: str = "full"
    no_recompute_layers: tuple = ()
    pipeline_layers: tuple = ()   # layers of each pipeline chunk, forward order (): pipeline_split's default

    @property
    def world_size(self) -> int:
        return self.dp * self.sharding * self.tp * self.pp * self.sep * self.cp

    @property
    def seq_parallel_size(self) -> int:
        """Ranks that share each sequence (sep x cp; at most one of them > 1)."""
        return self.sep * self.cp

    @property
    def data_parallel_size(self) -> int:
        """Ranks that read different data (dp x sharding)."""
        return self.dp * self.sharding

    def coords(self, rank: int) -> dict:
        """``{"dp": i, "pp": j, "sharding": k, "sep": m, "cp": n, "tp": l}`` of a global rank."""
        tp_i = rank % self.tp
        rest = rank // self.tp
        cp_i = rest % self.cp
        rest //= self.cp
        sep_i = rest % self.sep
        rest //= self.sep
        sh_i = rest % self.sharding
        rest //= self.sharding
        pp_i = rest % self.pp
        dp_i = rest // self.pp
        return {"dp": dp_i, "pp": pp_i, "sharding": sh_i, "sep": sep_i, "cp": cp_i, "tp": tp_i}

    def rank_of(self, dp: int = 0, pp: int = 0, sharding: int = 0, tp: int = 0, sep: int = 0,
                cp: int = 0) -> int:
        return (((((dp * self.pp + pp) * self.sharding + sharding) * self.sep + sep) * self.cp + cp)
                * self.tp + tp)

    def group_ranks(self, axis: str) -> list[list[int]]:
        """Every group of ranks that differ only along ``axis`` (``dp``, ``sharding``,
        ``tp``, ``pp``, ``sep``, ``cp``, ``data`` = dp x sharding, or ``seq`` = sep x cp),
        in a fixed order; ``ep`` and ``expert_data`` split each data group (module doc)."""
        if axis in ("ep", "expert_data"):
            data = self.group_ranks("data")       # each in data-rank order
            if axis == "ep":
                return [g[i:i + self.ep] for g in data for i in range(0, len(g), self.ep)]
            return [g[j::self.ep] for g in data for j in range(self.ep)]
        axes = {"dp": self.dp, "pp": self.pp, "sharding": self.sharding, "sep": self.sep,
                "cp": self.cp, "tp": self.tp}
        moving = {"data": ["dp", "sharding"], "seq": ["sep", "cp"]}.get(axis, [axis])
        fixed = [a for a in ("dp", "pp", "sharding", "sep", "cp", "tp") if a not in moving]
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

    def ep_rank(self, rank: int) -> int:
        """Which experts' block this rank holds (0 .. ep-1)."""
        return self.data_rank(rank) % self.ep

    def chunk_layers(self, num_layers: int) -> tuple[range, ...]:
        """The decoder layers of every pipeline chunk, in forward order (:func:`pipeline_split`)."""
        return pipeline_split(num_layers, self.pp, self.vpp, self.pipeline_layers)

    def stage_chunks(self, num_layers: int, stage: int) -> list[tuple[int, range]]:
        """``(global chunk, its layers)`` of pipeline rank ``stage``'s chunks, in its order."""
        ranges = self.chunk_layers(num_layers)
        return [(c * self.pp + stage, ranges[c * self.pp + stage]) for c in range(self.vpp)]

    def describe(self) -> str:
        parts = [f"dp {self.dp}", f"sharding {self.sharding} (stage {self.sharding_stage})",
                 f"tp {self.tp}" + (" + sp" if self.sequence_parallel else ""),
                 f"pp {self.pp}" + (f" x vpp {self.vpp}" if self.vpp > 1 else "")]
        if self.sep > 1:
            parts.append(f"sep {self.sep}")
        if self.cp > 1:
            parts.append(f"cp {self.cp}")
        if self.ep > 1:
            parts.append(f"(ep {self.ep} within the data ranks)")
        if self.recompute:
            parts.append(f"recompute {self.recompute_granularity}")
        return f"{self.world_size} ranks = " + " x ".join(parts)

    def validate(self, world_size: int, config=None, num_microbatches: int | None = None,
                 seq_length: int | None = None) -> None:
        """Check the layout against the world, the model and the sequence length;
        errors say what to change."""
        for name in ("dp", "sharding", "tp", "pp", "sep", "cp", "vpp", "ep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} degree must be >= 1, got {getattr(self, name)}")
        if self.sharding_stage not in STAGES:
            raise ConfigError(f"sharding stage must be 1, 2 or 3, got {self.sharding_stage}")
        if self.recompute_granularity not in GRANULARITIES:
            raise ConfigError(f"recompute_granularity must be one of {', '.join(GRANULARITIES)}")
        if self.world_size != world_size:
            raise ConfigError(
                f"the layout needs dp {self.dp} x sharding {self.sharding} x tp {self.tp} x "
                f"pp {self.pp}" + (f" x sep {self.sep}" if self.sep > 1 else "")
                + (f" x cp {self.cp}" if self.cp > 1 else "") + f" = {self.world_size} ranks but "
                f"{world_size} were started; change the degrees or start {self.world_size} processes "
                "(--nproc-per-node)")
        self._validate_seq(config, seq_length)
        self._validate_ep(config)
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
        moe = getattr(config, "moe", None)
        for key, width in ((("moe_intermediate_size", moe.moe_intermediate_size),
                            ("shared_expert_intermediate_size", moe.shared_expert_intermediate_size))
                           if moe is not None else ()):
            if width % self.tp:
                raise ConfigError(f"{key} {width} does not divide over tp {self.tp} (each expert is split "
                                  f"over the tensor-parallel ranks); choose a tp that divides {width}")
        self.chunk_layers(config.num_hidden_layers)     # refuses too few layers, a wrong pipeline_layers

    def _validate_ep(self, config) -> None:
        """expert_parallel_degree against the data ranks, the experts and what is built."""
        if self.ep == 1:
            return
        data = self.data_parallel_size
        if data % self.ep:
            raise ConfigError(
                f"expert_parallel_degree {self.ep} draws its ranks from the data ranks (dp {self.dp} x "
                f"sharding {self.sharding} = {data}), and {self.ep} does not divide {data}; choose an "
                f"expert_parallel_degree that divides {data}, or change dp / sharding")
        moe = getattr(config, "moe", None) if config is not None else None
        if config is not None and moe is None:
            raise ConfigError(f"expert_parallel_degree {self.ep} is set for a dense model "
                              f"({config.model_type}, no experts); remove it or set it to 1")
        if moe is not None and moe.num_experts % self.ep:
            raise ConfigError(f"expert_parallel_degree {self.ep} does not divide the {moe.num_experts} "
                              f"experts of each layer; choose a degree that divides {moe.num_experts}")
        later = [what for what, on in (("sep / context parallelism", self.seq_parallel_size > 1),) if on]
        if later:
            raise ConfigError(f"expert_parallel_degree {self.ep} is not yet combined with "
                              f"{' or '.join(later)}; use data parallelism, sharding, tensor or "
                              "pipeline parallelism with it, or set expert_parallel_degree 1")

    def _validate_seq(self, config, seq_length: int | None) -> None:
        """sep / cp against each other, the sequence length and the heads."""
        if self.sep > 1 and self.cp > 1:
            raise ConfigError(f"sep_parallel_degree {self.sep} and context_parallel_degree {self.cp} "
                              "are both > 1; use one of them (PaddleNLP gives both the same place)")
        if self.cp > 1 and seq_length is not None and seq_length % (2 * self.cp):
            raise ConfigError(
                f"context_parallel_degree {self.cp} cuts every sequence into 2 x {self.cp} = "
                f"{2 * self.cp} equal chunks, but max_seq_length {seq_length} is not a multiple of "
                f"{2 * self.cp}; choose a length or a degree that fits")
        if self.sep > 1 and seq_length is not None and seq_length % self.sep:
            raise ConfigError(f"sep_parallel_degree {self.sep} splits every sequence into {self.sep} "
                              f"equal parts, but max_seq_length {seq_length} is not a multiple of "
                              f"{self.sep}; choose a length or a degree that fits")
        if self.seq_parallel_size > 1 and getattr(config, "num_nextn_predict_layers", 0):
            raise ConfigError(f"multi-token prediction (num_nextn_predict_layers {config.num_nextn_predict_layers}) "
                              "reads tokens up to its depth ahead, across the sep / cp split of the sequence; "
                              "set sep_parallel_degree and context_parallel_degree to 1")
        if self.sep > 1 and config is not None:
            heads, kv = config.num_attention_heads // self.tp, config.num_key_value_heads
            kv = kv // self.tp if kv % self.tp == 0 else 1
            if heads % self.sep or kv % self.sep:
                raise ConfigError(
                    f"sep_parallel_degree {self.sep} splits the attention heads of each rank "
                    f"({heads} heads, {kv} KV heads after tp {self.tp}) over its ranks, and they do "
                    f"not divide by {self.sep}; choose a sep degree that divides both")


def pipeline_counts(num_layers: int, pp: int, vpp: int = 1, explicit=()) -> tuple[int, ...]:
    """Decoder layers of each of the ``pp x vpp`` pipeline chunks, in forward order (module
    doc): ``explicit`` when given (checked: one positive count per chunk, summing to
    ``num_layers``), else the default split. Errors name ``pipeline_layers`` and the fix."""
    chunks = pp * vpp
    shape = (f"pp {pp} x virtual pp {vpp} = {chunks} pipeline chunks" if vpp > 1
             else f"the {pp} pipeline stage{'s' if pp > 1 else ''} (pp {pp})")
    if explicit:
        given = ",".join(str(n) for n in explicit)
        if len(explicit) != chunks:
            raise ConfigError(
                f"pipeline_layers {given} lists {len(explicit)} layer counts but {shape} need"
                f"{'s' if chunks == 1 else ''} one each "
                f"(in forward order: rank p's c-th chunk is entry c x pp + p); give {chunks} numbers "
                f"that add up to {num_layers}, or leave pipeline_layers unset for the default split")
        empty = [i for i, n in enumerate(explicit) if n < 1]
        if empty:
            raise ConfigError(
                f"pipeline_layers {given}: chunk {empty[0]} has {explicit[empty[0]]} layers; every pipeline "
                "chunk needs at least one layer; move a layer into it or lower the pipeline degrees")
        if sum(explicit) != num_layers:
            raise ConfigError(
                f"pipeline_layers {given} add up to {sum(explicit)} layers but the model has {num_layers} "
                f"(num_hidden_layers); change the counts so they sum to {num_layers}")
        return tuple(int(n) for n in explicit)
    if num_layers < chunks:
        raise ConfigError(
            f"{num_layers} layer{'s' if num_layers != 1 else ''} cannot fill {shape}: each needs at least "
            f"one layer; choose degrees whose product pp x virtual pp is at most {num_layers}")
    per, extra = divmod(num_layers, chunks)
    short = ([chunks - 1] + list(range(chunks - 1)))[:chunks - extra]   # last, first, then 1, 2, ...
    return tuple(per if g in short else per + 1 for g in range(chunks)) if extra else (per,) * chunks


def pipeline_split(num_layers: int, pp: int, vpp: int = 1, explicit=()) -> tuple[range, ...]:
    """The decoder layers of every pipeline chunk, in forward order: consecutive runs of
    :func:`pipeline_counts` layers (chunk ``c * pp + p`` is rank ``p``'s ``c``-th chunk)."""
    out, start = [], 0
    for n in pipeline_counts(num_layers, pp, vpp, explicit):
        out.append(range(start, start + n))
        start += n
    return tuple(out)


def parse_pipeline_layers(value, where: str = "pipeline_layers") -> tuple[int, ...]:
    """``"3,4,4"`` (or a list, or space-separated) as a tuple of ints; () when unset."""
    if value is None or value == "" or value == ():
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", ",").split(",")
    try:
        return tuple(int(str(x).strip()) for x in items if str(x).strip())
    except ValueError:
        raise ConfigError(f"{where}: `pipeline_layers` must list the layer count of every pipeline chunk, "
                          f"like 3,4,4,3; got {value!r}") from None


def split_world(world_size: int | None, tp: int, pp: int, sharding: int, sharded: bool,
                dp: int | None = None, seq: int = 1) -> tuple[int, int]:
    """``(dp, sharding)`` of a layout, PaddleNLP's rule, the one place it is computed.

    ``tp``, ``pp`` <= 0 mean 1. ``sharding`` > 0 is the sharding degree; <= 0 means
    all ranks left after tp x pp (x dp) when ``sharded`` (a sharding stage was
    given), else 1. ``dp``, when not given, is what remains of ``world_size``
    after tp x pp x sharding (1 without a world size). ``seq`` (sep x cp ranks sharing
    each sequence) counts like tp. Errors say what to change."""
    shown = f"tp {max(1, tp)}" + (f" x sep/cp {seq}" if seq > 1 else "")
    tp, pp = max(1, tp) * max(1, seq), max(1, pp)
    if sharding <= 0:
        if not sharded:
            sharding = 1
        elif world_size is None:
            raise ConfigError("sharding_parallel_degree -1 means all remaining ranks: give the world "
                              "size (number of processes / GPUs) or the degree")
        else:
            rest = world_size // (tp * pp * (dp or 1))
            if rest * tp * pp * (dp or 1) != world_size or rest == 0:
                raise ConfigError(f"{world_size} ranks are not a multiple of {shown} x pp {pp}"
                                  + (f" x dp {dp}" if dp else "") + "; change the degrees or the number "
                                  "of processes")
            sharding = rest
    if dp is None:
        if world_size is None:
            dp = 1
        else:
            dp = world_size // (tp * pp * sharding)
            if dp == 0 or dp * tp * pp * sharding != world_size:
                raise ConfigError(f"{world_size} ranks cannot be split into {shown} x pp {pp} x "
                                  f"sharding {sharding} x dp; change the degrees or the number of processes")
    elif world_size is not None and dp * sharding * tp * pp != world_size:
        raise ConfigError(f"{world_size} ranks but dp x sharding x {shown} x pp = {dp * sharding * tp * pp}"
                          "; change one of them")
    return dp, sharding


def processes_needed(args) -> int:
    """How many processes a run of training arguments ``args`` starts when the
    launcher is not told (tp x pp x the sharding degree, dp 1)."""
    seq = seq_degrees(args)
    dp, sharding = split_world(None, args.tensor_parallel_degree, args.pipeline_parallel_degree,
                               max(1, args.sharding_parallel_degree), sharded=True, seq=seq[0] * seq[1])
    return (dp * sharding * max(1, args.tensor_parallel_degree) * max(1, args.pipeline_parallel_degree)
            * seq[0] * seq[1])


def ep_degree(args, dp: int = 1) -> int:
    """expert_parallel_degree of training arguments; not given (<= 0), PaddleNLP 2.8.1's
    ``use_expert_parallel`` means all ``dp`` ranks, else 1."""
    ep = getattr(args, "expert_parallel_degree", 1) or 1
    if ep <= 0:
        return dp if getattr(args, "use_expert_parallel", False) else 1
    return ep


def seq_degrees(args) -> tuple[int, int]:
    """``(sep, cp)`` of training arguments (<= 0 or absent: 1)."""
    return (max(1, getattr(args, "sep_parallel_degree", 1) or 1),
            max(1, getattr(args, "context_parallel_degree", 1) or 1))


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
    sep, cp = seq_degrees(args)
    dp, sharding = split_world(world_size, tp, pp, args.sharding_parallel_degree, sharded=bool(stages),
                               seq=sep * cp)
    no_recompute = tuple(int(i) for i in str(args.no_recompute_layers or "").split(",") if i.strip())
    return ParallelDims(dp=dp, sharding=sharding, sharding_stage=stage, tp=tp, pp=pp, sep=sep, cp=cp,
                        ep=ep_degree(args, dp),
                        vpp=max(1, args.virtual_pp_degree), sequence_parallel=bool(args.sequence_parallel),
                        recompute=bool(args.recompute), recompute_granularity=args.recompute_granularity,
                        no_recompute_layers=no_recompute,
                        pipeline_layers=parse_pipeline_layers(getattr(args, "pipeline_layers", None)))
