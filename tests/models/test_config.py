"""ModelConfig: validation, parameter count, HF dict forms; presets and aliases."""

import json
from pathlib import Path

import numpy as np
import pytest

from llmpre.errors import ConfigError
from llmpre.models import PRESETS, ModelConfig, RopeScaling, build_model, get_config, get_preset

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "hf"


def fixture_dir(name):
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"HF parity fixtures absent: {path}")
    return path


SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize("extra", [
    {},                                                  # multi-head
    {"num_key_value_heads": 2},                          # GQA
    {"num_key_value_heads": 1, "tie_word_embeddings": True},
    {"num_key_value_heads": 2, "attention_bias": True, "model_type": "qwen2"},
    {"head_dim": 12, "num_key_value_heads": 2, "attention_bias": True, "tie_word_embeddings": True},
], ids=["mha", "gqa", "mqa-tied", "qwen2-bias", "head_dim-bias-tied"])
def test_num_parameters_equals_built_model(extra):
    config = ModelConfig(**SMALL, **extra)
    model = build_model(config, seed=0)
    assert config.num_parameters() == sum(int(np.prod(p.shape)) for p in model.parameters())


def test_published_parameter_counts():
    # Totals the model cards / HF report for these checkpoints.
    assert get_preset("llama2-7b").num_parameters() == 6_738_415_616
    assert get_preset("llama2-70b").num_parameters() == 68_976_648_192
    assert get_preset("llama3-8b").num_parameters() == 8_030_261_248
    assert get_preset("llama3.1-405b").num_parameters() == 405_853_388_800
    assert get_preset("llama3.2-1b").num_parameters() == 1_235_814_400
    assert get_preset("qwen2-0.5b").num_parameters() == 494_032_768
    assert get_preset("qwen2.5-7b").num_parameters() == 7_615_616_512


def test_defaults_are_derived():
    config = ModelConfig(**SMALL)
    assert config.head_dim == 8 and config.num_key_value_heads == 4


@pytest.mark.parametrize("bad, words", [
    (dict(hidden_size=30), ["hidden_size=30", "num_attention_heads=4", "head_dim"]),
    (dict(num_key_value_heads=3), ["num_key_value_heads=3", "divide"]),
    (dict(vocab_size=0), ["vocab_size", "positive"]),
    (dict(num_hidden_layers=-1), ["num_hidden_layers"]),
    (dict(head_dim=7), ["head_dim=7", "even"]),
    (dict(hidden_act="gelu"), ["hidden_act", "silu"]),
    (dict(model_type="gpt2"), ["model_type", "gpt2"]),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), ["yarn", "linear"]),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), ["original_max_position_embeddings"]),
])
def test_validation_messages_name_the_field(bad, words):
    with pytest.raises(ConfigError) as e:
        ModelConfig(**{**SMALL, **bad})
    for word in words:
        assert word in str(e.value)


def test_replace_follows_derived_fields_and_validates():
    tiny = get_preset("llama-tiny")
    wider = tiny.replace(hidden_size=512)
    assert wider.head_dim == 128 and wider.num_key_value_heads == 2
    explicit = ModelConfig(**SMALL, head_dim=12).replace(hidden_size=64)
    assert explicit.head_dim == 12
    mha = ModelConfig(**SMALL).replace(num_attention_heads=8)
    assert mha.num_key_value_heads == 8 and mha.head_dim == 4
    with pytest.raises(ConfigError, match="num_key_value_heads=3"):
        tiny.replace(num_key_value_heads=3)
    with pytest.raises(ConfigError, match="no field"):
        tiny.replace(hidden=3)
    assert tiny.replace() == tiny


def test_rope_scaling_mapping_is_normalised_and_hashable():
    config = ModelConfig(**SMALL, rope_scaling={"type": "linear", "factor": 2.0})
    assert config.rope_scaling == RopeScaling("linear", 2.0)
    hash(config)


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_fixture_configs_in_both_key_styles_agree(model):
    path = fixture_dir(model)
    v5 = ModelConfig.from_hf_dict(json.loads((path / "config.json").read_text()))
    v4 = ModelConfig.from_hf_dict(json.loads((path / "config.v4.json").read_text()))
    assert v5 == v4
    assert (v5.hidden_size, v5.num_attention_heads, v5.num_key_value_heads, v5.head_dim) == (64, 4, 2, 16)
    assert v5.model_type == model
    assert v5.rope_theta == (1e4 if model == "llama" else 1e6)
    assert v5.attention_bias == (model == "qwen2") and v5.tie_word_embeddings == (model == "qwen2")
    assert get_config(path) == v5


