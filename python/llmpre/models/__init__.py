"""LLaMA-family models: config, presets, the Paddle decoder, HF checkpoints, loss.

    cfg = get_config("llama-tiny")            # preset, HF repo id, or HF checkpoint dir
    model = build_model(cfg, seed=1234)       # random init (PaddleNLP scheme)
    model = from_pretrained("ckpt/")          # config.json + model.safetensors
    save_pretrained(model, "out/")
    loss = causal_lm_loss(model(input_ids), labels)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from llmpre.models.config import ModelConfig, RopeScaling
from llmpre.models.presets import PRESETS, get_preset

__all__ = ["ModelConfig", "RopeScaling", "PRESETS", "get_config", "get_preset", "build_model",
           "from_pretrained", "save_pretrained", "causal_lm_loss", "LlamaForCausalLM"]


def get_config(name_or_path: Union[str, os.PathLike, ModelConfig]) -> ModelConfig:
    """A ModelConfig from a preset name / HF repo id, or an HF directory (or config.json) on disk."""
    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    path = Path(name_or_path)
    if path.is_dir() or (path.is_file() and path.suffix == ".json"):
        from llmpre.models.hf import load_hf_config

        return load_hf_config(path)
    return get_preset(str(name_or_path))


def build_model(config_or_name: Union[str, os.PathLike, ModelConfig], seed: Optional[int] = None, ops=None):
    """A randomly initialised :class:`LlamaForCausalLM`; ``seed`` calls ``paddle.seed`` first.
    ``ops`` is a :func:`llmpre.ops.select_ops` namespace (default: the reference ops)."""
    import paddle

    from llmpre.models.llama import LlamaForCausalLM

    config = get_config(config_or_name)
    if seed is not None:
        paddle.seed(seed)
    return LlamaForCausalLM(config, ops=ops)


def from_pretrained(path: Union[str, os.PathLike], dtype: str = "float32"):
    """Load an HF checkpoint directory (LLaMA, Qwen2, Mistral without sliding window)."""
    from llmpre.models.hf import from_pretrained as _from_pretrained

    return _from_pretrained(path, dtype=dtype)


def save_pretrained(model, path: Union[str, os.PathLike], style: str = "v4") -> None:
    """Write ``model`` as an HF checkpoint directory (config.json + model.safetensors)."""
    from llmpre.models.hf import save_pretrained as _save_pretrained

    _save_pretrained(model, path, style=style)


def causal_lm_loss(logits, labels, ignore_index: int = -100):
    """Mean cross-entropy over non-ignored, already-shifted labels (see :mod:`llmpre.models.loss`)."""
    from llmpre.models.loss import causal_lm_loss as _loss

    return _loss(logits, labels, ignore_index=ignore_index)


def __getattr__(name):  # lazy: importing llmpre.models must not import Paddle
    if name == "LlamaForCausalLM":
        from llmpre.models.llama import LlamaForCausalLM

        return LlamaForCausalLM
    raise AttributeError(f"module 'llmpre.models' has no attribute {name!r}")
