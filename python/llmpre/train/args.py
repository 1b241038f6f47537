"""Training arguments: typed fields with PaddleNLP's names, and the adapter
that reads PaddleNLP's flat JSON argument files.

Two sources of defaults:

- With a JSON file (``llmpre train pretrain_argument.json``), keys the file
  leaves out take PaddleNLP's defaults (the field defaults below), so a
  PaddleNLP file means what it meant there.
- Without one (``llmpre train --model llama-tiny``), :data:`QUICKSTART` is
  applied first: small, fast values for the bundled corpus on a CPU.

Command-line flags override both; ``--paddlenlp-defaults`` skips QUICKSTART
for a run without a file (one log line lists the QUICKSTART values that
differ from PaddleNLP's when they apply).

Keys that cannot change what llmpre computes are accepted, each with one
notice line (:mod:`llmpre.train.paddlenlp_keys`); keys llmpre does not
implement are refused with the reason. Every unknown or refused key of a file
(or of the flags) is reported in one error.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field, fields

from llmpre.errors import ConfigError
from llmpre.parallel.dims import GRANULARITIES, parse_pipeline_layers
from llmpre.train import paddlenlp_keys as pk

__all__ = ["TrainingArguments", "QUICKSTART", "UNSUPPORTED", "ALIASES", "parse_arguments",
           "argument_help", "quickstart_differences"]


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainingArguments:
    # ---- model ----
    model_name_or_path: str = _f("llama-tiny", "Preset name (see `llmpre models`) or a "
                                 "HuggingFace-format directory (config.json + safetensors).")
    tokenizer_name_or_path: typing.Optional[str] = _f(
        None, "tokenizer.json or a directory holding one; from-scratch runs pad the vocabulary "
        "to a multiple of 128 covering it (PaddleNLP semantics).")
    continue_training: bool = _f(False, "Load the weights at model_name_or_path instead of "
                                 "initialising randomly.")
    num_hidden_layers: typing.Optional[int] = _f(None, "Override the model's number of layers.")
    model_type: typing.Optional[str] = _f(None, "The model family the run expects (llama, qwen2, gpt, "
                                          "...); checked against the model's config.")
    hidden_dropout_prob: float = _f(0.1, "GPT models: dropout on the embeddings and the MLP output "
                                    "(PaddleNLP's run_pretrain default 0.1; no effect on other families).")
    attention_probs_dropout_prob: float = _f(0.1, "GPT models: dropout on the attention probabilities "
                                             "and the attention output (PaddleNLP 2.8's use; default 0.1).")
    moe_bias_update_rate: float = _f(0.001, "DeepSeek-V3 (topk_method noaux_tc): after each step every "
                                     "sparse layer's e_score_correction_bias moves by this much against the "
                                     "sign of each expert's load error (the paper's gamma; 0: frozen; llmpre).")
    # ---- data ----
    input_dir: typing.Optional[str] = _f(
        None, "Corpus prefix, a directory of corpora (several: equal weights), or "
        "\"w1 prefix1 w2 prefix2\" (a weighted blend). Default: the bundled English corpus.")
    split: str = _f("949,50,1", "train,valid,test proportions over corpus items.")
    max_seq_length: int = _f(1024, "Tokens per training sequence.")
    data_cache: typing.Optional[str] = _f(None, "Extra index-cache directory (searched after "
                                          "<data dir>/index-cache/, written when given).")
    share_folder: bool = _f(False, "Index cache is on a shared filesystem: global rank 0 "
                            "builds it (else local rank 0 of each node).")
    data_impl: str = _f("mmap", "Corpus format; only 'mmap' (.bin/.idx, or legacy .npy/.npz).",
                        choices=("mmap",))
    skip_warmup: bool = _f(True, "Kept for PaddleNLP compatibility (mmap pages load lazily).")
    dataloader_num_workers: int = _f(0, "Background batch prefetch threads (0: load inline).")
    # ---- optimisation ----
    output_dir: typing.Optional[str] = _f(None, "Run directory: checkpoints, logs, final "
                                          "weights. Default: output/<model>.")
    overwrite_output_dir: bool = _f(False, "Start from scratch even if output_dir has "
                                    "checkpoints.")
    resume_from_checkpoint: typing.Optional[str] = _f(
        None, "A checkpoint directory to resume from (default: the newest in output_dir).")
    per_device_train_batch_size: int = _f(8, "Micro-batch size (sequences).")
    per_device_eval_batch_size: int = _f(8, "Evaluation batch size (sequences).")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(5e-5, "Peak learning rate.")
    min_learning_rate: float = _f(1e-5, "Learning rate at the end of the decay.")
    warmup_steps: int = _f(0, "Linear warmup steps (takes precedence over warmup_ratio).")
    warmup_ratio: float = _f(0.0, "Warmup as a fraction of max_steps.")
    lr_scheduler_type: str = _f("linear", "Decay after warmup: cosine, linear or constant.",
                                choices=("cosine", "linear", "constant"))
    decay_steps: typing.Optional[int] = _f(None, "Step where the decay reaches "
                                           "min_learning_rate (default: max_steps).")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay (not on biases and norms).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _f(1.0, "Clip the global gradient norm to this (0: no clipping).")
    max_steps: int = _f(-1, "Optimizer steps to train (this or num_train_epochs is required).")
    num_train_epochs: typing.Optional[float] = _f(
        None, "Passes over the train split when max_steps <= 0 (max_steps = ceil(epochs x steps per "
        "pass)); ignored when max_steps > 0, as in PaddleNLP.")
    seed: int = _f(42, "Seed for initialisation and data sampling.")
    # ---- evaluation, logging, checkpoints ----
    do_train: bool = _f(True, "Train.")
    do_eval: bool = _f(False, "Evaluate on the valid split every eval_steps.")
    do_predict: bool = _f(False, "Evaluate on the test split after training.")
    eval_steps: typing.Optional[int] = _f(None, "Evaluate every N steps (default: "
                                          "logging_steps).")
    evaluation_strategy: str = _f("no", "When to evaluate: steps (every eval_steps), epoch (after each "
                                  "pass over the train split, and at the end) or no; do_eval turns no "
                                  "into steps, and another value turns do_eval on (PaddleNLP's rule).",
                                  choices=("no", "steps", "epoch"))
    save_strategy: str = _f("steps", "When to checkpoint: steps (every save_steps), epoch or no.",
                            choices=("no", "steps", "epoch"))
    load_best_model_at_end: bool = _f(False, "Finish with the weights of the checkpoint with the best "
                                      "metric_for_best_model (needs matching evaluation/save strategies, "
                                      "and save_steps a multiple of eval_steps).")
    metric_for_best_model: typing.Optional[str] = _f(None, "loss (eval_loss), the only metric of "
                                                     "pretraining evaluation (default with "
                                                     "load_best_model_at_end).")
    eval_iters: int = _f(10, "Batches per evaluation (PaddleNLP fixes 10); the test pass "
                         "uses 10x.")
    logging_steps: int = _f(500, "Log a line every N steps.")
    save_steps: int = _f(500, "Checkpoint every N steps.")
    save_total_limit: typing.Optional[int] = _f(None, "Keep only the newest N checkpoints.")
    disable_tqdm: bool = _f(False, "No progress bar (it is also off when stdout is not a "
                            "terminal).")
    num_threads: typing.Optional[int] = _f(None, "CPU threads for Paddle's kernels "
                                           "(default: all cores available to the process).")
    report_to: str = _f("auto", "Scalar logger: visualdl, tensorboard, none, or auto (VisualDL "
                        "if installed, else TensorBoard if installed).",
                        choices=("auto", "visualdl", "tensorboard", "none"))
    logging_dir: typing.Optional[str] = _f(None, "Directory for VisualDL/TensorBoard logs "
                                           "(default: <output_dir>/runs).")
    max_nonfinite_skips: int = _f(0, "Steps with a non-finite loss or gradient norm that may be "
                                  "skipped in total before training stops (0: stop at the first).")
    scale_loss: float = _f(2.0 ** 15, "Initial dynamic loss scale for fp16.")
    amp_master_grad: bool = _f(True, "fp32 gradients for clipping and the update under O2 (llmpre "
                               "always does this).")
    amp_custom_black_list: typing.Optional[str] = _f(
        None, "Paddle op names kept in fp32 under bf16/fp16, added to llmpre's list (a JSON list, or "
        "names separated by commas or spaces).")
    amp_custom_white_list: typing.Optional[str] = _f(
        None, "Paddle op names run in bf16/fp16 under autocast (as amp_custom_black_list).")
    device: typing.Optional[str] = _f(None, "cpu or gpu (unset: a GPU when Paddle has one; PaddleNLP's "
                                      "default is gpu).")
    # ---- accepted PaddleNLP keys whose only supported value is the default ----
    bf16: bool = _f(False, "bfloat16 mixed precision (needs a GPU build of Paddle).")
    fp16: bool = _f(False, "float16 mixed precision with dynamic loss scaling (GPU build).")
    fp16_opt_level: str = _f("O1", "AMP level for bf16/fp16: O1 autocast with fp32 weights, O2 "
                             "low-precision weights with fp32 master weights.", choices=("O1", "O2"))
    # ---- fused ops (llmpre.ops.select_ops): unset = fused where this build has the kernel,
    # true = fused required (error if unavailable), false = pure-Paddle reference op ----
    use_flash_attention: typing.Optional[bool] = _f(None, "Fused flash attention kernel "
                                                    "(unset: fused where built).")
    use_fused_rms_norm: typing.Optional[bool] = _f(None, "Fused RMSNorm kernel (unset: fused where built).")
    use_fused_rope: typing.Optional[bool] = _f(None, "Fused rotary embedding kernel (unset: fused where "
                                               "built).")
    use_fused_swiglu: typing.Optional[bool] = _f(None, "Fused SwiGLU kernel (llmpre; unset: fused where "
                                                 "built).")
    use_fused_cross_entropy: typing.Optional[bool] = _f(None, "Fused softmax cross-entropy loss kernel "
                                                        "(llmpre; unset: fused where built).")
    use_fused_grouped_mlp: typing.Optional[bool] = _f(None, "Fused grouped expert MLP kernel for MoE layers "
                                                      "(llmpre; unset: fused where built; false: the "
                                                      "pure-Paddle reference, one host read per layer).")
    use_fused_moe_combine: typing.Optional[bool] = _f(None, "Fused MoE combine kernel (each token's routing-"
                                                      "weighted sum of its expert rows; llmpre; unset: fused "
                                                      "where built).")
    use_fused_adamw: typing.Optional[bool] = _f(None, "Fused AdamW update (one pass over the optimizer's "
                                                "flat buffers; llmpre; unset: fused where built).")
    allow_reference_fallback: bool = _f(False, "If a fused op set to true is unavailable, warn and use "
                                        "the reference op instead of stopping.")
    flash_attention_kernel: str = _f("auto", "CUDA flash-attention kernels on a GPU: auto (Hopper on "
                                     "sm_90, else portable), portable or hopper (llmpre; the "
                                     "LLMPRE_FLASH_ATTENTION_KERNEL variable overrides it).",
                                     choices=("auto", "portable", "hopper"))
    # ---- parallelism (llmpre's own layers over Paddle process groups) ----
    recompute: bool = _f(False, "Recompute activations in backward instead of keeping them.")
    recompute_granularity: str = _f("full", "What to recompute: full (decoder layers), full_attn "
                                    "(attention blocks) or core_attn (softmax(QK^T)V).",
                                    choices=GRANULARITIES)
    no_recompute_layers: typing.Optional[str] = _f(None, "Layer indices not to recompute "
                                                   "(a JSON list or 1,2,3).")
    tensor_parallel_degree: int = _f(-1, "Tensor parallel degree (--tp).")
    pipeline_parallel_degree: int = _f(-1, "Pipeline parallel degree (--pp).")
    context_parallel_degree: int = _f(-1, "Context parallel degree (--cp): each sequence in 2N "
                                      "load-balanced chunks over N ranks, ring attention.")
    sep_parallel_degree: int = _f(-1, "Sequence (Ulysses) parallel degree (--sep): each sequence in N "
                                  "parts, heads exchanged by all-to-all around attention.")
    expert_parallel_degree: int = _f(-1, "Expert parallel degree (--ep): each MoE layer's experts "
                                     "split over groups of N data ranks, tokens exchanged by "
                                     "all-to-all (adds no ranks).")
    use_expert_parallel: bool = _f(False, "PaddleNLP 2.8.1's switch: experts split over the dp ranks "
                                   "(expert_parallel_degree = dp degree when that is not given).")
    virtual_pp_degree: int = _f(1, "Virtual pipeline stages per rank: the interleaved 1F1B "
                                "schedule (--vpp).")
    pipeline_layers: typing.Optional[str] = _f(None, "Decoder layers of every pipeline chunk, in forward "
                                               "order (pp x vpp numbers summing to num_hidden_layers, "
                                               "like 3,4,4,3; rank p's c-th chunk is entry c*pp+p). "
                                               "Unset: an even split, or when the layers do not divide, "
                                               "one layer fewer on the last, then the first chunks "
                                               "(docs/parallel.md).")
    sharding_parallel_degree: int = _f(-1, "Sharding group size (default: all ranks left after "
                                       "tp and pp when sharding is set).")
    sharding: str = _f("", "Sharding stage: stage1 (optimizer state), stage2 (+ gradients), stage3 "
                       "(+ parameters); a number N means degree N at stage1 (--sharding 4).")
    sequence_parallel: bool = _f(False, "Megatron sequence parallelism on top of tp (--sp).")
    pipeline_parallel_config: str = _f("", "PaddleNLP's pipeline options (space-separated); each is "
                                       "accepted with a notice of why it changes nothing here.")
    sharding_parallel_config: str = _f("", "PaddleNLP's sharding options (as pipeline_parallel_config).")
    tensor_parallel_config: str = _f("", "PaddleNLP's tensor-parallel options (as "
                                     "pipeline_parallel_config).")
    data_parallel_config: str = _f("", "PaddleNLP's data-parallel options (as pipeline_parallel_config).")
    distributed_timeout: typing.Optional[int] = _f(
        None, "Seconds every rank waits for the others at the rendezvous, the process-group "
        "setup and checkpoint barriers; the error names the ranks that did not arrive (unset: "
        "LLMPRE_DIST_TIMEOUT, else 1800). On NCCL also Paddle's per-collective timeout.")

    @property
    def effective_eval_steps(self) -> int:
        return self.eval_steps if self.eval_steps else self.logging_steps

    @property
    def warmup(self) -> float:
        """Warmup length in steps (PaddleNLP: warmup_steps, else warmup_ratio * max_steps)."""
        return float(self.warmup_steps) if self.warmup_steps > 0 else self.warmup_ratio * self.max_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Values for a run without a JSON file: the bundled corpus on a 2-core CPU,
# ~200 steps in a few minutes with a clearly falling loss.
QUICKSTART: dict = {
    "max_steps": 200,
    "max_seq_length": 128,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "warmup_steps": 20,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.01,
    "adam_beta2": 0.95,
    "logging_steps": 10,
    "do_eval": True,
    "eval_steps": 50,
    "eval_iters": 4,
    "save_steps": 100,
    "save_total_limit": 2,
}

# Alternative spellings accepted on the command line and in files.
ALIASES: dict = {
    "model": "model_name_or_path",
    "data": "input_dir",
    "seq_length": "max_seq_length",
    "batch_size": "per_device_train_batch_size",
    "lr": "learning_rate",
    "threads": "num_threads",
    "tp": "tensor_parallel_degree",
    "pp": "pipeline_parallel_degree",
    "cp": "context_parallel_degree",
    "sep": "sep_parallel_degree",
    "ep": "expert_parallel_degree",
    "vpp": "virtual_pp_degree",
    "sp": "sequence_parallel",
    "eval_strategy": "evaluation_strategy",   # the newer HF/PaddleNLP spelling
}

# PaddleNLP keys llmpre does not implement: the values it accepts (those that
# mean "off") and what to do instead (llmpre.train.paddlenlp_keys).
UNSUPPORTED: dict = pk.REFUSED

# PaddleNLP keys accepted because they cannot change what llmpre computes, with
# the reason (one notice line each when set; documented in the README).
ACCEPTED_NOOP: dict = {key: why for key, (_, why) in pk.NOOP.items()}

# The values PaddleNLP uses when QUICKSTART's keys are not given (its TrainingArguments
# and run_pretrain defaults), for the line that lists how a flags-only run differs.
PADDLENLP_DEFAULTS: dict = {f.name: f.default for f in fields(TrainingArguments)}
PADDLENLP_DEFAULTS["eval_iters"] = 10   # run_pretrain fixes it


def _field_map() -> dict:
    return {f.name: f for f in fields(TrainingArguments)}


def _coerce(name: str, f, value, where: str):
    """Convert ``value`` (from JSON or a command-line string) to the field's type."""
    hint = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    optional = "Optional" in hint
    base = hint.replace("typing.Optional[", "").replace("Optional[", "").rstrip("]")
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{where}: `{name}` cannot be null")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if base == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"unhandled field type {hint}")
    kind = "an integer" if base == "int" else f"a {base}"
    raise ConfigError(f"{where}: `{name}` must be {kind}, got {value!r}")


