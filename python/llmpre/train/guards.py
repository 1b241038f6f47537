"""Safety checks around a run: the run directory's identity and non-finite steps.

Run identity: the first start writes ``<output_dir>/run_config.json`` with
everything that shapes the training trajectory (model config, data, batch,
optimizer and schedule, precision). A later start in the same directory — a
resume — must match it; a different configuration is refused (naming the
differing keys) unless ``overwrite_output_dir`` is set, which clears the old
run's checkpoints and metrics. Changing only ``max_steps`` (to train longer)
is allowed when ``decay_steps`` pins the schedule; logging, eval and save
frequencies and the thread count may always change.
"""

from __future__ import annotations

import json
import os
import shutil

from llmpre.errors import LlmpreError

RUN_CONFIG = "run_config.json"

# Training arguments that change what is computed (the rest only change how
# often something is logged, evaluated or saved, or how fast it runs).
TRAJECTORY_KEYS = (
    "model_name_or_path", "continue_training", "num_hidden_layers", "tokenizer_name_or_path",
    "input_dir", "split", "max_seq_length", "per_device_train_batch_size",
    "gradient_accumulation_steps", "learning_rate", "min_learning_rate", "warmup_steps",
    "warmup_ratio", "lr_scheduler_type", "decay_steps", "weight_decay", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_grad_norm", "seed", "bf16", "fp16", "fp16_opt_level", "scale_loss",
)


class NonFiniteError(LlmpreError):
    """Raised when a step's loss or gradient norm is inf/nan and no skip is allowed."""


class RunMismatchError(LlmpreError):
    pass


# Keys that shape the trajectory only in some runs: recorded only then, so the
# identity of runs they cannot affect stays as it was.
GPT_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob")   # GPT models only
AMP_LIST_KEYS = ("amp_custom_black_list", "amp_custom_white_list")           # when set


def run_identity(args, model_config: dict) -> dict:
    values = {k: getattr(args, k) for k in TRAJECTORY_KEYS if hasattr(args, k)}
    if model_config.get("model_type") == "gpt2":
        values.update({k: getattr(args, k) for k in GPT_DROPOUT_KEYS if hasattr(args, k)})
    values.update({k: getattr(args, k) for k in AMP_LIST_KEYS if getattr(args, k, None)})
    if not args.decay_steps:
        values["decay_steps"] = args.max_steps  # the schedule depends on max_steps then
    return {"training": values, "model": model_config}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def check_run_directory(output_dir: str, identity: dict, overwrite: bool, has_checkpoints: bool) -> None:
    """Refuse a run directory that belongs to another configuration; clear it on overwrite."""
    path = os.path.join(output_dir, RUN_CONFIG)
    if overwrite:
        clear_run_directory(output_dir)
    elif os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        diffs = _differences(json.loads(json.dumps(old)), json.loads(json.dumps(identity)))
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
            raise RunMismatchError(
                f"{output_dir} belongs to a run with a different configuration ({shown}); use "
                "another output_dir, or set overwrite_output_dir to discard that run")
    elif has_checkpoints:
        raise RunMismatchError(
            f"{output_dir} has checkpoints but no {RUN_CONFIG}, so llmpre cannot tell whether they "
            "belong to this configuration; use another output_dir or set overwrite_output_dir")
    write_identity(output_dir, identity)


def write_identity(output_dir: str, identity: dict) -> None:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RUN_CONFIG)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(identity, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def replace_identity(output_dir: str, identity: dict) -> list[str]:
    """Record ``identity`` as the run's (an explicit resume with changed settings);
    returns the differences from the previous one."""
    path = os.path.join(output_dir, RUN_CONFIG)
    diffs = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            diffs = _differences(json.load(fh), json.loads(json.dumps(identity)))
    write_identity(output_dir, identity)
    return diffs


def clear_run_directory(output_dir: str) -> list[str]:
    """Remove a previous run's checkpoints, metrics and identity from ``output_dir``."""
    removed = []
    if not os.path.isdir(output_dir):
        return removed
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(("checkpoint-", ".checkpoint-")) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
        elif name in ("metrics.jsonl", RUN_CONFIG):
            os.unlink(path)
            removed.append(name)
    return removed
