"""HuggingFace checkpoints in and out: ``config.json`` + ``model.safetensors``
(or sharded ``model.safetensors.index.json``).

Names: HF's are llmpre's with a leading ``model.`` (except ``lm_head``).
Layout: HF ``nn.Linear`` weights are ``[out, in]``; Paddle's are ``[in, out]``, so
linear weights are transposed both ways.  Tied models have no ``lm_head.weight``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Union

import paddle
import paddle.nn as nn
from safetensors import safe_open
from safetensors.paddle import save_file

from llmpre.errors import ConfigError
from llmpre.models.config import ModelConfig
from llmpre.models.llama import LlamaForCausalLM

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DTYPES = ("float32", "bfloat16", "float16", "float64")
PathLike = Union[str, os.PathLike]


def hf_name(name: str) -> str:
    """llmpre parameter name -> HF tensor name."""
    return name if name.startswith("lm_head.") else "model." + name


def _linear_weights(model: nn.Layer) -> set:
    """Names of the parameters stored transposed on disk (Linear weights)."""
    return {f"{name}.weight" for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}


def load_hf_config(path: PathLike) -> ModelConfig:
    """ModelConfig from ``path/config.json`` (or a config file), transformers 4 or 5 keys."""
    path = Path(path)
    file = path / CONFIG_NAME if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{file}: no such file; pass a directory holding an HF checkpoint "
                          f"({CONFIG_NAME} + {WEIGHTS_NAME}) or a preset name")
    try:
        d = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{file}: cannot read it as JSON ({e}); it should be an HF config.json") from None
    try:
        return ModelConfig.from_hf_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from None


def _weight_files(path: Path) -> List[Path]:
    """The safetensors files of a checkpoint directory (single file preferred, as HF does)."""
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
        files = [path / f for f in sorted(set(weight_map.values()))]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise ConfigError(f"{index} lists shard(s) that are missing: {', '.join(absent)}; "
                              "download the complete checkpoint")
        return files
    others = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pdparams"))
    hint = f" (found {', '.join(others)}: convert it to safetensors first)" if others else ""
    raise ConfigError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME}{hint}")


def _ignorable(name: str, config: ModelConfig) -> bool:
    """Tensors some HF checkpoints carry that this model does not need."""
    return name.endswith("rotary_emb.inv_freq") or (config.tie_word_embeddings and name == "lm_head.weight")


def load_hf_weights(model: LlamaForCausalLM, path: PathLike) -> None:
    """Copy an HF checkpoint's tensors into ``model`` (cast to each parameter's dtype).

    Checks everything before copying anything: missing, unexpected and
    mis-shaped tensors are all listed, by HF name, in one ConfigError.
    """
    path = Path(path)
    params = {hf_name(n): p for n, p in model.named_parameters()}
    transposed = {hf_name(n) for n in _linear_weights(model)}
    where: Dict[str, Path] = {}
    problems = []
    for file in _weight_files(path):
        with safe_open(str(file), framework="paddle") as f:
            for name in f.keys():
                where[name] = file
                if name not in params:
                    if not _ignorable(name, model.config):
                        problems.append(f"unexpected tensor {name}")
                    continue
                disk = list(f.get_slice(name).get_shape())
                want = list(params[name].shape)
                if name in transposed:
                    want = want[::-1]                        # compare in HF layout [out, in]
                if disk != want:
                    problems.append(f"shape mismatch {name}: checkpoint {disk}, config expects {want}")
    problems += [f"missing tensor {name}" for name in params if name not in where]
    if problems:
        raise ConfigError(f"{path}: checkpoint does not match its config.json ({len(problems)} problem(s)): "
                          + "; ".join(sorted(problems)))
    with paddle.no_grad():
        for file in sorted(set(where[n] for n in params), key=str):
            with safe_open(str(file), framework="paddle") as f:
                for name in (n for n in params if where[n] == file):
                    tensor = f.get_tensor(name)
                    if name in transposed:
                        tensor = tensor.transpose([1, 0])    # HF [out, in] -> Paddle [in, out]
                    params[name].set_value(tensor.astype(params[name].dtype))


def from_pretrained(path: PathLike, dtype: str = "float32") -> LlamaForCausalLM:
    """Build the model described by ``path/config.json`` and load its weights as ``dtype``."""
    if dtype not in DTYPES:
        raise ConfigError(f"from_pretrained(dtype={dtype!r}): use one of {', '.join(DTYPES)}")
    if not Path(path).is_dir():
        raise ConfigError(f"{path}: not a directory; from_pretrained needs a checkpoint directory "
                          f"holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = load_hf_config(path)
    model = LlamaForCausalLM(config)
    if dtype != "float32":
        model.to(dtype=dtype)
    load_hf_weights(model, path)
    return model


def _dtype_name(model: nn.Layer) -> str:
    dtype = next(iter(model.parameters())).dtype
    return str(dtype).replace("paddle.", "")


def save_pretrained(model: LlamaForCausalLM, path: PathLike, style: str = "v4") -> None:
    """Write ``path/config.json`` and ``path/model.safetensors`` in HF layout.

    Each file is written to a temporary name in ``path`` and renamed into place,
    weights first, so a reader never sees a half-written checkpoint.
    ``style`` picks the config keys (see :meth:`ModelConfig.to_hf_dict`).
    """
    path = Path(path)
    config = model.config.to_hf_dict(style=style)  # validates before anything is written
    config["dtype" if style == "v5" else "torch_dtype"] = _dtype_name(model)
    path.mkdir(parents=True, exist_ok=True)
    transposed = _linear_weights(model)
    tensors = {}
    for name, p in model.named_parameters():
        t = p.detach()
        if name in transposed:
            t = t.transpose([1, 0])                          # Paddle [in, out] -> HF [out, in]
        tensors[hf_name(name)] = t.contiguous()
    tmp_weights = path / f".{WEIGHTS_NAME}.tmp{os.getpid()}"
    tmp_config = path / f".{CONFIG_NAME}.tmp{os.getpid()}"
    try:
        save_file(tensors, str(tmp_weights), metadata={"format": "pt"})  # HF loaders require format=pt
        tmp_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_weights, path / WEIGHTS_NAME)
        os.replace(tmp_config, path / CONFIG_NAME)
    finally:
        for tmp in (tmp_weights, tmp_config):
            if tmp.exists():
                tmp.unlink()
