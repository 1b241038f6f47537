"""HuggingFace checkpoints in and out: ``config.json`` + ``model.safetensors``
(or sharded ``model.safetensors.index.json``), for every ``model_type``.

Names and layouts come from :mod:`llmpre.models.hf_names` (fused q/k/v and
gate/up tensors are split on load and fused again on save, Linear weights are
transposed both ways), config keys from :mod:`llmpre.models.hf_config`.
A round trip ``save_pretrained`` -> ``from_pretrained`` is bit-identical.

Directories PaddleNLP saved (its config.json keys, ``format: np`` safetensors or
``.pdparams``) are read through :mod:`llmpre.models.paddlenlp_format` by the same calls.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

import paddle
import paddle.nn as nn
from safetensors import safe_open

from llmpre.errors import ConfigError
from llmpre.models.config import ModelConfig
from llmpre.models.hf_config import from_hf_dict
from llmpre.models.hf_names import IGNORABLE_SUFFIXES, checkpoint_rules, from_hf, hf_shapes, to_hf
from llmpre.models.hf_stream import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME, index_shards, save_streamed

DTYPES = ("float32", "bfloat16", "float16", "float64")
PathLike = Union[str, os.PathLike]


def model_class(config: ModelConfig):
    """The Paddle model class that builds ``config``."""
    if config.is_gpt:
        from llmpre.models.gpt import GPTForCausalLM

        return GPTForCausalLM
    if config.glm is not None:
        from llmpre.models.glm import GLMForCausalLM

        return GLMForCausalLM
    from llmpre.models.llama import LlamaForCausalLM

    return LlamaForCausalLM


def load_hf_config(path: PathLike) -> ModelConfig:
    """ModelConfig from ``path/config.json`` (or a config file): transformers 4 or 5 keys, or
    PaddleNLP's (:mod:`llmpre.models.paddlenlp_names`) when PaddleNLP wrote it."""
    from llmpre.models.paddlenlp_names import config_from_paddlenlp, is_paddlenlp_config

    path = Path(path)
    file = path / CONFIG_NAME if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{file}: no such file; pass a directory holding an HF or PaddleNLP checkpoint "
                          f"({CONFIG_NAME} + {WEIGHTS_NAME}) or a preset name")
    try:
        d = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{file}: cannot read it as JSON ({e}); it should be an HF config.json") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{file}: holds a JSON {type(d).__name__}, not a config object")
    try:
        config = config_from_paddlenlp(d) if is_paddlenlp_config(d) else from_hf_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from None
    return _without_absent_mtp(file.parent, config) if config.num_nextn_predict_layers else config


def _without_absent_mtp(path: Path, config: ModelConfig) -> ModelConfig:
    """A checkpoint whose weights hold no multi-token-prediction module (transformers saves
    DeepSeek-V3 without them) is the model without MTP, as transformers loads it; a
    directory with a config alone (a model to initialise) keeps what its config says."""
    try:
        files = _weight_files(path)
    except ConfigError:
        return config
    names = set()
    for file in files:
        with safe_open(str(file), framework="np") as f:
            names.update(f.keys())
    if f"model.layers.{config.num_hidden_layers}.eh_proj.weight" in names:
        return config
    import logging

    logging.getLogger("llmpre").info(
        "%s: num_nextn_predict_layers=%d but the weights hold no multi-token-prediction module: "
        "loaded without it", path, config.num_nextn_predict_layers)
    return config.replace(num_nextn_predict_layers=0)


def is_paddlenlp(path: PathLike) -> bool:
    """Whether directory ``path`` holds weights as PaddleNLP saves them."""
    from llmpre.models.paddlenlp_format import is_paddlenlp_dir

    return is_paddlenlp_dir(path)


def _weight_files(path: Path) -> List[Path]:
    """The safetensors files of a checkpoint directory (single file preferred, as HF does)."""
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    index = path / INDEX_NAME
    if index.is_file():
        return index_shards(path, index, "safetensors index", "download the complete checkpoint")
    others = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pdparams"))
    hint = (f" (found {', '.join(others)}: PyTorch .bin files and .pdparams other than PaddleNLP's "
            "model_state.pdparams / its index are not read; convert them to safetensors)") if others else ""
    raise ConfigError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME}{hint}")


def _ignorable(name: str, config: ModelConfig, deeper_ok: bool = False) -> bool:
    """Tensors some HF checkpoints carry that this model does not need: rotary caches,
    GPT-2 mask buffers, a tied model's copy of ``lm_head``, DeepSeek-V3's
    multi-token-prediction layer (layers past ``num_hidden_layers``), and with ``deeper_ok``
    every layer past the model's depth."""
    from llmpre.models.paddlenlp_names import layer_index

    if name.endswith(IGNORABLE_SUFFIXES):
        return True
    if config.tie_word_embeddings and name == "lm_head.weight":
        return True
    if deeper_ok or (config.model_type == "deepseek_v3" and name.startswith("model.layers.")):
        return (layer_index(name) or 0) >= config.num_hidden_layers
    return False


