"""Memory planner: what one device holds when training a model with a given
batch, parallel layout and precision, and whether it fits.

    from llmpre.plan import PlanSettings, plan_memory
    s = PlanSettings(model=get_config("llama2-7b"), seq_length=4096, micro_batch=2, tp=2,
                     sharding=4, stage=2, dtype="bfloat16", opt_level="O2", flash_attention=True)
    plan_memory(s).peak_reserved          # bytes

Pure Python and arithmetic; no framework is imported.  Everything below is an
assumption of the model; ``docs/plan.md`` repeats it with the commands.

Parameters (per device)
    Decoder layers are split by tensor parallelism (tp) Megatron-style: q, k, v,
    gate, up by output columns, o and down by input rows; norms and row-parallel
    biases are replicated.  KV heads are split when tp divides them, otherwise
    every rank keeps the one KV head its query heads read.  Embedding and output
    layer are split by vocabulary rows when tp divides the vocabulary, else
    replicated.  Pipeline rank p holds layers of virtual stages p, p+pp, ...,
    split as the trainer splits them (``llmpre.parallel.dims.pipeline_split``: L / (pp vpp)
    each when that divides, else floor or ceil with the shorter shares on the last
    chunk, then the first, then chunks 1, 2, ...; or ``--pipeline-layers``);
    the embedding sits on the first rank, final norm and output layer on the
    last (tied embeddings: both ends keep a copy when pp > 1).  With tp = pp = 1
    the count equals ``ModelConfig.num_parameters()`` (checked on every plan).
    Mixture-of-experts layers: router replicated, shared expert split by tp,
    ``E / ep`` routed experts per rank (each split by tp), their optimizer state
    sharded over the ``dp x sharding / ep`` ranks holding the same experts;
    latent attention: per-head projections split, latent ones replicated
    (``docs/plan.md`` lists the activations of both).

Bytes per parameter
    weights: 4 (fp32, and bf16/fp16 O1, which keeps fp32 weights) or 2 (O2);
    gradients: the weight dtype, 4 under O2 with ``amp_master_grad``;
    optimizer: AdamW's two fp32 moments (8) plus an fp32 master weight (4)
    under O2.  Step counters, beta powers and learning-rate tensors are ignored.
    Sharding (degree N): stage 1 divides optimizer states by N, stage 2 also
    keeps only 1/N of the gradients between micro-batches, stage 3 also the
    weights, plus two layers gathered in full (the one in use and one prefetched).

Activations: what one layer keeps for its backward, per token of a micro-batch
    (A = 2 bytes under bf16/fp16, 4 in fp32; R = the residual stream's bytes,
    fp32 under O1; h hidden, I intermediate, q/kv the per-rank query/KV widths):
    - each norm: a fused kernel keeps its input (R h) and an fp32 1/rms; the
      reference op keeps an fp32 copy of its input and the normalised output
      (4h + R h);
    - inputs of the column-parallel projections: one shared A h tensor without
      tp; under tp each projection keeps its own copy (Paddle's c_identity copies
      its input; sequence parallelism all-gathers into a full copy per
      projection) - 3 for separate q/k/v, 1 fused; 2 for gate/up, 1 fused;
      O1's autocast also keeps one cast per projection;
    - rotary without the fused kernel: q and k before rotation (A (q + kv));
    - flash attention: q, k, v, output (A (2q + 2kv)) and the fp32 softmax
      statistics; ALiBi under flash also keeps a dense [heads, s, s] bias
      (PaddleNLP builds one per layer); without flash: scaled q, k and v
      expanded to every head, the context (A 4q) and the fp32 softmax output
      plus its A-byte copy ((4 + A) heads s per token);
    - SwiGLU, computed as silu(gate) * up: gate, silu(gate), up (3A I/tp), and
      the down projection's input (A I/tp); a plain MLP keeps 2A I/tp;
    - O1 also keeps a low-precision cast of every weight of the layer per
      micro-batch.
    Sequence parallelism divides the width-h tensors that tp replicates (norm
    inputs) by tp.  Dropout is assumed off (pretraining configs use 0).
    Recompute: ``full`` keeps only the layer input (R h); ``full_attn`` keeps
    the MLP block, the first norm and the attention block's input; ``core_attn``
    keeps everything but the attention core's own saves, checkpointing q, k, v.
    ``no_recompute_layers`` keep everything.
    The first stage also keeps the int64 token ids; the last stage the final
    norm, the output layer's input (and Baichuan2's normalised output weight
    when ``lm_head_norm``).

Micro-batches in flight
    1 without pipeline parallelism (accumulation runs one micro-batch at a time).
    1F1B: rank p holds min(pp - p, accumulation) micro-batches; the first rank
    most.  Interleaved (vpp > 1): rank p holds (pp - p - 1) * 2 + (vpp - 1) * pp + 1
    chunk forwards (capped by accumulation * vpp); the planner replays the rank's
    schedule, each chunk forward keeping its own chunk's layers, so uneven chunks
    count as they are.  Every rank is planned with its own layers; the planner
    reports the rank with the highest peak.

Loss
    The output layer's logits (A bytes), their fp32 copy (4) and the fp32 softmax
    the cross-entropy keeps (4): 10 bytes per logit of one micro-batch (8 in
    fp32), vocabulary split by tp when tp divides it.  Live at the end of the
    forward, on the last stage.

Peak: the largest of
    - end of forward: weights + optimizer + kept gradients + activations in
      flight + head + loss;
    - backward of a layer: the same without the loss, plus one layer rebuilt by
      recompute and one layer's worth of gradients being formed;
    - end of backward, sharding stage >= 2: weights + optimizer + *all* of the
      step's gradients.  Stage 2 produces each gradient in full and reduces it
      to its owner on a communication stream; its memory returns to the
      allocator only after that reduce ran, so the planner bounds the gradients
      alive at the end of backward by the full set.  PaddleNLP's Baichuan2-13B
      sharding-8 row (74767 MB, recompute on) is not explained without it.
    Reserved = allocated x 1.10 (:data:`~llmpre.plan.memory.ALLOCATOR_OVERHEAD`,
    fragmentation of Paddle's auto-growth allocator; PaddleNLP's published
    figures are ``max_memory_reserved``).  Fitting also needs 1.5 GiB outside the
    allocator (CUDA context, NCCL buffers, library workspaces).
    Not modelled: pipeline send/receive buffers, data-parallel gradient buckets,
    attention masks shared by all layers, optimizer-step temporaries (below the
    peaks above), CPU offload.
"""

from llmpre.plan.memory import MemoryPlan, StageMemory, plan_memory
from llmpre.plan.search import Suggestion, cheapest_fits, smallest_peak
from llmpre.plan.settings import PlanSettings

__all__ = ["PlanSettings", "MemoryPlan", "StageMemory", "plan_memory", "cheapest_fits", "smallest_peak",
           "Suggestion"]
