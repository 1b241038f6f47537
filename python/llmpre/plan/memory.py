"""The memory model: parameters, weights, gradients, optimizer states and
activations per device, and the peak.  Pure arithmetic on a
:class:`~llmpre.plan.settings.PlanSettings`; every rule is listed in the
package docstring (:mod:`llmpre.plan`) and in ``docs/plan.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from llmpre.errors import ConfigError
from llmpre.plan.settings import PlanSettings

GIB = 2 ** 30
MIB = 2 ** 20

# Constants (see the package docstring for where each comes from).
ALLOCATOR_OVERHEAD = 0.10      # reserved / allocated - 1 for Paddle's auto-growth allocator
RUNTIME_BYTES = 1.5 * GIB      # CUDA context, NCCL buffers, library workspaces: outside the allocator
STAGE3_GATHERED_LAYERS = 2     # stage 3 holds the layer in use plus one prefetched, unsharded
ADAM_STATE_BYTES = 8           # AdamW: two fp32 moments per parameter
MASTER_BYTES = 4               # fp32 master weight per parameter (O2, or sharded)
INDEX_BYTES = 8                # int64 token ids kept by the embedding for its backward


def _model_field(m, name, default):
    return getattr(m, name, default)


# ------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class ParamCounts:
    """Parameters one device holds, by part (elements, not bytes)."""

    layer: int                 # one decoder layer's share on this device
    embedding: int             # token (+ position) embeddings and any norm right after them
    head: int                  # final norm + output projection (0 when tied and on one stage)
    layer_replicated: int      # the part of `layer` every tp rank holds in full (norms, row biases)


def _check_supported(m) -> None:
    unsupported = [name for name, on in (
        ("Yuan localized filtering", _model_field(m, "localized_filtering", False)),
        ("projected word embeddings (word_embed_proj_dim)", _model_field(m, "word_embed_proj_dim", None)),
    ) if on]
    if unsupported:
        raise ConfigError(f"plan: the memory planner does not model {', '.join(unsupported)} yet; "
                          "it covers dense decoder layers")


def kv_heads_per_rank(m, tp: int) -> int:
    """KV heads on one tensor-parallel rank: split when tp divides them, else each
    rank keeps the one KV head its query heads read (replicated tp/kv times)."""
    kv = m.num_key_value_heads
    return kv // tp if kv % tp == 0 else 1


def vocab_per_rank(m, tp: int) -> int:
    """Vocabulary rows per rank: split when tp divides the vocabulary, else replicated
    (PaddleNLP keeps a plain embedding and head when vocab % tp != 0)."""
    return m.vocab_size // tp if m.vocab_size % tp == 0 else m.vocab_size


@dataclass(frozen=True)
class LayerParams:
    """One decoder layer's parameters on one device, by part (elements)."""

    attention: int             # q/k/v/o, or MLA's projections and latent norms
    norms: int                 # the two layer norms
    mlp: int                   # the dense MLP (0 on a sparse layer)
    router: int = 0            # MoE gate weight (+ DeepSeek-V3's correction bias): replicated
    frozen: int = 0            # of which without gradient or optimizer state (the correction bias)
    mtp: int = 0               # an MTP depth's enorm, hnorm, eh_proj and head norm (replicated)
    shared: int = 0            # shared expert (+ its gate), split by tp
    routed: int = 0            # this rank's routed experts: E / ep of them, each split by tp
    replicated: int = 0        # the part every tp rank holds in full

    @property
    def total(self) -> int:
        return self.attention + self.norms + self.mlp + self.router + self.shared + self.routed + self.mtp


def _attention_params(s: PlanSettings) -> Tuple[int, int]:
    """(parameters, of which replicated over tp) of one attention block on one device.
    MLA: q / q_b and kv_b split by heads, o by rows; the latent projections q_a, kv_a
    and their norms replicated."""
    m, tp, h = s.model, s.tp, s.model.hidden_size
    out_bias = h if _model_field(m, "attention_out_bias", False) else 0
    mla = _model_field(m, "mla", None)
    if mla is not None:
        heads = m.num_attention_heads // tp
        qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        if mla.q_lora_rank is None:
            q, q_rep = h * heads * qk, 0
        else:
            q_rep = h * mla.q_lora_rank + mla.q_lora_rank
            q = q_rep + mla.q_lora_rank * heads * qk
        kv_rep = h * (mla.kv_lora_rank + mla.qk_rope_head_dim) + mla.kv_lora_rank
        kv = kv_rep + mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        return q + kv + heads * mla.v_head_dim * h + out_bias, q_rep + kv_rep + out_bias
    d = m.head_dim
    q = m.num_attention_heads * d // tp
    kv = kv_heads_per_rank(m, tp) * d
    qkv_bias = _model_field(m, "attention_bias", False)
    return h * q + 2 * h * kv + q * h + ((q + 2 * kv) if qkv_bias else 0) + out_bias, out_bias