def _canonical(key: str) -> str:
    key = key.strip().lstrip("-").replace("-", "_")
    return ALIASES.get(key, key)


def _close_keys(name: str, fmap: dict, limit: int = 4) -> list:
    """Accepted keys spelled like ``name`` (typos: difflib, best first), then keys that
    contain it or that it contains."""
    close = difflib.get_close_matches(name, list(fmap) + list(ALIASES), n=3, cutoff=0.6)
    if len(name) >= 3:  # a letter or two is inside every key
        close += [n for n in fmap if (name in n or n in name) and n not in close]
    return close[:limit]


_LIST_KEYS = ("amp_custom_black_list", "amp_custom_white_list")


def _apply(values: dict, raw: dict, where: str, notices: list | None = None) -> None:
    """Set ``values`` from ``raw`` (a file's object or the flags); every unknown or
    refused key is collected and reported in one ConfigError."""
    fmap = _field_map()
    problems: list[str] = []
    for key, value in raw.items():
        name = _canonical(key)
        if name in pk.NOOP:
            if notices is not None and not pk.is_default(name, value):
                notices.append(f"{name} = {value!r} has no effect here: {pk.NOOP[name][1]}")
            continue
        if name in pk.REFUSED:
            if not pk.accepted(name, value):
                problems.append(f"`{key}` = {value!r} is not supported: {pk.REFUSED[name][1]}")
            continue
        if name not in fmap and name != "sharding_stage":
            close = _close_keys(name, fmap)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(f"unknown argument `{key}`{hint}")
            continue
        if name in ("no_recompute_layers", "pipeline_layers") and isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        if name in _LIST_KEYS and isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        if name == "sharding" and isinstance(value, (int, str)) and str(value).strip().isdigit():
            # `--sharding 4`: a degree; the stage stays as given (default stage1)
            values["sharding_parallel_degree"] = int(value)
            value = values.get("sharding") or "stage1"
        if name == "sharding_stage":
            value, name = f"stage{value}", "sharding"
        try:
            values[name] = _coerce(name, fmap[name], value, where)
        except ConfigError as e:
            problems.append(str(e)[len(where) + 2:] if str(e).startswith(where + ": ") else str(e))
    if len(problems) == 1:
        raise ConfigError(f"{where}: {problems[0]} (`llmpre train --help` lists every accepted key)")
    if problems:
        raise ConfigError(f"{where}: {len(problems)} arguments cannot be used:\n  - "
                          + "\n  - ".join(problems)
                          + "\n(`llmpre train --help` lists every accepted key)")


