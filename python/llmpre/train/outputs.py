"""What a finished run leaves beside its weights, in PaddleNLP's formats.

PaddleNLP's ``run_pretrain.py`` ends training with ``log_metrics("train")``,
``save_metrics("train")`` and ``save_state()`` (and ``log_metrics("test")`` after
``do_predict``); this module writes the same things:

- the metrics block (``***** train metrics *****``, one sorted ``  key = value``
  line per metric, keys padded to the longest, values right-aligned; runtimes
  as ``H:MM:SS.cc``, other floats to 4 decimals, ``*_mem_*`` values in MB);
- ``<split>_results.json`` (indent 4, sorted keys) and ``all_results.json``
  (the same, merged into what the file already held);
- a top-level ``trainer_state.json`` (indent 2, sorted keys, PaddleNLP's
  ``TrainerState`` fields, ``log_history`` rebuilt from metrics.jsonl so a
  resumed run's history covers the whole run).

Each file is written to a temporary file and renamed into place. The
``checkpoint-N/trainer_state.json`` files are llmpre's own checkpoint state and
unrelated; resuming only looks inside ``checkpoint-N`` directories.

``config_text`` is the "Final pre-training config" text: the config class name,
then the config as indented JSON with sorted keys (PaddleNLP prints its
``PretrainedConfig`` this way).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os

from llmpre.train.metrics import LOG_KEYS

logger = logging.getLogger("llmpre")

# PaddleNLP's config class for each llmpre model_type (the class name PaddleNLP,
# or transformers where PaddleNLP has none, prints before the config).
CONFIG_CLASSES = {
    "llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen": "QWenConfig",
    "baichuan": "BaichuanConfig", "gemma": "GemmaConfig", "chatglm": "ChatGLMConfig",
    "yuan": "YuanConfig", "mixtral": "MixtralConfig", "qwen2_moe": "Qwen2MoeConfig",
    "deepseek_v2": "DeepseekV2Config", "deepseek_v3": "DeepseekV3Config", "gpt2": "GPT2Config",
    "opt": "OPTConfig", "bloom": "BloomConfig",
}


def config_text(hf_dict: dict) -> str:
    """``LlamaConfig {`` + the config as JSON (indent 2, sorted keys) + ``}``."""
    name = CONFIG_CLASSES.get(hf_dict.get("model_type"), "PretrainedConfig")
    return f"{name} {json.dumps(hf_dict, indent=2, sort_keys=True, ensure_ascii=False)}\n"


def clock(seconds: float) -> str:
    """``H:MM:SS.cc``: whole seconds as a timedelta, then hundredths (truncated)."""
    hundredths = int(abs(seconds - int(seconds)) * 100)
    return f"{datetime.timedelta(seconds=int(seconds))}.{hundredths:02d}"


def formatted(metrics: dict) -> dict:
    """The values as the metrics block shows them."""
    out = {}
    for key, value in metrics.items():
        if "_mem_" in key and isinstance(value, int):
            out[key] = f"{value >> 20}MB"
        elif "_runtime" in key and isinstance(value, (int, float)):
            out[key] = clock(value)
        elif key == "total_flos" and isinstance(value, (int, float)):
            out[key] = f"{int(value) >> 30}GF"
        elif isinstance(value, float):
            out[key] = round(value, 4)
        else:
            out[key] = value
    return out


def metrics_block(split: str, metrics: dict) -> list[str]:
    """``***** <split> metrics *****`` and one ``  key = value`` line per metric
    (sorted by key; keys left-aligned, values right-aligned to the widest)."""
    shown = formatted(metrics)
    lines = [f"***** {split} metrics *****"]
    if not shown:
        return lines
    key_width = max(len(str(k)) for k in shown)
    value_width = max(len(str(v)) for v in shown.values())
    for key in sorted(shown):
        lines.append(f"  {key:<{key_width}} = {str(shown[key]):>{value_width}}")
    return lines


def log_metrics(split: str, metrics: dict) -> None:
    for line in metrics_block(split, metrics):
        logger.info(line)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory
    (named ``.<name>.tmp<pid>``: a dead writer's leftover is recognisable)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_safe(value):
    """``value`` with every non-finite float replaced by None (JSON has no nan/inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def save_metrics(output_dir: str, split: str, metrics: dict) -> None:
    """``<split>_results.json`` and ``all_results.json`` (merged with the file's
    previous content, as PaddleNLP's ``save_metrics(combined=True)``); a
    non-finite value is written as null."""
    metrics = json_safe(metrics)
    write_text(os.path.join(output_dir, f"{split}_results.json"),
               json.dumps(metrics, indent=4, sort_keys=True))
    path = os.path.join(output_dir, "all_results.json")
    combined = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as fh:
                combined = json.load(fh)
            if not isinstance(combined, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            logger.warning("%s is unreadable (%s): writing it anew with this run's results", path, e)
            combined = {}
    combined.update(metrics)
    write_text(path, json.dumps(combined, indent=4, sort_keys=True))


def log_history(metrics: dict[str, list[dict]], last_step: int) -> list[dict]:
    """PaddleNLP's ``log_history`` from metrics.jsonl entries (as read by
    :func:`llmpre.train.monitor.read_metrics`): every logged interval with the
    log line's keys and every evaluation, each with its ``step``, in step order
    (evaluations after the interval of the same step), up to ``last_step``."""
    rows = []
    for entry in metrics.get("train", []):
        row = {k: v for k, v in entry.items() if k in LOG_KEYS}
        rows.append((entry["step"], 0, {**row, "step": entry["step"]}))
    for entry in metrics.get("eval", []):
        row = {k: v for k, v in entry.items() if k.startswith("eval_") or k == "progress_or_epoch"}
        rows.append((entry["step"], 1, {**row, "step": entry["step"]}))
    return [row for step, _, row in sorted(rows, key=lambda r: r[:2]) if step <= last_step]


def trainer_state(*, global_step: int, max_steps: int, epoch: float, num_train_epochs: int,
                  history: list[dict], best_metric: float | None = None,
                  best_model_checkpoint: str | None = None) -> dict:
    """PaddleNLP's ``TrainerState`` fields (the best eval loss and its checkpoint
    under ``load_best_model_at_end``; PaddleNLP 2.8.1 leaves ``total_flos`` at 0)."""
    return {"best_metric": best_metric, "best_model_checkpoint": best_model_checkpoint, "epoch": epoch,
            "global_step": global_step, "is_local_process_zero": True, "is_world_process_zero": True,
            "log_history": history, "max_steps": max_steps, "num_train_epochs": num_train_epochs,
            "total_flos": 0, "trial_name": None, "trial_params": None}


def save_state(output_dir: str, state: dict) -> None:
    write_text(os.path.join(output_dir, "trainer_state.json"),
               json.dumps(json_safe(state), indent=2, sort_keys=True) + "\n")


def num_train_epochs(max_steps: int, train_samples: int, batch_size: int, data_world: int,
                     accumulation: int) -> int:
    """How PaddleNLP counts epochs for ``max_steps`` updates over a train dataset of
    ``train_samples``: epochs of :func:`llmpre.train.cadence.update_steps_per_epoch`
    updates, rounded up."""
    from llmpre.train.cadence import update_steps_per_epoch

    per_epoch = update_steps_per_epoch(train_samples, batch_size, data_world, accumulation)
    return math.ceil(max_steps / per_epoch)