def is_sparse(s: PlanSettings, layer: int) -> bool:
    moe = _model_field(s.model, "moe", None)
    return moe is not None and moe.is_sparse(layer)


def layer_params(s: PlanSettings, layer: int) -> LayerParams:
    """Parameters of decoder layer ``layer`` on one device (tp, and ep for routed experts)."""
    m, tp = s.model, s.tp
    h = m.hidden_size
    mlp_bias = _model_field(m, "mlp_bias", False)
    gated = _model_field(m, "mlp_type", "gated") == "gated"
    norm = (2 if _model_field(m, "norm_type", "rmsnorm") == "layernorm" else 1) * h
    attention, att_rep = _attention_params(s)
    mtp = 3 * norm + 2 * h * h if layer >= m.num_hidden_layers else 0    # an MTP depth's own parts
    if is_sparse(s, layer):
        e = m.moe
        router = e.num_experts * h + (e.num_experts if e.topk_method == "noaux_tc" else 0)
        shared = 3 * h * (e.shared_expert_intermediate_size // tp) + (h if e.shared_expert_gate else 0)
        routed = e.num_experts // s.ep * 3 * h * (e.moe_intermediate_size // tp)
        rep = 2 * norm + att_rep + router + (h if e.shared_expert_gate else 0)
        return LayerParams(attention=attention, norms=2 * norm, mlp=0, router=router, shared=shared,
                           routed=routed, replicated=rep + mtp, mtp=mtp,
                           frozen=e.num_experts if e.topk_method == "noaux_tc" else 0)
    inter = m.intermediate_size // tp
    n_in = 2 if gated else 1
    mlp = n_in * h * inter + inter * h + ((n_in * inter + h) if mlp_bias else 0)
    return LayerParams(attention=attention, norms=2 * norm, mlp=mlp, mtp=mtp,
                       replicated=2 * norm + att_rep + (h if mlp_bias else 0) + mtp)


def activated_params(m) -> int:
    """Parameters a token's compute uses (DeepSeek's "activated parameters"): every
    dense part, the router, the shared expert and ``num_experts_per_tok`` routed
    experts per sparse layer, and the output head; not the input embedding table
    (a lookup of one row) unless it is the tied head, nor multi-token-prediction modules
    (DeepSeek counts them apart). A dense model: all of it."""
    moe = _model_field(m, "moe", None)
    total = m.num_parameters()
    if moe is None:
        return total
    idle = moe.num_experts - moe.num_experts_per_tok
    sparse = sum(1 for i in range(m.num_hidden_layers) if moe.is_sparse(i))
    embedding = 0 if m.tie_word_embeddings else m.vocab_size * m.hidden_size
    total -= (total - m.replace(num_nextn_predict_layers=0).num_parameters()) if mtp_depths(m) else 0
    return total - sparse * idle * 3 * m.hidden_size * moe.moe_intermediate_size - embedding


def param_counts(s: PlanSettings) -> ParamCounts:
    """The largest layer's count (``layer``), embedding and head on one device."""
    m, tp = s.model, s.tp
    _check_supported(m)
    h = m.hidden_size
    norm = (2 if _model_field(m, "norm_type", "rmsnorm") == "layernorm" else 1) * h
    largest = max((layer_params(s, i) for i in range(m.num_hidden_layers)), key=lambda c: c.total)
    layer, replicated = largest.total, largest.replicated

    v = vocab_per_rank(m, tp)
    embedding = v * h
    if _model_field(m, "position", "rope") == "learned":
        embedding += (m.max_position_embeddings + _model_field(m, "position_offset", 0)) * h
    if _model_field(m, "embedding_norm", False):
        embedding += norm
    head = (norm if _model_field(m, "final_norm", True) else 0)
    if not m.tie_word_embeddings or s.pp > 1:   # tied across stages: the last stage keeps its own copy
        head += v * h
    if mtp_depths(m) and s.pp > 1 and not m.tie_word_embeddings:   # MTP reads the embedding on the last stage
        head += v * h
    return ParamCounts(layer=layer, embedding=embedding, head=head, layer_replicated=replicated)


def rank_chunks(s: PlanSettings, rank: int) -> List[range]:
    """The decoder layers of each chunk pipeline rank ``rank`` holds, in its order: chunk
    ``c`` is virtual stage ``c * pp + rank`` of the trainer's split
    (:func:`llmpre.parallel.dims.pipeline_split`: even, or floor/ceil shares, or ``pipeline_layers``)."""
    ranges = s.chunk_layers()
    return [ranges[c * s.pp + rank] for c in range(s.vpp)]


def stage_layers(s: PlanSettings, rank: int) -> List[int]:
    """Global indices of the decoder layers pipeline rank ``rank`` holds (:func:`rank_chunks`)."""
    return [i for chunk in rank_chunks(s, rank) for i in chunk]


def held_layers(s: PlanSettings, rank: int) -> List[int]:
    """:func:`stage_layers` plus, on the last stage, the multi-token-prediction depths
    (layers ``num_hidden_layers ..``: each a decoder block beside the output head)."""
    L = s.model.num_hidden_layers
    mtp = list(range(L, L + _model_field(s.model, "num_nextn_predict_layers", 0))) if rank == s.pp - 1 else []
    return stage_layers(s, rank) + mtp


def mtp_depths(m) -> int:
    return _model_field(m, "num_nextn_predict_layers", 0)


def stage_params(s: PlanSettings, rank: int) -> int:
    c = param_counts(s)
    n = sum(layer_params(s, i).total for i in held_layers(s, rank))
    if rank == 0:
        n += c.embedding
    if rank == s.pp - 1:
        n += c.head
    return n


# ------------------------------------------------------------------ activations
@dataclass(frozen=True)
class Dtypes:
    """Bytes per element of each kind of tensor under the settings' precision."""

    weight: int        # parameters as stored
    grad: int          # gradients
    act: int           # tensors saved by matmuls / attention (autocast dtype under O1)
    resid: int         # the residual stream and norm inputs (fp32 under O1)
    weight_cast: int   # per-forward low-precision weight copies kept by O1 autocast (0 otherwise)


def dtypes(s: PlanSettings) -> Dtypes:
    if not s.low_precision:
        return Dtypes(weight=4, grad=4, act=4, resid=4, weight_cast=0)
    if s.opt_level == "O1":
        return Dtypes(weight=4, grad=4, act=2, resid=4, weight_cast=2)
    return Dtypes(weight=2, grad=4 if s.amp_master_grad else 2, act=2, resid=2, weight_cast=0)


def _norm_saved(s: PlanSettings, dt: Dtypes, width: float) -> float:
    """Bytes per token a norm keeps for its backward: a fused kernel keeps its
    input and an fp32 1/rms; the reference op keeps an fp32 copy of the input and
    the normalised result in the weight dtype (plus the fp32 1/rms)."""
    if s.fused_rms_norm:
        return dt.resid * width + 4
    return 4 * width + dt.resid * width + 4


def layer_inventory(s: PlanSettings, layer: Optional[int] = None) -> Dict[str, float]:
    """Bytes per token decoder layer ``layer`` (default: the last) keeps for its
    backward (one micro-batch, no recompute), by tensor.  Tensors of width ``hidden``
    that tensor parallelism does not split are divided by tp under sequence parallelism."""
    layer = s.model.num_hidden_layers - 1 if layer is None else layer
    m, tp, dt = s.model, s.tp, dtypes(s)
    h, d, seq = m.hidden_size, m.head_dim, s.seq_length
    heads = m.num_attention_heads // tp
    q = heads * d
    kv = kv_heads_per_rank(m, tp) * d
    inter = m.intermediate_size // tp
    sp = tp if s.sequence_parallel else 1
    gated = _model_field(m, "mlp_type", "gated") == "gated"
    rope = _model_field(m, "position", "rope") == "rope"
    alibi = _model_field(m, "position", "rope") == "alibi"
    rotary = q + kv if rope else 0
    rotary *= _model_field(m, "partial_rotary_factor", 1.0)

    def column_inputs(n: int) -> float:
        # tp == 1 (O2/fp32): one normalised tensor shared by the projections.
        # tp > 1: each column-parallel linear keeps its own copy (Paddle's c_identity
        # copies its input; under sequence parallelism each keeps its all-gathered input).
        # O1: autocast keeps a low-precision cast per linear.
        shared = tp == 1 and not dt.weight_cast
        return dt.act * h * (1 if shared else n)

    inv: Dict[str, float] = {}
    inv["norm 1 (layer input)"] = _norm_saved(s, dt, h / sp)
    mla = _model_field(m, "mla", None)
    if mla is not None:
        _mla_inventory(s, inv, column_inputs)
    else:
        inv["q/k/v inputs"] = column_inputs(1 if s.fuse_attention_qkv else 3)
        if rope and not s.fused_rope:
            inv["rotary (reference op: q, k before rotation)"] = dt.act * rotary
        if s.cp > 1:
            # ring attention (llmpre.parallel.context) keeps q, k, v, its fp32 merged output and lse;
            # the K/V (and dK/dV) all-gathered for each hop are transient (not modelled)
            inv["attention q, k, v, out"] = dt.act * (2 * q + 2 * kv)
            inv["attention: ring's fp32 output and lse"] = 4 * q + 4 * heads
        elif s.flash_attention:
            inv["attention q, k, v, out"] = dt.act * (2 * q + 2 * kv)
            inv["attention softmax stats (fp32)"] = 4 * heads
            if alibi:
                inv["ALiBi bias [heads, s, s] (flash path)"] = dt.act * heads * seq
        else:
            # written-out attention: scaled q, k and v expanded to every query head,
            # fp32 softmax output and its low-precision copy, context for o_proj
            inv["attention q, k, v (expanded)"] = dt.act * 3 * q
            inv["attention probabilities [heads, s, s]"] = (4 + dt.act) * heads * seq
            inv["attention context (o_proj input)"] = dt.act * q
    inv["norm 2 (residual)"] = _norm_saved(s, dt, h / sp)
    if is_sparse(s, layer):
        _moe_inventory(s, inv, column_inputs)
    elif gated:
        inv["gate/up inputs"] = column_inputs(1 if s.fuse_attention_ffn else 2)
        inv["SwiGLU gate, act(gate), up"] = dt.act * 3 * inter
    else:
        inv["up input"] = column_inputs(1)
        inv["activation input"] = dt.act * inter
    if not is_sparse(s, layer):
        inv["down input"] = dt.act * inter
    return inv


def _mla_inventory(s: PlanSettings, inv: Dict[str, float], column_inputs) -> None:
    """Latent attention (per token, this rank's H/tp heads; n, r, v head dims, c / q_c
    the kv / query latent widths): the projections' shared input; the query latent
    and its norm, q_b's input; kv_a's output [c | r], the latent norm, kv_b's input;
    per head q [n | r], k [n | r] (the rotary key expanded), v and the output."""
    m, dt = s.model, dtypes(s)
    a = m.mla
    heads = m.num_attention_heads // s.tp
    qk = a.qk_nope_head_dim + a.qk_rope_head_dim
    inv["latent projections' input"] = column_inputs(1)
    if a.q_lora_rank is not None:
        inv["query latent + its norm, q_b input"] = (_norm_saved(s, dt, a.q_lora_rank)
                                                     + dt.act * a.q_lora_rank)
    inv["kv latent [c | r] + its norm, kv_b input"] = (dt.act * (a.kv_lora_rank + a.qk_rope_head_dim)
                                                       + _norm_saved(s, dt, a.kv_lora_rank)
                                                       + dt.act * a.kv_lora_rank)
    inv["q, k_nope | v per head (projection outputs)"] = dt.act * heads * (qk + a.qk_nope_head_dim + a.v_head_dim)
    if not s.fused_rope:
        inv["rotary (reference op: q_rope, k_rope before rotation)"] = dt.act * (heads + 1) * a.qk_rope_head_dim
    if s.flash_attention:
        inv["attention q, k, v, out"] = dt.act * heads * (2 * qk + 2 * a.v_head_dim)
        inv["attention softmax stats (fp32)"] = 4 * heads
    else:
        inv["attention q, k, v (expanded)"] = dt.act * heads * (2 * qk + a.v_head_dim)
        inv["attention probabilities [heads, s, s]"] = (4 + dt.act) * heads * s.seq_length
        inv["attention context (o_proj input)"] = dt.act * heads * a.v_head_dim


def _moe_inventory(s: PlanSettings, inv: Dict[str, float], column_inputs) -> None:
    """A sparse layer's feed-forward (per token; k experts per token, I the expert and
    S the shared-expert widths, split by tp): the router's fp32 input, logits and
    scores; the k gathered rows, each expert's SwiGLU (gate, act(gate), up) and down
    input, the k weighted outputs; under expert parallelism the all-to-all receive
    buffers (rows in, outputs back: 2 k h); the shared expert as a dense MLP."""
    m, dt = s.model, dtypes(s)
    e, h = m.moe, m.hidden_size
    k, inter = e.num_experts_per_tok, e.moe_intermediate_size // s.tp
    inv["router input, logits, scores (fp32)"] = 4 * h + 8 * e.num_experts
    inv["expert rows (k per token)"] = dt.act * k * h
    inv["expert SwiGLU gate, act(gate), up"] = dt.act * 3 * k * inter
    inv["expert down input"] = dt.act * k * inter
    inv["expert outputs (weighted, k per token)"] = dt.act * k * h
    if s.ep > 1:
        inv["all-to-all buffers (rows in, outputs back)"] = dt.act * 2 * k * h
    if e.shared_expert_intermediate_size:
        shared = e.shared_expert_intermediate_size // s.tp
        inv["shared expert gate/up input"] = column_inputs(1 if s.fuse_attention_ffn else 2)
        inv["shared expert SwiGLU + down input"] = dt.act * 4 * shared


def _core_only(inv: Dict[str, float]) -> float:
    """Bytes per token of the attention core a ``core_attn`` recompute drops."""
    return sum(v for k, v in inv.items() if k.startswith("attention") or k.startswith("ALiBi"))


def layer_bytes(s: PlanSettings, recomputed: bool, layer: Optional[int] = None) -> float:
    """Bytes layer ``layer`` (default: the last) keeps for one micro-batch, with or without recompute."""
    inv = layer_inventory(s, layer)
    dt, m = dtypes(s), s.model
    sp = s.tp if s.sequence_parallel else 1
    tokens = s.micro_batch * s.local_seq        # this rank's part of each sequence (sep / cp)
    layer = m.num_hidden_layers - 1 if layer is None else layer
    cast = dt.weight_cast * layer_params(s, layer).total  # O1: the per-forward weight casts matmuls keep
    full = sum(inv.values()) * tokens + cast
    if not (s.recompute and recomputed):
        return full
    h = m.hidden_size
    if s.granularity == "full":
        return dt.resid * h / sp * tokens                # the layer input is the checkpoint
    attn_keys = [k for k in inv if k.startswith(("q/k/v", "rotary", "attention", "ALiBi", "latent", "query", "kv ",
                                                 "q, k"))]
    if s.granularity == "full_attn":
        kept = sum(v for k, v in inv.items() if k not in attn_keys)
        return (kept + dt.act * h / sp) * tokens + cast  # + the attention block's input
    # core_attn: q, k, v are the checkpoint, the context stays as o_proj's input
    q = m.num_attention_heads // s.tp * m.head_dim
    kv = kv_heads_per_rank(m, s.tp) * m.head_dim
    if m.mla is not None:   # q, k, v per head: [n | r], [n | r], v
        a = m.mla
        q = kv = m.num_attention_heads // s.tp * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim) / 2
    kept = sum(inv.values()) - _core_only(inv) + dt.act * (2 * q + 2 * kv)
    return kept * tokens + cast


def recompute_working_bytes(s: PlanSettings, layer: Optional[int] = None) -> float:
    """What one layer's recomputation rebuilds during its backward."""
    if not s.recompute:
        return 0.0
    full = layer_bytes(s.replace(recompute=False), recomputed=False, layer=layer)
    return full - layer_bytes(s, recomputed=True, layer=layer)


def logits_bytes(s: PlanSettings) -> float:
    """Peak of the output layer and loss for one micro-batch: the logits, their
    fp32 copy and the fp32 softmax the cross-entropy keeps (8 bytes per logit in
    fp32 training, where no copy is made)."""
    per = 8 if not s.low_precision else 10
    return per * s.micro_batch * s.local_seq * vocab_per_rank(s.model, s.tp)


def head_bytes(s: PlanSettings) -> float:
    """Final norm and output-projection input of one micro-batch (last stage),
    plus Baichuan2's normalised output weight when the model has a NormHead."""
    m, dt = s.model, dtypes(s)
    sp = s.tp if s.sequence_parallel else 1
    tokens = s.micro_batch * s.local_seq
    b = (_norm_saved(s, dt, m.hidden_size / sp) + dt.act * m.hidden_size) * tokens
    if _model_field(m, "lm_head_norm", False):
        b += dt.act * vocab_per_rank(m, s.tp) * m.hidden_size
    return b


def activations_in_flight(s: PlanSettings, rank: int, chunk_bytes: List[float]) -> float:
    """The most activation bytes pipeline rank ``rank`` keeps at once, ``chunk_bytes[c]`` being
    what one micro-batch's forward through its chunk ``c`` keeps: 1F1B holds
    :func:`in_flight` micro-batches of its one chunk; the interleaved schedule is replayed
    (:func:`llmpre.parallel.schedule.pipeline_schedule`, each forward adding its chunk's bytes,
    each backward freeing them), so chunks of different sizes count as they are."""
    if s.vpp == 1:
        return chunk_bytes[0] * in_flight(s, rank)
    from llmpre.parallel.schedule import pipeline_schedule

    held = peak = 0.0
    for op, _, chunk in pipeline_schedule("interleaved", s.pp, s.grad_accum, rank, s.vpp):
        held += chunk_bytes[chunk] if op == "F" else -chunk_bytes[chunk]
        peak = max(peak, held)
    return peak


def in_flight(s: PlanSettings, rank: int) -> float:
    """Micro-batches whose activations pipeline rank ``rank`` holds at its peak
    (fractional with virtual stages: chunk-forwards / chunks per rank)."""
    if s.pp == 1:
        return 1.0
    if s.vpp == 1:
        return float(min(s.pp - rank, s.grad_accum))                        # 1F1B warm-up
    chunks = min((s.pp - rank - 1) * 2 + (s.vpp - 1) * s.pp + 1, s.grad_accum * s.vpp)  # interleaved
    return chunks / s.vpp


# ------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class StageMemory:
    rank: int
    params: int
    layers: int
    weights: float
    gradients: float           # kept between micro-batches
    gradients_full: float      # all of this stage's gradients, as produced by a backward
    optimizer: float
    stage3_gathered: float
    activations: float         # everything in flight at the end of the forward
    layer_activation: float    # one layer, one micro-batch, as kept
    micro_batches: float
    head: float
    logits: float
    backward_working: float
    phases: Dict[str, float] = field(default_factory=dict)
    grad_buffer: float = 0.0   # llmpre's packed fp32 gradient, kept between steps (one shard)

    @property
    def peak(self) -> float:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)