def _op_names(value) -> list[str]:
    return [w for w in str(value or "").replace(",", " ").split() if w]


def _resolve_strategies(args: TrainingArguments) -> None:
    """PaddleNLP's rule: an evaluation strategy other than no turns do_eval on, and
    do_eval with strategy no evaluates every eval_steps."""
    if args.evaluation_strategy != "no":
        args.do_eval = True
    elif args.do_eval:
        args.evaluation_strategy = "steps"
    if args.load_best_model_at_end and args.metric_for_best_model is None:
        args.metric_for_best_model = "loss"


def _validate(args: TrainingArguments, where: str, notices: list | None = None) -> None:
    fmap = _field_map()
    notices = notices if notices is not None else []
    for name, f in fmap.items():
        choices = f.metadata.get("choices")
        value = getattr(args, name)
        if choices and value not in choices:
            raise ConfigError(f"{where}: `{name}` must be one of {', '.join(map(str, choices))}, "
                              f"got {value!r}")
    if args.bf16 and args.fp16:
        raise ConfigError(f"{where}: set only one of bf16 and fp16")
    if args.max_steps <= 0:
        if args.num_train_epochs is None or args.num_train_epochs <= 0:
            raise ConfigError(f"{where}: set `max_steps` to a positive number of steps, or "
                              "`num_train_epochs` to the passes over the train split to make")
    elif args.num_train_epochs is not None:
        notices.append(f"num_train_epochs = {args.num_train_epochs} is ignored: max_steps = "
                       f"{args.max_steps} > 0 sets the length (as in PaddleNLP)")
    positive = ["per_device_train_batch_size", "per_device_eval_batch_size",
                "gradient_accumulation_steps", "max_seq_length", "logging_steps", "save_steps",
                "eval_iters"]
    for name in positive:
        if getattr(args, name) <= 0:
            raise ConfigError(f"{where}: `{name}` must be positive, got {getattr(args, name)}")
    if args.eval_steps is not None and args.eval_steps <= 0:
        raise ConfigError(f"{where}: `eval_steps` must be positive, got {args.eval_steps}")
    if args.learning_rate < 0 or args.min_learning_rate < 0:
        raise ConfigError(f"{where}: learning rates must be >= 0")
    if args.min_learning_rate > args.learning_rate and args.lr_scheduler_type != "constant":
        raise ConfigError(f"{where}: `min_learning_rate` ({args.min_learning_rate}) exceeds "
                          f"`learning_rate` ({args.learning_rate})")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise ConfigError(f"{where}: `save_total_limit` must be >= 1 (or null for no limit)")
    if args.decay_steps is not None and args.decay_steps <= 0:
        raise ConfigError(f"{where}: `decay_steps` must be positive")
    if args.num_threads is not None and args.num_threads <= 0:
        raise ConfigError(f"{where}: `num_threads` must be positive")
    if args.no_recompute_layers:
        try:
            [int(x) for x in str(args.no_recompute_layers).replace(" ", ",").split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"{where}: `no_recompute_layers` must list layer indices, like 0,1,2") from None
        args.no_recompute_layers = ",".join(x for x in str(args.no_recompute_layers).replace(" ", ",")
                                            .split(",") if x.strip())
    if args.pipeline_layers:       # the counts are checked against the model with the layout (dims)
        args.pipeline_layers = ",".join(str(n) for n in parse_pipeline_layers(args.pipeline_layers, where))
    if args.max_nonfinite_skips < 0:
        raise ConfigError(f"{where}: `max_nonfinite_skips` must be >= 0")
    if not 0 <= args.moe_bias_update_rate < float("inf"):
        raise ConfigError(f"{where}: `moe_bias_update_rate` = {args.moe_bias_update_rate} must be a number >= 0 "
                          "(0 freezes e_score_correction_bias; DeepSeek-V3 used 0.001)")
    if args.scale_loss <= 0:
        raise ConfigError(f"{where}: `scale_loss` must be positive")
    if args.dataloader_num_workers < 0:
        raise ConfigError(f"{where}: `dataloader_num_workers` must be >= 0")
    if args.distributed_timeout is not None and args.distributed_timeout <= 0:
        raise ConfigError(f"{where}: `distributed_timeout` must be a positive number of seconds")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ConfigError(f"{where}: `{name}` must be in [0, 1), got {getattr(args, name)}")
    if args.device is not None and args.device.lower() not in ("cpu", "gpu"):
        raise ConfigError(f"{where}: `device` {args.device!r} is not supported: llmpre runs on cpu or "
                          "gpu (CUDA)")
    _validate_parallel_configs(args, where, notices)
    _validate_best_model(args, where)
    black, white = _op_names(args.amp_custom_black_list), _op_names(args.amp_custom_white_list)
    both = sorted(set(black) & set(white))
    if both:
        raise ConfigError(f"{where}: {', '.join(both)} in both amp_custom_black_list and "
                          "amp_custom_white_list; keep each op in one list")
    if (black or white) and not (args.bf16 or args.fp16):
        notices.append("amp_custom_black_list/amp_custom_white_list have no effect here: the run is "
                       "fp32 (they choose op precision under bf16/fp16 autocast)")


