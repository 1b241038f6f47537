"""PaddleNLP argument keys that llmpre accepts although they cannot change what
it computes, the keys it refuses (with the reason), and the option words of
PaddleNLP's ``*_parallel_config`` strings.

Each accepted-without-effect key gets one notice line when a file or flag sets
it to something other than PaddleNLP's default (at the default it does nothing
in PaddleNLP either). :mod:`llmpre.train.args` reads these tables.
"""

from __future__ import annotations

# key -> (PaddleNLP's default, why the key cannot change the result of an llmpre run)
NOOP: dict = {
    "unified_checkpoint": (False, "llmpre's checkpoints are always layout-independent safetensors"),
    "unified_checkpoint_config": ("", "see unified_checkpoint"),
    "distributed_dataloader": (False, "every rank reads its own slice of the batch directly (the same "
                               "batches)"),
    "fuse_attention_qkv": (None, "a parameter-layout choice; llmpre keeps q/k/v separate (the same math)"),
    "fuse_attention_ffn": (None, "a parameter-layout choice; llmpre keeps gate/up separate (the same math)"),
    "recompute_use_reentrant": (False, "llmpre's recompute has one implementation (the same values)"),
    "skip_memory_metrics": (True, "memory is always logged"),
    "dataloader_drop_last": (False, "pretraining datasets are sampled to exact batch multiples"),
    "eval_accumulation_steps": (None, "PaddleNLP moves accumulated predictions to the CPU every N "
                                "evaluation batches; pretraining evaluation keeps only the loss, so "
                                "there is nothing to accumulate"),
    "to_static": (False, "llmpre trains eagerly; static-graph compilation changes speed, not what is "
                  "computed"),
    "use_fast_layer_norm": (False, "a GPT LayerNorm kernel choice (PaddleNLP's fast_ln extension); "
                            "llmpre's LayerNorm computes the same normalisation, statistics in fp32"),
    "fuse_sequence_parallel_allreduce": (False, "fuses the all-reduce of norm gradients under sequence "
                                         "parallelism; the sum is the same"),
    "enable_linear_fused_grad_add": (False, "fuses gradient accumulation into the linear backward; the "
                                     "sum is the same"),
    "tensor_parallel_output": (True, "llmpre's loss always reads the vocabulary-parallel logits under "
                               "tensor parallelism (the same loss)"),
    "pp_recompute_interval": (1, "llmpre recomputes per layer as recompute and no_recompute_layers say "
                              "(memory, not values)"),
    "log_on_each_node": (True, "global rank 0 reports for the run"),
    "run_name": (None, "the run is named by output_dir"),
    "logging_first_step": (False, "llmpre logs every logging_steps steps and the last step"),
}

# key -> (accepted values, why others are refused and what to do)
REFUSED: dict = {
    "use_fp8": ((False,), "fp8 training is not implemented; remove it"),
    "autotuner_benchmark": ((False,), "PaddleNLP's autotuner mode (5 steps, no eval or save) is not "
                            "implemented; set max_steps instead"),
    "ignore_data_skip": ((False,), "llmpre always resumes at the exact data position of the step; "
                         "remove it"),
    "optim": (("adamw",), "llmpre trains with AdamW only"),
    "fp16_full_eval": ((False,), "evaluation runs in the training precision"),
    "bf16_full_eval": ((False,), "evaluation runs in the training precision"),
    "refined_recompute": (("",), "refined recompute is not implemented; use recompute_granularity"),
    "greater_is_better": ((None, False), "the best checkpoint is the one with the lowest eval loss, "
                          "the only metric of pretraining evaluation"),
}