@dataclass(frozen=True)
class MemoryPlan:
    settings: PlanSettings
    stages: Tuple[StageMemory, ...]
    total_params: int
    activated_params: int = 0      # per token (MoE: k routed experts of each sparse layer)

    @property
    def worst(self) -> StageMemory:
        return max(self.stages, key=lambda st: st.peak)

    @property
    def peak_allocated(self) -> float:
        return self.worst.peak

    @property
    def peak_reserved(self) -> float:
        return self.peak_allocated * (1 + ALLOCATOR_OVERHEAD)

    @property
    def device_total(self) -> float:
        """What the device must have: reserved peak plus the runtime outside the allocator."""
        return self.peak_reserved + RUNTIME_BYTES

    def fits(self, gpu_bytes: float) -> bool:
        return self.device_total <= gpu_bytes


def plan_memory(s: PlanSettings) -> MemoryPlan:
    """The per-device memory of ``s``, stage by stage."""
    m, dt = s.model, dtypes(s)
    counts = param_counts(s)
    total = m.num_parameters()
    single = s.replace(tp=1, pp=1, vpp=1, pipeline_layers=(), ep=1, sequence_parallel=False, sources={})
    n1 = stage_params(single, 0)
    if n1 != total:
        raise ConfigError(f"plan: the planner counts {n1:,} parameters for this model but its config says "
                          f"{total:,}; it has a feature the planner does not model")
    shard = s.sharding if s.stage >= 1 else 1
    stages = []
    for rank in range(s.pp):
        n = stage_params(s, rank)
        layers = held_layers(s, rank)
        frozen = sum(layer_params(s, i).frozen for i in layers)   # no gradient, no optimizer state; fp32
        weights = (n - frozen) * dt.weight + frozen * 4
        gathered = 0.0
        if s.stage >= 3:
            weights /= s.sharding
            gathered = STAGE3_GATHERED_LAYERS * counts.layer * dt.weight
        grads_full = (n - frozen) * dt.grad
        # expert parallelism: a rank's routed experts are sharded over the data ranks holding
        # the same experts (dp x sharding / ep of them), the rest over the sharding group
        experts = sum(layer_params(s, i).routed for i in layers) if s.ep > 1 else 0
        expert_shard = s.dp * s.sharding // s.ep if shard > 1 else 1
        grads_kept = grads_full
        if s.stage >= 2:
            grads_kept = ((n - frozen - experts) / s.sharding + experts / expert_shard) * dt.grad
        # fp32 master weights for the shard unless the parameters are their own master:
        # O2 stores low-precision parameters, and a sharded shard spans parameters
        master = MASTER_BYTES if s.o2 or shard > 1 else 0
        optimizer = (n - frozen - experts) * (ADAM_STATE_BYTES + master) / shard + experts * (
            ADAM_STATE_BYTES + (MASTER_BYTES if s.o2 or expert_shard > 1 else 0)) / expert_shard
        keep = set(s.no_recompute_layers)
        # MTP blocks are not recomputed; each also keeps its two norms' and eh_proj's inputs
        mtp_in = (2 * _norm_saved(s, dt, m.hidden_size) + dt.act * 2 * m.hidden_size) * s.micro_batch * s.local_seq
        def kept(i):
            if i >= m.num_hidden_layers:    # an MTP depth: the whole sequence under sp (plain tp)
                return layer_bytes(s.replace(sequence_parallel=False), recomputed=False, layer=i) + mtp_in
            return layer_bytes(s, recomputed=i not in keep, layer=i)
        chunks = [list(c) for c in rank_chunks(s, rank)]
        chunks[-1] += layers[len(stage_layers(s, rank)):]       # MTP depths run with the last chunk
        mb = in_flight(s, rank)
        acts = activations_in_flight(s, rank, [sum(kept(i) for i in c) for c in chunks])
        if rank == 0:
            acts += INDEX_BYTES * s.micro_batch * s.local_seq * mb
        last = rank == s.pp - 1
        head = head_bytes(s) if last else 0.0
        logits = logits_bytes(s) * (1 + mtp_depths(m)) if last else 0.0     # + each MTP depth's logits
        big = max(layers, key=lambda i: layer_bytes(s.replace(recompute=False), recomputed=False, layer=i))
        one_layer = layer_bytes(s.replace(recompute=False), recomputed=False, layer=big)
        working = recompute_working_bytes(s, big) + one_layer     # rebuilt layer + its gradients
        # on one shard llmpre's optimizer packs the gradients into one fp32 buffer that it keeps
        # between steps (parallel/optimizer.py, reduce_gradients): it is there through the next
        # forward and backward, beside the parameters' own gradients
        grad_buffer = float((n - frozen) * 4) if s.sharding == 1 else 0.0
        static = weights + gathered + optimizer + grad_buffer
        phases = {
            "end of forward (loss)": static + grads_kept + acts + head + logits,
            "backward of a layer": static + grads_kept + acts + head + working,
        }
        if s.stage >= 2:
            phases["end of backward (all gradients before reduce)"] = static + grads_full
        stages.append(StageMemory(
            rank=rank, params=n, layers=len(layers), weights=weights, gradients=grads_kept,
            gradients_full=grads_full, optimizer=optimizer, stage3_gathered=gathered, activations=acts,
            layer_activation=layer_bytes(s, recomputed=True, layer=big) if s.recompute else one_layer,
            micro_batches=mb, head=head, logits=logits, backward_working=working, phases=phases,
            grad_buffer=grad_buffer))
    return MemoryPlan(settings=s, stages=tuple(stages), total_params=total, activated_params=activated_params(m))
