"""Decoder models: config, presets, the Paddle models, HF checkpoints, loss.

    cfg = get_config("llama-tiny")            # preset, HF repo id, or HF checkpoint dir
    model = build_model(cfg, seed=1234)       # random init (PaddleNLP scheme)
    model = from_pretrained("ckpt/")          # config.json + model.safetensors (or sharded)
    save_pretrained(model, "out/")
    logits = model(input_ids)
    loss = causal_lm_loss(logits, labels, aux_loss=model.aux_loss)   # aux_loss: MoE router loss or None

Families: LLaMA 1/2/3.x, Mistral, Mixtral, Qwen v1/1.5/2/2.5 (+MoE), Baichuan/Baichuan2,
Gemma, ChatGLM2/3, Yuan2, DeepSeek-V2/V3 (``llmpre.models.llama``) and GPT-2/3, OPT,
Bloom (``llmpre.models.gpt``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from llmpre.errors import ConfigError
from llmpre.models.config import MLAConfig, ModelConfig, MoEConfig, RopeScaling
from llmpre.models.presets import PRESETS, close_names, get_preset, is_known_name

__all__ = ["ModelConfig", "RopeScaling", "MoEConfig", "MLAConfig", "PRESETS", "get_config", "get_preset",
           "build_model", "from_pretrained", "save_pretrained", "causal_lm_loss", "LlamaForCausalLM",
           "GPTForCausalLM"]


_MODEL_DIR_NEEDS = ("a model directory needs config.json and model.safetensors; "
                    "`llmpre models` lists the presets")


def _looks_like_path(name: str) -> bool:
    """Absolute, ``./`` ``../`` ``~`` or a path separator: meant as a place on disk."""
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    return (os.path.isabs(name) or name.startswith(("~", "." + os.sep, ".." + os.sep))
            or any(s in name for s in seps))


def check_model_dir(path: Union[str, os.PathLike]) -> Path:
    """``path`` (``~`` expanded) if it is a directory holding config.json, else a
    ConfigError that says what is missing."""
    shown = os.fspath(path)
    p = Path(os.path.expanduser(shown))
    if not p.exists():
        close = [] if os.path.isabs(shown) or shown.startswith(("~", ".")) else close_names(shown)
        hint = f"; not a known preset or hub name either: did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"'{shown}': no such directory ({_MODEL_DIR_NEEDS}){hint}")
    if not p.is_dir():
        raise ConfigError(f"'{shown}': not a directory but a file ({_MODEL_DIR_NEEDS})")
    if not (p / "config.json").is_file():
        raise ConfigError(f"'{shown}': directory has no config.json ({_MODEL_DIR_NEEDS})")
    return p


def get_config(name_or_path: Union[str, os.PathLike, ModelConfig]) -> ModelConfig:
    """A ModelConfig from a preset name / HF repo id, or an HF directory (or config.json) on disk."""
    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    name = os.fspath(name_or_path)
    path = Path(os.path.expanduser(name))
    if path.is_file() and path.suffix == ".json":
        from llmpre.models.hf import load_hf_config

        return load_hf_config(path)
    meant_as_path = not isinstance(name_or_path, str) or _looks_like_path(name)
    if path.is_dir() or (meant_as_path and not is_known_name(name)):
        from llmpre.models.hf import load_hf_config

        return load_hf_config(check_model_dir(name))
    return get_preset(name)


def build_model(config_or_name: Union[str, os.PathLike, ModelConfig], seed: Optional[int] = None, ops=None,
                lazy: bool = False, dtype: str = "float32"):
    """A randomly initialised model of the config's family (:class:`LlamaForCausalLM` or
    :class:`GPTForCausalLM`).  ``ops`` is a :func:`llmpre.ops.select_ops` namespace (default:
    the reference ops).

    Values follow :mod:`llmpre.models.init`: each element a function of ``(seed, parameter
    name, index)``; ``seed`` None draws one from Paddle's generator. ``lazy`` leaves the
    parameters unallocated (each knows how to produce any slice of itself: the parallel
    layers take only their shard, ``llmpre.models.init.materialize`` fills the rest);
    ``dtype`` is the dtype they are created in."""
    import paddle

    from llmpre.models import init
    from llmpre.models.hf import model_class

    config = get_config(config_or_name)
    if seed is None:
        seed = int(paddle.randint(0, 2 ** 31 - 1, [1]).item())
    else:
        paddle.seed(seed)
    with init.deferred():
        model = model_class(config)(config, ops=ops)
    init.plan(model, config, seed, dtype)
    if not lazy:
        init.materialize(model)
    return model


def from_pretrained(path: Union[str, os.PathLike], dtype: str = "float32", ops=None):
    """Load an HF checkpoint directory of any supported family (single or sharded safetensors);
    ``ops`` as for :func:`build_model`."""
    from llmpre.models.hf import from_pretrained as _from_pretrained

    return _from_pretrained(check_model_dir(path), dtype=dtype, ops=ops)


def save_pretrained(model, path: Union[str, os.PathLike], style: str = "v4",
                    max_shard_bytes: Optional[int] = None, metadata: Optional[dict] = None) -> None:
    """Write ``model`` as an HF checkpoint directory (config.json + model.safetensors, or
    shards + index when the weights exceed ``max_shard_bytes``); ``metadata`` (str -> str)
    goes into the weights files."""
    from llmpre.models.hf import save_pretrained as _save_pretrained

    _save_pretrained(model, path, style=style, max_shard_bytes=max_shard_bytes, metadata=metadata)


def causal_lm_loss(logits, labels, ignore_index: int = -100, aux_loss=None):
    """Mean cross-entropy over non-ignored, already-shifted labels, plus ``aux_loss``
    (``model.aux_loss``: the MoE router loss with its coefficient) when given
    (see :mod:`llmpre.models.loss`)."""
    from llmpre.models.loss import causal_lm_loss as _loss

    return _loss(logits, labels, ignore_index=ignore_index, aux_loss=aux_loss)


def __getattr__(name):  # lazy: importing llmpre.models must not import Paddle
    if name == "LlamaForCausalLM":
        from llmpre.models.llama import LlamaForCausalLM

        return LlamaForCausalLM
    if name == "GPTForCausalLM":
        from llmpre.models.gpt import GPTForCausalLM

        return GPTForCausalLM
    raise AttributeError(f"module 'llmpre.models' has no attribute {name!r}")