def _validate_parallel_configs(args: TrainingArguments, where: str, notices: list) -> None:
    """Each word of the *_parallel_config strings is known (one notice each) or refused."""
    unknown = []
    for key, known in pk.PARALLEL_CONFIG.items():
        for word in pk.config_words(getattr(args, key)):
            if word in known:
                notices.append(f"{key} '{word}' has no effect here: {known[word]}")
            else:
                unknown.append(f"`{key}` word '{word}' is unknown (known: {', '.join(known)})")
    if unknown:
        raise ConfigError(f"{where}: " + "; ".join(unknown))


def _validate_best_model(args: TrainingArguments, where: str) -> None:
    """PaddleNLP's checks for load_best_model_at_end, and the one metric pretraining has."""
    metric = args.metric_for_best_model
    if metric is not None and metric not in ("loss", "eval_loss"):
        raise ConfigError(
            f"{where}: `metric_for_best_model` {metric!r} is not computed: pretraining evaluation "
            "reports eval_loss only (PaddleNLP's run_pretrain too, whose trainer would fail looking "
            "up eval_" + metric.removeprefix("eval_") + "); use loss")
    if not args.load_best_model_at_end:
        return
    if args.evaluation_strategy != args.save_strategy:
        raise ConfigError(f"{where}: `load_best_model_at_end` needs the evaluation and save strategies "
                          f"to match, got evaluation_strategy {args.evaluation_strategy!r} and "
                          f"save_strategy {args.save_strategy!r}")
    if args.evaluation_strategy == "steps" and args.save_steps % args.effective_eval_steps:
        raise ConfigError(f"{where}: `load_best_model_at_end` needs save_steps ({args.save_steps}) to be a "
                          f"multiple of eval_steps ({args.effective_eval_steps})")