def check_checkpoint(model: nn.Layer, path: PathLike, deeper_ok: bool = False):
    """``(rules, where)``: the layout rules of ``model`` and the file holding each HF tensor,
    after checking the checkpoint's headers (no tensor data is read) against the model's
    parameter shapes: missing, unexpected and mis-shaped tensors are all listed, by HF name,
    in one ConfigError. ``deeper_ok``: the checkpoint's layers past the model's depth are
    skipped (its first ``num_hidden_layers`` layers are loaded)."""
    path = Path(path)
    config = model.config
    params = dict(model.named_parameters())
    rules = checkpoint_rules(config)
    expected: Dict[str, List[int]] = {}
    for rule in rules:
        for name, shape in zip(rule.hf, hf_shapes(rule, [params[o].shape for o in rule.ours])):
            expected[name] = shape
    where: Dict[str, Path] = {}
    problems = []
    for file in _weight_files(path):
        with safe_open(str(file), framework="paddle") as f:
            for name in f.keys():
                where[name] = file
                if name not in expected:
                    if not _ignorable(name, config, deeper_ok):
                        problems.append(f"unexpected tensor {name}")
                    continue
                disk = list(f.get_slice(name).get_shape())
                if disk != expected[name]:
                    problems.append(f"shape mismatch {name}: checkpoint {disk}, config expects {expected[name]}")
    problems += [f"missing tensor {name}" for name in expected if name not in where]
    if problems:
        raise ConfigError(f"{path}: checkpoint does not match its config.json ({len(problems)} problem(s)): "
                          + "; ".join(sorted(problems)))
    return rules, {name: where[name] for name in expected}


def load_hf_weights(model: nn.Layer, path: PathLike) -> None:
    """Copy an HF checkpoint's tensors into ``model`` (cast to each parameter's dtype).

    Checks everything before copying anything (:func:`check_checkpoint`). A rank of a
    parallel run reads only its own slices instead: :mod:`llmpre.models.hf_load`.
    """
    rules, where = check_checkpoint(model, path)
    config = model.config
    params = dict(model.named_parameters())
    with contextlib.ExitStack() as stack, paddle.no_grad():
        handles = {file: stack.enter_context(safe_open(str(file), framework="paddle"))
                   for file in set(where.values())}
        for rule in rules:
            hf = [handles[where[n]].get_tensor(n) for n in rule.hf]
            for name, value in zip(rule.ours, from_hf(rule, hf, config)):
                params[name].set_value(value.astype(params[name].dtype))


def build(config: ModelConfig, ops=None):
    """The model of ``config`` with its parameters unallocated (:mod:`llmpre.models.init`),
    for a loader to fill; then :func:`finish`."""
    from llmpre.models import init

    with init.deferred():
        return model_class(config)(config, ops=ops)


def finish(model, dtype: str = "float32"):
    """After a loader filled a deferred model: anything it did not fill (none, for a complete
    checkpoint) gets the scheme's values, then everything is cast to ``dtype``."""
    from llmpre.models import init

    if any(init.is_lazy(p) for p in model.parameters()):
        init.plan(model, model.config, int(paddle.randint(0, 2 ** 31 - 1, [1]).item()))
        init.materialize(model)
    if dtype != "float32":
        model.to(dtype=dtype)
    return model


def from_pretrained(path: PathLike, dtype: str = "float32", ops=None):
    """Build the model described by ``path/config.json`` and load its weights as ``dtype``;
    ``ops`` is a :func:`llmpre.ops.select_ops` namespace (default: the reference ops)."""
    if dtype not in DTYPES:
        raise ConfigError(f"from_pretrained(dtype={dtype!r}): use one of {', '.join(DTYPES)}")
    if not Path(path).is_dir():
        raise ConfigError(f"{path}: not a directory; from_pretrained needs a checkpoint directory "
                          f"holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    model = build(load_hf_config(path), ops=ops)
    if is_paddlenlp(path):          # PaddleNLP's names, layouts and files
        from llmpre.models.paddlenlp_format import load_paddlenlp_weights

        load_paddlenlp_weights(model, path)
    else:
        load_hf_weights(model, path)
    return finish(model, dtype)


def weights_metadata(path: PathLike) -> Optional[Dict[str, str]]:
    """The metadata of the weights saved in directory ``path`` (its single file or first
    shard), or None when there are none or they cannot be read."""
    path = Path(path)
    files = [path / WEIGHTS_NAME] if (path / WEIGHTS_NAME).is_file() else sorted(path.glob("model-*-of-*.safetensors"))
    if not files or not (path / CONFIG_NAME).is_file():
        return None
    try:
        with safe_open(str(files[0]), framework="np") as fh:
            return dict(fh.metadata() or {})
    except Exception:   # a damaged or foreign file: treated as absent, it is rewritten
        return None


def _dtype_name(model: nn.Layer) -> str:
    dtype = next(iter(model.parameters())).dtype
    return str(dtype).replace("paddle.", "")


def hf_state_dict(model: nn.Layer) -> Dict[str, paddle.Tensor]:
    """The model's parameters under HF names and layouts."""
    params = dict(model.named_parameters())
    out = {}
    for rule in checkpoint_rules(model.config):
        for name, value in zip(rule.hf, to_hf(rule, [params[o].detach() for o in rule.ours], model.config)):
            out[name] = value.contiguous()
    return out


def save_pretrained(model: nn.Layer, path: PathLike, style: str = "v4", max_shard_bytes: Optional[int] = None,
                    metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``path/config.json`` and the weights in HF layout: ``model.safetensors``, or
    ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json`` when the
    weights exceed ``max_shard_bytes``.

    Each file is written to a temporary name in ``path`` and renamed into place,
    weights first and config last, so a reader never sees a half-written checkpoint.
    ``style`` picks the config keys (see :func:`llmpre.models.hf_config.to_hf_dict`); ``metadata``
    (strings) is stored in every weights file (see :func:`weights_metadata`).
    """
    params = dict(model.named_parameters())
    save_streamed(model.config, {n: list(p.shape) for n, p in params.items()}, lambda n: params[n],
                  path, dtype=_dtype_name(model), style=style, max_shard_bytes=max_shard_bytes, metadata=metadata)