# The words of PaddleNLP's *_parallel_config strings (space- or comma-separated), each
# with why it cannot change what llmpre computes. A word not listed is refused.
_OVERLAP = "overlaps communication with computation in PaddleNLP; llmpre's values are the same"
PARALLEL_CONFIG: dict = {
    "pipeline_parallel_config": {
        "disable_p2p_cache_shape": "re-sends activation shapes each step (variable lengths); llmpre's "
                                   "micro-batches have one shape",
        "disable_partial_send_recv": "sends whole activations between stages instead of tensor-parallel "
                                     "slices; llmpre sends whole activations",
        "enable_delay_scale_loss": "divides gradients by the accumulation steps at the optimizer step "
                                   "instead of scaling the loss; the same gradients up to rounding",
        "enable_dp_comm_overlap": _OVERLAP,
        "enable_sharding_comm_overlap": _OVERLAP,
        "enable_timer": "PaddleNLP's pipeline timers; no effect on values",
        "enable_release_grads": "frees gradient memory after the step; no effect on values",
        "enable_overlap_p2p_comm": _OVERLAP,
        "enable_clear_every_step_cache": "clears PaddleNLP's pipeline cache each step; no effect on values",
        "disable_batch_p2p_comm": "sends stage messages one by one; the same values",
        "enable_send_recv_overlap": _OVERLAP,
        "use_dualpipev": "PaddleNLP's DualPipeV schedule; llmpre runs 1F1B (interleaved with "
                         "virtual_pp_degree), which computes the same gradients",
    },
    "sharding_parallel_config": {
        "enable_stage1_tensor_fusion": "fuses small tensors into buffers; llmpre's optimizer already "
                                       "works on flat buffers",
        "enable_stage1_overlap": _OVERLAP,
        "enable_stage2_overlap": _OVERLAP,
        "enable_stage1_broadcast_overlap": _OVERLAP,
        "enable_stage1_allgather_overlap": _OVERLAP,
        "split_param": "sharding stage 1 V2, whose shards cut across parameters; llmpre's sharded "
                       "optimizer shards a flat buffer that way",
        "disable_stage1_reduce_avg": "reduces gradients by sum and scales afterwards; the same mean",
        "enable_release_grads": "frees gradient memory after the step; no effect on values",
    },
    "tensor_parallel_config": {
        "enable_mp_async_allreduce": _OVERLAP,
        "enable_mp_skip_c_identity": "skips an identity op in the column-parallel backward; the same "
                                     "values",
        "enable_mp_fused_linear_param_grad_add": "fuses weight-gradient accumulation; the same sum",
        "enable_sp_async_reduce_scatter": _OVERLAP,
        "enable_delay_scale_loss": "divides gradients by the accumulation steps at the optimizer step "
                                   "instead of scaling the loss; the same gradients up to rounding",
        "sync_param": "broadcasts replicated parameters to keep tensor-parallel replicas in step; "
                      "llmpre's replicas are identical by construction",
        "sync_grad": "see sync_param (gradients)",
        "sync_moment": "see sync_param (optimizer moments)",
        "replace_with_c_embedding": "a vocabulary-parallel embedding kernel; llmpre's embedding is "
                                    "vocabulary-parallel already",
        "replace_with_parallel_cross_entropy": "llmpre's loss is vocabulary-parallel under tensor "
                                               "parallelism already",
    },
    "data_parallel_config": {
        "enable_allreduce_avg_in_gradinent_scale": "averages gradients inside the all-reduce instead "
                                                   "of after it; the same mean",
        "gradient_sync_after_accumulate": "synchronises gradients once after accumulation; llmpre "
                                          "reduces once per step",
    },
}


def config_words(value) -> list[str]:
    """The option words of a ``*_parallel_config`` value (space- or comma-separated)."""
    return [w for w in str(value or "").replace(",", " ").split() if w]


def _norm(value):
    """A JSON or command-line value as a Python value: booleans, numbers, None, else the text."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text in ("true", "yes"):
        return True
    if text in ("false", "no"):
        return False
    if text in ("", "none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        return value


def _same(value, default) -> bool:
    v = _norm(value)
    if isinstance(default, bool) or default in (None, ""):
        return bool(v) == bool(default)
    if isinstance(default, (int, float)):
        try:
            return float(v) == float(default)
        except (TypeError, ValueError):
            return False
    return str(v).lower() == str(default).lower()


def is_default(key: str, value) -> bool:
    """Whether ``value`` is PaddleNLP's default for no-op ``key`` (a degree of 1 is off too)."""
    return _same(value, NOOP[key][0]) or (key.endswith("_degree") and _same(value, 1))


def accepted(key: str, value) -> bool:
    """Whether refused ``key`` has one of the values llmpre accepts (those that mean off)."""
    return any(_same(value, ok) for ok in REFUSED[key][0])
