"""``llmpre plan`` arguments: PaddleNLP's JSON keys and ``llmpre train``'s flags,
read into a :class:`~llmpre.plan.settings.PlanSettings`.

A JSON argument file may hold any key ``llmpre train`` accepts (its
``TrainingArguments`` fields, their aliases, and the PaddleNLP keys it accepts
as no-ops); the planner reads the ones that change memory and ignores the
rest.  Any other key is an error naming the file.  Flags override the file.

Two spellings differ from PaddleNLP's files, as the command line of the planner
asks for a degree where PaddleNLP asks for a stage:

* ``--sharding N`` is the sharding degree (PaddleNLP's ``sharding_parallel_degree``);
  ``--sharding stage2`` (a word) is PaddleNLP's stage, as in a file.
* ``--stage K`` sets the stage directly.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Optional, Tuple

from llmpre.errors import ConfigError
from llmpre.parallel.dims import parse_pipeline_layers
from llmpre.plan.settings import PlanSettings

# Short flags of the planner -> the PaddleNLP key they stand for.
FLAG_ALIASES = {
    "tp": "tensor_parallel_degree",
    "pp": "pipeline_parallel_degree",
    "vpp": "virtual_pp_degree",
    "ep": "expert_parallel_degree",
    "micro_batch": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "flash_attention": "use_flash_attention",
    "fused_rms_norm": "use_fused_rms_norm",
    "fused_rope": "use_fused_rope",
}
# Options of the planner alone (flags only; not training keys).
PLAN_ONLY = ("stage", "dp", "gpus", "gpu_memory", "json")

_BOOL = ("sequence_parallel", "recompute", "bf16", "fp16", "amp_master_grad", "use_flash_attention",
         "use_fused_rms_norm", "use_fused_rope", "fuse_attention_qkv", "fuse_attention_ffn", "json")
_INT = ("max_seq_length", "per_device_train_batch_size", "gradient_accumulation_steps",
        "tensor_parallel_degree", "pipeline_parallel_degree", "virtual_pp_degree",
        "sharding_parallel_degree", "num_hidden_layers", "stage", "dp", "gpus", "expert_parallel_degree",
        "sep_parallel_degree", "context_parallel_degree")
_STR = ("model_name_or_path", "recompute_granularity", "fp16_opt_level")
READ_KEYS = set(_BOOL + _INT + _STR) | {"sharding", "no_recompute_layers", "pipeline_layers", "gpu_memory"}


def training_keys() -> Dict[str, str]:
    """Every key ``llmpre train`` accepts, mapped to its canonical name."""
    from llmpre.train import args as targs

    keys = {f.name: f.name for f in dataclasses.fields(targs.TrainingArguments)}
    keys.update({k: k for k in getattr(targs, "ACCEPTED_NOOP", {})})
    keys.update(getattr(targs, "ALIASES", {}))
    return keys


def _canonical(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def _coerce(key: str, value: Any, where: str):
    if key in _BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: `{key}` must be true or false, got {value!r}")
    if key in _INT:
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: `{key}` must be an integer, got {value!r}") from None
    if key == "gpu_memory":
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: `--gpu-memory` must be a number of GiB, e.g. 80, got {value!r}") from None
        if not v > 0:
            raise ConfigError(f"{where}: `--gpu-memory` must be positive, got {value!r}")
        return v
    if key == "no_recompute_layers":
        if value is None:
            return ()
        items = value.split(",") if isinstance(value, str) else value
        try:
            return tuple(int(x) for x in items if str(x).strip() != "")
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: `no_recompute_layers` must be a list of layer indices, "
                              f"got {value!r}") from None
    if key == "pipeline_layers":
        return parse_pipeline_layers(value, where)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: `{key}` must be a string, got {value!r}")
    return value


def _read_file(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such argument file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold one JSON object of argument: value pairs")
    known = training_keys()
    out = {}
    for key, value in raw.items():
        name = _canonical(key)
        if name not in known:
            raise ConfigError(f"{path}: `{key}` is not a training argument llmpre knows, so the planner "
                              "will not guess what it means; remove it (`llmpre train --help` lists the keys)")
        name = known[name]
        if name in READ_KEYS:
            if name == "sharding" and not isinstance(value, str):
                raise ConfigError(f"{path}: \"sharding\" is the stage in a PaddleNLP file (\"stage1\", "
                                  "\"stage2\", \"stage3\" or \"\"); the degree is sharding_parallel_degree")
            out[name] = _coerce(name, value, path)
    return out


def _read_flags(flags: Dict[str, str]) -> Dict[str, Any]:
    known = training_keys()
    out = {}
    for key, value in flags.items():
        name = _canonical(key)
        name = FLAG_ALIASES.get(name, name)
        if name not in PLAN_ONLY:
            if name not in known:
                raise ConfigError(f"command line: unknown option `--{key}` (`llmpre plan --help` lists them)")
            name = known[name]
            if name not in READ_KEYS:
                continue        # a training key that does not change memory (as in a file)
        if name == "sharding":
            text = str(value).strip()
            if text.lstrip("-").isdigit():
                out["sharding_parallel_degree"] = _coerce("sharding_parallel_degree", text, "command line")
                continue
        out[name] = _coerce(name, value, "command line")
    return out


def _stage_of(text: str, where: str) -> int:
    words = text.split()
    if not words:
        return 0
    if "offload" in words:
        raise ConfigError(f"{where}: sharding offload is not modelled by the planner; remove \"offload\"")
    if len(words) > 1 or words[0] not in ("stage1", "stage2", "stage3"):
        raise ConfigError(f"{where}: sharding must be \"stage1\", \"stage2\", \"stage3\" or \"\", got {text!r}")
    return int(words[0][-1])


def _positive_or_off(value: int) -> int:
    """PaddleNLP spells 'no parallelism' as -1 or 0."""
    return 1 if value is None or value <= 0 else value


def parse_plan_arguments(json_file: Optional[str], flags: Dict[str, str]) -> Tuple[PlanSettings, dict]:
    """Settings from a PaddleNLP argument file (optional) and flags (which win).
    Returns ``(settings, options)``; options hold ``gpu_memory`` (GiB or None) and ``json``."""
    from llmpre.models import get_config, hub
    from llmpre.parallel.dims import split_world
    from llmpre.train.args import TrainingArguments

    from_file = _read_file(json_file) if json_file else {}
    from_flags = _read_flags(flags)
    values = {**from_file, **from_flags}
    sources = {k: ("flag" if k in from_flags else "file") for k in values}
    where = json_file or "command line"

    def get(key, default):
        if key in values:
            return values[key]
        sources[key] = "default"
        return default

    if json_file is None:
        missing = [flag for flag, key in (("--model", "model_name_or_path"), ("--seq-length", "max_seq_length"),
                                          ("--micro-batch", "per_device_train_batch_size")) if key not in values]
        if missing:
            raise ConfigError(f"command line: give {', '.join(missing)} (or a PaddleNLP argument file)")
    defaults = TrainingArguments()
    name = get("model_name_or_path", defaults.model_name_or_path)
    model = get_config(hub.model_source(str(name), weights=False))   # a hub name: its cached config
    layers = get("num_hidden_layers", None)
    if layers:
        model = model.replace(num_hidden_layers=layers)

    tp = _positive_or_off(get("tensor_parallel_degree", -1))
    pp = _positive_or_off(get("pipeline_parallel_degree", -1))
    sep = _positive_or_off(get("sep_parallel_degree", -1))
    cp = _positive_or_off(get("context_parallel_degree", -1))
    vpp = _positive_or_off(get("virtual_pp_degree", 1))
    stage = values["stage"] if "stage" in values else _stage_of(get("sharding", ""), where)
    degree = get("sharding_parallel_degree", -1)
    gpus = values.get("gpus")
    dp = values.get("dp")
    if stage == 0 and degree > 1:
        raise ConfigError(f"{where}: a sharding degree of {degree} needs a sharding stage: add --stage 1/2/3 "
                          "(or \"sharding\": \"stage1\" in the file)")
    if stage > 0 and degree <= 0 and gpus is None:
        raise ConfigError(f"{where}: sharding_parallel_degree is -1 (all remaining GPUs): give --gpus N "
                          "(the world size) or the degree with --sharding N")
    known = degree if degree > 0 else 1 if stage == 0 else None
    if dp is not None and gpus is not None and known and dp * known * tp * pp * sep * cp != gpus:
        raise ConfigError(f"{where}: --gpus {gpus} but dp*sharding*tp*pp*sep*cp = {dp}*{known}*{tp}*{pp}*{sep}*{cp}"
                          f" = {dp * known * tp * pp * sep * cp}; change one of them")
    try:
        dp, degree = split_world(gpus, tp, pp, degree, sharded=stage > 0, dp=dp, seq=sep * cp)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" + (" (--gpus is the world size)" if gpus else "")) from None

    bf16, fp16 = get("bf16", False), get("fp16", False)
    if bf16 and fp16:
        raise ConfigError(f"{where}: set only one of bf16 and fp16")
    dtype = "bfloat16" if bf16 else "float16" if fp16 else "float32"
    settings = PlanSettings(
        model=model, model_name=str(name),
        seq_length=get("max_seq_length", defaults.max_seq_length),
        micro_batch=get("per_device_train_batch_size", defaults.per_device_train_batch_size),
        grad_accum=get("gradient_accumulation_steps", defaults.gradient_accumulation_steps),
        tp=tp, pp=pp, vpp=vpp, pipeline_layers=get("pipeline_layers", ()), dp=dp, sharding=degree, stage=stage,
        ep=_positive_or_off(get("expert_parallel_degree", -1)), sep=sep, cp=cp,
        sequence_parallel=get("sequence_parallel", False),
        recompute=get("recompute", False), granularity=get("recompute_granularity", "full"),
        no_recompute_layers=get("no_recompute_layers", ()),
        dtype=dtype, opt_level=get("fp16_opt_level", "O1"), amp_master_grad=get("amp_master_grad", False),
        flash_attention=get("use_flash_attention", False), fused_rms_norm=get("use_fused_rms_norm", False),
        fused_rope=get("use_fused_rope", False), fuse_attention_qkv=get("fuse_attention_qkv", False),
        fuse_attention_ffn=get("fuse_attention_ffn", False), sources=sources)
    options = {"gpu_memory": values.get("gpu_memory"), "json": bool(values.get("json", False))}
    return settings, options