def test_llama3_rope_scaling_in_both_key_styles():
    common = dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    v4 = ModelConfig.from_hf_dict({**common, "rope_theta": 500000.0, "rope_scaling": scaling})
    v5 = ModelConfig.from_hf_dict({**common, "rope_parameters": {**scaling, "rope_theta": 500000.0}})
    assert v4 == v5
    assert v4.rope_theta == 500000.0 and v4.rope_scaling.rope_type == "llama3"
    legacy = ModelConfig.from_hf_dict({**common, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
    assert legacy.rope_scaling == RopeScaling("dynamic", 2.0)


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("style", ["v4", "v5"])
def test_presets_round_trip_through_hf_dict(name, style):
    config = PRESETS[name]
    d = json.loads(json.dumps(config.to_hf_dict(style=style)))
    assert ModelConfig.from_hf_dict(d) == config
    if style == "v4":
        assert "rope_theta" in d and "rope_parameters" not in d
    else:
        assert d["rope_parameters"]["rope_theta"] == config.rope_theta and "rope_theta" not in d


def test_to_hf_dict_refuses_combinations_hf_cannot_express():
    with pytest.raises(ConfigError, match="o_proj|qwen2"):
        ModelConfig(**SMALL, attention_bias=True).to_hf_dict()
    with pytest.raises(ConfigError, match="qwen2"):
        ModelConfig(**SMALL, model_type="qwen2").to_hf_dict()


@pytest.mark.parametrize("patch, words", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, ["gpt2", "GPT2LMHeadModel"]),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 64},
     ["sliding"]),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True,
      "sliding_window": 64}, ["sliding"]),
    ({"attention_bias": True}, ["o_proj"]),
    ({"mlp_bias": True}, ["mlp_bias"]),
    ({"architectures": ["LlamaForSequenceClassification"]}, ["LlamaForSequenceClassification"]),
])
def test_from_hf_dict_rejects_unsupported_features(patch, words):
    d = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **SMALL, "max_position_embeddings": 256,
         **patch}
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_hf_dict(d)
    for word in words:
        assert word in str(e.value)


def test_mistral_without_sliding_window_is_accepted():
    d = {"model_type": "mistral", "architectures": ["MistralForCausalLM"], **SMALL, "sliding_window": None}
    assert ModelConfig.from_hf_dict(d).model_type == "mistral"


def test_required_presets_exist_with_exact_numbers():
    tiny = get_preset("llama-tiny")
    assert (tiny.vocab_size, tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads,
            tiny.num_key_value_heads, tiny.intermediate_size, tiny.max_position_embeddings,
            tiny.tie_word_embeddings) == (8192, 256, 4, 4, 2, 688, 1024, False)
    assert 1e6 < tiny.num_parameters() < 1e7
    for name in ["llama-7b", "llama-13b", "llama-30b", "llama-65b", "llama2-7b", "llama2-13b", "llama2-70b",
                 "llama3-8b", "llama3-70b", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b", "llama3.2-1b",
                 "llama3.2-3b", "qwen2-0.5b", "qwen2-1.5b", "qwen2-7b", "qwen2-72b", "qwen2.5-0.5b",
                 "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b"]:
        assert name in PRESETS
    l31 = get_preset("llama3.1-8b")
    assert l31.rope_theta == 500000.0 and l31.max_position_embeddings == 131072
    assert l31.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    l32 = get_preset("llama3.2-1b")
    assert l32.tie_word_embeddings and l32.rope_scaling.factor == 32.0 and l32.head_dim == 64
    assert get_preset("llama2-70b").num_key_value_heads == 8
    assert get_preset("qwen2.5-0.5b").tie_word_embeddings and not get_preset("qwen2.5-7b").tie_word_embeddings
    assert all(c.attention_bias for n, c in PRESETS.items() if n.startswith("qwen"))
    assert not any(c.attention_bias for n, c in PRESETS.items() if n.startswith("llama"))


@pytest.mark.parametrize("alias, name", [
    ("meta-llama/Llama-2-7b-hf", "llama2-7b"), ("meta-llama/Meta-Llama-3-8B", "llama3-8b"),
    ("Qwen/Qwen2-7B", "qwen2-7b"), ("Qwen/Qwen2.5-7B", "qwen2.5-7b"), ("huggyllama/llama-30b", "llama-30b"),
    ("meta-llama/Llama-3.1-405B", "llama3.1-405b"), ("qwen/qwen2.5-0.5b", "qwen2.5-0.5b"), ("LLaMA-Tiny", "llama-tiny"),
])
def test_aliases_resolve_to_the_same_config(alias, name):
    assert get_preset(alias) is PRESETS[name]
    assert get_config(alias) is PRESETS[name]


def test_unknown_preset_lists_close_matches():
    with pytest.raises(ConfigError) as e:
        get_preset("llama2-7")
    message = str(e.value)
    assert "'llama2-7'" in message and "llama2-7b" in message and "llama-tiny" in message
    with pytest.raises(ConfigError, match="config.json"):
        get_config("no-such-model")
