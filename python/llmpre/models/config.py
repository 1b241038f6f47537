"""Typed, frozen configuration of a LLaMA-family decoder, and its HF ``config.json`` form."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

from llmpre.errors import ConfigError

ROPE_TYPES = ("linear", "dynamic", "llama3")
MODEL_TYPES = ("llama", "qwen2", "mistral")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling for context extension.

    * ``linear``: positions are divided by ``factor``.
    * ``dynamic`` (dynamic NTK): for sequences longer than
      ``original_max_position_embeddings`` (default: the model's
      ``max_position_embeddings``) the base becomes
      ``theta * (factor * seq / original - (factor - 1)) ** (d / (d - 2))``.
    * ``llama3``: per-frequency: wavelengths shorter than
      ``original / high_freq_factor`` keep their frequency, longer than
      ``original / low_freq_factor`` are divided by ``factor``, and the band in
      between is interpolated smoothly.
    """

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: Optional[int] = None

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(f"rope_scaling.rope_type={self.rope_type!r} is not supported; "
                              f"use one of {', '.join(ROPE_TYPES)} (or rope_scaling=None)")
        if not self.factor > 0:
            raise ConfigError(f"rope_scaling.factor must be > 0, got {self.factor}")
        if self.rope_type == "llama3":
            if self.original_max_position_embeddings is None:
                raise ConfigError("rope_scaling of type 'llama3' needs original_max_position_embeddings "
                                  "(8192 for Llama 3.1/3.2)")
            if not self.high_freq_factor > self.low_freq_factor > 0:
                raise ConfigError("rope_scaling 'llama3' needs high_freq_factor > low_freq_factor > 0, got "
                                  f"{self.high_freq_factor} and {self.low_freq_factor}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Optional["RopeScaling"]:
        """Read HF's ``rope_scaling`` / ``rope_parameters`` mapping; ``None`` for the plain RoPE."""
        kind = d.get("rope_type", d.get("type", "default"))
        if kind in (None, "default"):
            return None
        if "factor" not in d:
            raise ConfigError(f"rope scaling {dict(d)} has no 'factor'")
        return cls(rope_type=kind, factor=float(d["factor"]),
                   low_freq_factor=float(d.get("low_freq_factor", 1.0)),
                   high_freq_factor=float(d.get("high_freq_factor", 4.0)),
                   original_max_position_embeddings=d.get("original_max_position_embeddings"))

    def to_dict(self) -> dict:
        d = {"rope_type": self.rope_type, "factor": self.factor}
        if self.rope_type == "llama3":
            d.update(low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor)
        if self.original_max_position_embeddings is not None:
            d["original_max_position_embeddings"] = self.original_max_position_embeddings
        return d


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a LLaMA-family decoder (LLaMA 1/2/3, Qwen2, Mistral).

    ``num_key_value_heads`` defaults to ``num_attention_heads`` (plain multi-head
    attention) and ``head_dim`` to ``hidden_size // num_attention_heads``.
    ``attention_bias`` adds biases to the q/k/v projections only (Qwen2 style).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    attention_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: Optional[int] = 1
    eos_token_id: Union[None, int, Tuple[int, ...]] = 2
    model_type: str = "llama"

    def __post_init__(self):
        def fix(name, value):  # frozen: normalise fields through object.__setattr__
            object.__setattr__(self, name, value)

        if isinstance(self.rope_scaling, Mapping):
            fix("rope_scaling", RopeScaling.from_dict(self.rope_scaling))
        if isinstance(self.eos_token_id, list):
            fix("eos_token_id", tuple(self.eos_token_id))
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.num_key_value_heads is None:
            fix("num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(f"ModelConfig: hidden_size={self.hidden_size} is not divisible by "
                                  f"num_attention_heads={self.num_attention_heads}; change one of them "
                                  "or give head_dim explicitly")
            fix("head_dim", self.hidden_size // self.num_attention_heads)
        for name in ("num_key_value_heads", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"ModelConfig: num_key_value_heads={self.num_key_value_heads} must divide "
                              f"num_attention_heads={self.num_attention_heads} (grouped-query attention)")
        if self.head_dim % 2:
            raise ConfigError(f"ModelConfig.head_dim={self.head_dim} must be even for rotary embeddings")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0 or not self.initializer_range > 0:
            raise ConfigError("ModelConfig: rms_norm_eps, rope_theta and initializer_range must be > 0, got "
                              f"{self.rms_norm_eps}, {self.rope_theta}, {self.initializer_range}")
        if self.hidden_act != "silu":
            raise ConfigError(f"ModelConfig.hidden_act={self.hidden_act!r} is not supported; "
                              "LLaMA-family models use 'silu' (SwiGLU)")
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"ModelConfig.model_type={self.model_type!r} is not supported; "
                              f"use one of {', '.join(MODEL_TYPES)}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(f"ModelConfig.rope_scaling must be None, a RopeScaling or a mapping, "
                              f"got {self.rope_scaling!r}")

    # ---------------------------------------------------------------- sizes
    def num_parameters(self) -> int:
        """Parameter count from the numbers alone (equals the built model's)."""
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.attention_bias else 0)
        mlp = 3 * h * self.intermediate_size
        per_layer = attention + mlp + 2 * h                     # + two RMSNorm weights
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_hidden_layers * per_layer + h  # + final norm

    def replace(self, **changes) -> "ModelConfig":
        """A copy with ``changes`` applied and validated.

        ``head_dim`` follows a changed ``hidden_size``/``num_attention_heads`` when it
        was the default ``hidden // heads``; ``num_key_value_heads`` follows a changed
        ``num_attention_heads`` when the config was plain multi-head attention.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"ModelConfig has no field(s) {', '.join(sorted(unknown))}")
        if "head_dim" not in changes and self.head_dim * self.num_attention_heads == self.hidden_size:
            changes["head_dim"] = None
        if "num_key_value_heads" not in changes and self.num_key_value_heads == self.num_attention_heads:
            changes["num_key_value_heads"] = None
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- HF form
    def to_hf_dict(self, style: str = "v4") -> dict:
        """The HF ``config.json`` content.

        ``style="v4"`` writes ``rope_theta``/``rope_scaling``/``torch_dtype`` (read by
        transformers 4 and 5); ``"v5"`` writes ``rope_parameters``/``dtype``.
        """
        if style not in ("v4", "v5"):
            raise ConfigError(f"to_hf_dict(style={style!r}): use 'v4' or 'v5'")
        # HF's LLaMA `attention_bias` also biases o_proj, Mistral has none and Qwen2
        # always biases q/k/v only: only these combinations round-trip faithfully.
        if self.attention_bias != (self.model_type == "qwen2"):
            raise ConfigError(f"model_type={self.model_type!r} with attention_bias={self.attention_bias} has no "
                              "HF equivalent: q/k/v-only biases are model_type='qwen2', bias-free is "
                              "'llama' or 'mistral'; use config.replace(model_type=...)")
        d = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": self.hidden_act,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
        }
        if self.model_type == "llama":
            d.update(attention_bias=False, mlp_bias=False)
        if self.model_type in ("qwen2", "mistral"):
            d.update(sliding_window=None, use_sliding_window=False)
        scaling = self.rope_scaling.to_dict() if self.rope_scaling else None
        if style == "v4":
            d.update(rope_theta=self.rope_theta, rope_scaling=scaling)
        else:
            d["rope_parameters"] = {"rope_type": "default", **(scaling or {}), "rope_theta": self.rope_theta}
        return d

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Build from an HF ``config.json`` mapping in transformers-5 keys
        (``rope_parameters``, ``dtype``) or transformers-4 keys (``rope_theta``,
        ``rope_scaling``, ``torch_dtype``).  Features this decoder does not implement
        (sliding windows, MLP/o_proj biases, other architectures) raise ConfigError."""
        model_type = d.get("model_type")
        if model_type not in MODEL_TYPES:
            archs = ", ".join(d.get("architectures") or []) or "none given"
            raise ConfigError(f"model_type {model_type!r} (architectures: {archs}) is not supported; llmpre "
                              f"loads {', '.join(MODEL_TYPES)} (LLaMA-family decoders)")
        for arch in d.get("architectures") or []:
            if arch != _ARCHITECTURES[model_type]:
                raise ConfigError(f"architecture {arch!r} is not supported for model_type {model_type!r}; "
                                  f"expected {_ARCHITECTURES[model_type]}")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in d]
        if missing:
            raise ConfigError(f"HF config is missing {', '.join(missing)}")
        if d.get("mlp_bias"):
            raise ConfigError("HF config has mlp_bias=true; llmpre's SwiGLU MLP has no biases")
        if model_type == "llama" and d.get("attention_bias"):
            raise ConfigError("HF LLaMA config has attention_bias=true, which also biases o_proj; "
                              "llmpre supports q/k/v biases only (Qwen2 style)")
        _check_full_attention(d, model_type)

        rope = d.get("rope_parameters")
        if isinstance(rope, Mapping) and "rope_theta" in rope:  # transformers 5
            rope_theta, scaling = rope["rope_theta"], rope
        else:                                                   # transformers 4
            rope_theta, scaling = d.get("rope_theta", 10000.0), d.get("rope_scaling")
        eos = d.get("eos_token_id", 2)
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads"),
            head_dim=d.get("head_dim"),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=RopeScaling.from_dict(scaling) if scaling else None,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            initializer_range=float(d.get("initializer_range", 0.02)),
            attention_bias=model_type == "qwen2",
            hidden_act=d.get("hidden_act", "silu"),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            model_type=model_type,
        )


def _check_full_attention(d: Mapping[str, Any], model_type: str) -> None:
    """Reject sliding-window attention, which this decoder does not implement."""
    window = d.get("sliding_window")
    max_pos = d.get("max_position_embeddings", 2048)
    if model_type == "qwen2":
        uses_window = bool(d.get("use_sliding_window")) and window is not None
    else:
        uses_window = window is not None and window < max_pos
    uses_window = uses_window or any(t != "full_attention" for t in d.get("layer_types") or [])
    if uses_window:
        raise ConfigError(f"{model_type} config uses sliding-window attention (sliding_window={window}); "
                          "llmpre implements full causal attention only")