def parse_flag_list(tokens: list[str]) -> dict:
    """``["--learning_rate", "1e-4", "--do-eval", "false", "--x=y"]`` -> dict of strings.
    A flag followed by several words (``--amp_custom_black_list reduce_sum softmax``, as
    PaddleNLP's list arguments are written) keeps them joined by spaces."""
    out: dict = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument `{tok}`: flags look like --key value")
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        else:
            key = tok[2:]
            words = []
            i += 1
            while i < len(tokens) and not tokens[i].startswith("--"):
                words.append(tokens[i])
                i += 1
            value = " ".join(words) if words else "true"   # a bare flag means true: --do-eval
        out[key] = value
    return out


def quickstart_differences(values: dict) -> list[str]:
    """``key value (PaddleNLP: default)`` for each QUICKSTART value in ``values`` that
    differs from PaddleNLP's default."""
    def show(v):
        return "unset" if v is None else v

    return [f"{k} {values[k]} (PaddleNLP: {show(PADDLENLP_DEFAULTS[k])})" for k in QUICKSTART
            if k in values and values[k] == QUICKSTART[k] and values[k] != PADDLENLP_DEFAULTS[k]]


def parse_arguments(json_file: str | None, overrides: dict) -> TrainingArguments:
    """Build the arguments: defaults (PaddleNLP's, or QUICKSTART without a file unless
    the flags hold ``paddlenlp_defaults``), then the JSON file, then command-line
    ``overrides``. The lines to log about them (keys without effect here, QUICKSTART
    values that differ from PaddleNLP's) are left in ``args.notices``."""
    values: dict = {}
    notices: list[str] = []
    overrides = dict(overrides)
    paddlenlp_defaults = False
    for key in list(overrides):
        if _canonical(key) == "paddlenlp_defaults":
            paddlenlp_defaults = _coerce("paddlenlp_defaults", _BOOL_FIELD, overrides.pop(key),
                                         "command line")
    if json_file is None and not paddlenlp_defaults:
        values.update(QUICKSTART)
    elif json_file is not None:
        try:
            with open(json_file, encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{json_file}: no such argument file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{json_file}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{json_file}: must hold one JSON object of argument: value pairs")
        _apply(values, raw, json_file, notices)
    _apply(values, overrides, "command line", notices)
    if json_file is None and not paddlenlp_defaults:
        diffs = quickstart_differences(values)
        if diffs:
            notices.insert(0, "no argument file: quickstart values where PaddleNLP's defaults differ: "
                           + ", ".join(diffs) + " (--paddlenlp-defaults uses PaddleNLP's)")
    args = TrainingArguments(**values)
    _resolve_strategies(args)
    _validate(args, json_file or "command line", notices)
    if args.output_dir is None:
        name = os.path.basename(os.path.normpath(args.model_name_or_path)) or "model"
        args.output_dir = os.path.join("output", name.replace("/", "_"))
    args.given = set(values)      # the keys a file or flag set (not dataclass fields)
    args.notices = notices
    from llmpre.train.lock import check_output_dir

    check_output_dir(args.output_dir)   # before the data cache or a launcher looks at it
    return args


_BOOL_FIELD = types.SimpleNamespace(type="bool")   # what _coerce reads of a field


def argument_help() -> str:
    """Every accepted key with its default and meaning, for ``--help``."""
    lines = []
    for f in fields(TrainingArguments):
        quick = f"  [quickstart: {QUICKSTART[f.name]}]" if f.name in QUICKSTART else ""
        lines.append(f"--{f.name} (default {f.default!r}){quick}\n    {f.metadata['help']}")
    return "\n".join(lines)
