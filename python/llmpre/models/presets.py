"""Named model configurations: one tiny test model and the published LLaMA-family shapes.

The numbers are those of the released checkpoints' ``config.json`` (base models).
Each row is: hidden, intermediate, layers, heads, kv_heads, vocab, max_positions.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict

from llmpre.errors import ConfigError
from llmpre.models.config import ModelConfig, RopeScaling

# Shared numerics of each family.
_LLAMA1 = dict(model_type="llama", rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)
_LLAMA2 = dict(model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)
_LLAMA3 = dict(model_type="llama", rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001)
_QWEN2 = dict(model_type="qwen2", attention_bias=True, rope_theta=1000000.0, bos_token_id=151643, eos_token_id=151643)


def _llama3_rope(factor: float) -> RopeScaling:
    return RopeScaling("llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=8192)


_ROPE_31, _ROPE_32 = _llama3_rope(8.0), _llama3_rope(32.0)

#       name              hidden  inter  layers heads kv  vocab   max_pos  extra
_TABLE = [
    ("llama-tiny",          256,   688,    4,    4,   2,   8192,   1024, _LLAMA1),
    # LLaMA 1 (huggyllama/llama-*)
    ("llama-7b",           4096, 11008,   32,   32,  32,  32000,   2048, _LLAMA1),
    ("llama-13b",          5120, 13824,   40,   40,  40,  32000,   2048, _LLAMA1),
    ("llama-30b",          6656, 17920,   60,   52,  52,  32000,   2048, _LLAMA1),
    ("llama-65b",          8192, 22016,   80,   64,  64,  32000,   2048, _LLAMA1),
    # Llama 2
    ("llama2-7b",          4096, 11008,   32,   32,  32,  32000,   4096, _LLAMA2),
    ("llama2-13b",         5120, 13824,   40,   40,  40,  32000,   4096, _LLAMA2),
    ("llama2-70b",         8192, 28672,   80,   64,   8,  32000,   4096, _LLAMA2),
    # Llama 3 / 3.1 / 3.2
    ("llama3-8b",          4096, 14336,   32,   32,   8, 128256,   8192, _LLAMA3),
    ("llama3-70b",         8192, 28672,   80,   64,   8, 128256,   8192, _LLAMA3),
    ("llama3.1-8b",        4096, 14336,   32,   32,   8, 128256, 131072, dict(_LLAMA3, rope_scaling=_ROPE_31)),
    ("llama3.1-70b",       8192, 28672,   80,   64,   8, 128256, 131072, dict(_LLAMA3, rope_scaling=_ROPE_31)),
    ("llama3.1-405b",     16384, 53248,  126,  128,   8, 128256, 131072, dict(_LLAMA3, rope_scaling=_ROPE_31)),
    ("llama3.2-1b",        2048,  8192,   16,   32,   8, 128256, 131072,
     dict(_LLAMA3, rope_scaling=_ROPE_32, tie_word_embeddings=True)),
    ("llama3.2-3b",        3072,  8192,   28,   24,   8, 128256, 131072,
     dict(_LLAMA3, rope_scaling=_ROPE_32, tie_word_embeddings=True)),
    # Qwen2
    ("qwen2-0.5b",          896,  4864,   24,   14,   2, 151936, 131072, dict(_QWEN2, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    ("qwen2-1.5b",         1536,  8960,   28,   12,   2, 151936, 131072, dict(_QWEN2, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    ("qwen2-7b",           3584, 18944,   28,   28,   4, 152064, 131072, dict(_QWEN2, rms_norm_eps=1e-6)),
    ("qwen2-72b",          8192, 29568,   80,   64,   8, 152064, 131072, dict(_QWEN2, rms_norm_eps=1e-5)),
    # Qwen2.5
    ("qwen2.5-0.5b",        896,  4864,   24,   14,   2, 151936,  32768, dict(_QWEN2, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    ("qwen2.5-1.5b",       1536,  8960,   28,   12,   2, 151936, 131072, dict(_QWEN2, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    ("qwen2.5-3b",         2048, 11008,   36,   16,   2, 151936,  32768, dict(_QWEN2, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    ("qwen2.5-7b",         3584, 18944,   28,   28,   4, 152064, 131072, dict(_QWEN2, rms_norm_eps=1e-6)),
    ("qwen2.5-14b",        5120, 13824,   48,   40,   8, 152064, 131072, dict(_QWEN2, rms_norm_eps=1e-5)),
    ("qwen2.5-32b",        5120, 27648,   64,   40,   8, 152064, 131072, dict(_QWEN2, rms_norm_eps=1e-5)),
    ("qwen2.5-72b",        8192, 29568,   80,   64,   8, 152064, 131072, dict(_QWEN2, rms_norm_eps=1e-5)),
]

PRESETS: "OrderedDict[str, ModelConfig]" = OrderedDict(
    (name, ModelConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=a,
                       num_key_value_heads=kv, vocab_size=v, max_position_embeddings=p, **extra))
    for name, h, i, n, a, kv, v, p, extra in _TABLE
)

# Hub repository ids (HF and PaddleNLP spellings) -> preset name.
ALIASES = {
    "huggyllama/llama-7b": "llama-7b", "huggyllama/llama-13b": "llama-13b",
    "huggyllama/llama-30b": "llama-30b", "huggyllama/llama-65b": "llama-65b",
    "facebook/llama-7b": "llama-7b", "facebook/llama-13b": "llama-13b",
    "facebook/llama-30b": "llama-30b", "facebook/llama-65b": "llama-65b",
    "meta-llama/Llama-2-7b-hf": "llama2-7b", "meta-llama/Llama-2-13b-hf": "llama2-13b",
    "meta-llama/Llama-2-70b-hf": "llama2-70b",
    "meta-llama/Llama-2-7b": "llama2-7b", "meta-llama/Llama-2-13b": "llama2-13b",
    "meta-llama/Llama-2-70b": "llama2-70b",
    "meta-llama/Meta-Llama-3-8B": "llama3-8b", "meta-llama/Meta-Llama-3-70B": "llama3-70b",
    "meta-llama/Meta-Llama-3.1-8B": "llama3.1-8b", "meta-llama/Meta-Llama-3.1-70B": "llama3.1-70b",
    "meta-llama/Meta-Llama-3.1-405B": "llama3.1-405b",
    "meta-llama/Llama-3.1-8B": "llama3.1-8b", "meta-llama/Llama-3.1-70B": "llama3.1-70b",
    "meta-llama/Llama-3.1-405B": "llama3.1-405b",
    "meta-llama/Llama-3.2-1B": "llama3.2-1b", "meta-llama/Llama-3.2-3B": "llama3.2-3b",
    "Qwen/Qwen2-0.5B": "qwen2-0.5b", "Qwen/Qwen2-1.5B": "qwen2-1.5b",
    "Qwen/Qwen2-7B": "qwen2-7b", "Qwen/Qwen2-72B": "qwen2-72b",
    "Qwen/Qwen2.5-0.5B": "qwen2.5-0.5b", "Qwen/Qwen2.5-1.5B": "qwen2.5-1.5b",
    "Qwen/Qwen2.5-3B": "qwen2.5-3b", "Qwen/Qwen2.5-7B": "qwen2.5-7b",
    "Qwen/Qwen2.5-14B": "qwen2.5-14b", "Qwen/Qwen2.5-32B": "qwen2.5-32b",
    "Qwen/Qwen2.5-72B": "qwen2.5-72b",
}
_BY_LOWER = {**{k.lower(): v for k, v in ALIASES.items()}, **{k.lower(): k for k in PRESETS}}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name`` (case-insensitive; HF/PaddleNLP repo ids accepted)."""
    key = _BY_LOWER.get(str(name).lower())
    if key is not None:
        return PRESETS[key]
    spelled = {k.lower(): k for k in list(PRESETS) + list(ALIASES)}
    close = [spelled[c] for c in difflib.get_close_matches(str(name).lower(), spelled, n=5, cutoff=0.6)]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"unknown model preset {name!r}: {hint}known presets: {', '.join(PRESETS)} "
                      "(`llmpre models` lists them), or pass a directory holding an HF config.json")
