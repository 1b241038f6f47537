"""ModelConfig: validation, parameter counts, HF dict forms; presets and aliases."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from llmpre.errors import ConfigError
from llmpre.models import PRESETS, MLAConfig, ModelConfig, MoEConfig, RopeScaling, build_model, get_config, get_preset
from llmpre.models.hf_config import from_hf_dict, to_hf_dict
from llmpre.models.presets import ALIASES

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "hf"
SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4)

# PaddleNLP's pretraining weight table (llm/docs/pretrain.md), every name as published.
WEIGHT_TABLE = """
paddlenlp/PP-UIE-0.5B paddlenlp/PP-UIE-1.5B paddlenlp/PP-UIE-7B paddlenlp/PP-UIE-14B
facebook/llama-7b facebook/llama-13b facebook/llama-30b facebook/llama-65b
meta-llama/Llama-2-7b meta-llama/Llama-2-7b-chat meta-llama/Llama-2-13b meta-llama/Llama-2-13b-chat
meta-llama/Llama-2-70b meta-llama/Llama-2-70b-chat
meta-llama/Meta-Llama-3-8B meta-llama/Meta-Llama-3-8B-Instruct meta-llama/Meta-Llama-3-70B
meta-llama/Meta-Llama-3-70B-Instruct
meta-llama/Meta-Llama-3.1-8B meta-llama/Meta-Llama-3.1-8B-Instruct meta-llama/Meta-Llama-3.1-70B
meta-llama/Meta-Llama-3.1-70B-Instruct meta-llama/Meta-Llama-3.1-405B meta-llama/Meta-Llama-3.1-405B-Instruct
meta-llama/Llama-Guard-3-8B
meta-llama/Llama-3.2-1B meta-llama/Llama-3.2-1B-Instruct meta-llama/Llama-3.2-3B meta-llama/Llama-3.2-3B-Instruct
meta-llama/Llama-Guard-3-1B meta-llama/Llama-3.3-70B-Instruct
baichuan-inc/Baichuan-7B baichuan-inc/Baichuan-13B-Base baichuan-inc/Baichuan-13B-Chat
baichuan-inc/Baichuan2-7B-Base baichuan-inc/Baichuan2-7B-Chat baichuan-inc/Baichuan2-13B-Base
baichuan-inc/Baichuan2-13B-Chat
bigscience/bloom-560m bigscience/bloom-560m-bf16 bigscience/bloom-1b1 bigscience/bloom-3b bigscience/bloom-7b1
bigscience/bloomz-560m bigscience/bloomz-1b1 bigscience/bloomz-3b bigscience/bloomz-7b1-mt bigscience/bloomz-7b1-p3
bigscience/bloomz-7b1 bellegroup/belle-7b-2m
THUDM/chatglm2-6b THUDM/chatglm3-6b THUDM/chatglm-6b THUDM/chatglm-6b-v1.1
deepseek-ai/DeepSeek-V2 deepseek-ai/DeepSeek-V2-Chat deepseek-ai/DeepSeek-V2-Lite deepseek-ai/DeepSeek-V2-Lite-Chat
deepseek-ai/DeepSeek-Coder-V2-Base deepseek-ai/DeepSeek-Coder-V2-Instruct deepseek-ai/DeepSeek-Coder-V2-Lite-Base
deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct deepseek-ai/DeepSeek-V3 deepseek-ai/DeepSeek-V3-Base
deepseek-ai/DeepSeek-R1 deepseek-ai/DeepSeek-R1-Zero deepseek-ai/DeepSeek-R1-Distill-Llama-70B
deepseek-ai/DeepSeek-R1-Distill-Llama-8B deepseek-ai/DeepSeek-R1-Distill-Qwen-14B
deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B deepseek-ai/DeepSeek-R1-Distill-Qwen-32B
deepseek-ai/DeepSeek-R1-Distill-Qwen-7B
google/gemma-7b google/gemma-7b-it google/gemma-2b google/gemma-2b-it
mistralai/Mistral-7B-Instruct-v0.3 mistralai/Mistral-7B-v0.1 mistralai/Mixtral-8x7B-Instruct-v0.1
facebook/opt-125m facebook/opt-350m facebook/opt-1.3b facebook/opt-2.7b facebook/opt-6.7b facebook/opt-13b
facebook/opt-30b facebook/opt-66b facebook/opt-iml-1.3b opt-iml-max-1.3b
qwen/qwen-7b qwen/qwen-7b-chat qwen/qwen-14b qwen/qwen-14b-chat qwen/qwen-72b qwen/qwen-72b-chat
Qwen/Qwen1.5-0.5B Qwen/Qwen1.5-0.5B-Chat Qwen/Qwen1.5-1.8B Qwen/Qwen1.5-1.8B-Chat Qwen/Qwen1.5-4B
Qwen/Qwen1.5-4B-Chat Qwen/Qwen1.5-7B Qwen/Qwen1.5-7B-Chat Qwen/Qwen1.5-14B Qwen/Qwen1.5-14B-Chat Qwen/Qwen1.5-32B
Qwen/Qwen1.5-32B-Chat Qwen/Qwen1.5-72B Qwen/Qwen1.5-72B-Chat Qwen/Qwen1.5-110B Qwen/Qwen1.5-110B-Chat
Qwen/Qwen1.5-MoE-A2.7B Qwen/Qwen1.5-MoE-A2.7B-Chat
Qwen/Qwen2-0.5B Qwen/Qwen2-0.5B-Instruct Qwen/Qwen2-1.5B Qwen/Qwen2-1.5B-Instruct Qwen/Qwen2-7B
Qwen/Qwen2-7B-Instruct Qwen/Qwen2-72B Qwen/Qwen2-72B-Instruct Qwen/Qwen2-57B-A14B Qwen/Qwen2-57B-A14B-Instruct
Qwen/Qwen2-Math-1.5B Qwen/Qwen2-Math-1.5B-Instruct Qwen/Qwen2-Math-7B Qwen/Qwen2-Math-7B-Instruct
Qwen/Qwen2-Math-72B Qwen/Qwen2-Math-72B-Instruct Qwen/Qwen2-Math-RM-72B
Qwen/Qwen2.5-0.5B Qwen/Qwen2.5-0.5B-Instruct Qwen/Qwen2.5-1.5B Qwen/Qwen2.5-1.5B-Instruct Qwen/Qwen2.5-3B
Qwen/Qwen2.5-3B-Instruct Qwen/Qwen2.5-7B Qwen/Qwen2.5-7B-Instruct Qwen/Qwen2.5-7B-Instruct-1M Qwen/Qwen2.5-14B
Qwen/Qwen2.5-14B-Instruct Qwen/Qwen2.5-14B-Instruct-1M Qwen/Qwen2.5-32B Qwen/Qwen2.5-32B-Instruct
Qwen/Qwen2.5-72B Qwen/Qwen2.5-72B-Instruct
Qwen/Qwen2.5-Math-1.5B Qwen/Qwen2.5-Math-1.5B-Instruct Qwen/Qwen2.5-Math-7B Qwen/Qwen2.5-Math-7B-Instruct
Qwen/Qwen2.5-Math-72B Qwen/Qwen2.5-Math-72B-Instruct Qwen/Qwen2.5-Math-RM-72B
Qwen/Qwen2.5-Coder-1.5B Qwen/Qwen2.5-Coder-1.5B-Instruct Qwen/Qwen2.5-Coder-7B Qwen/Qwen2.5-Coder-7B-Instruct
Qwen/QwQ-32B Qwen/QwQ-32B-Preview
IEITYuan/Yuan2-2B IEITYuan/Yuan2-51B IEITYuan/Yuan2-102B
FlagAlpha/Llama2-Chinese-7b-Chat FlagAlpha/Llama2-Chinese-13b-Chat idea-ccnl/ziya-llama-13b-v1
linly-ai/chinese-llama-2-7b linly-ai/chinese-llama-2-13b
gpt3-1.3B-en gpt3-13B-en
""".split()


def fixture_dir(name):
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"HF parity fixtures absent: {path}")
    return path


def scaled_down(c: ModelConfig) -> ModelConfig:
    """The same architecture (every option kept) with tiny numbers."""
    heads = 4
    kv = 4 if c.num_key_value_heads == c.num_attention_heads else (1 if c.num_key_value_heads == 1 else 2)
    changes = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=heads,
                   num_key_value_heads=kv, head_dim=None if c.head_dim * c.num_attention_heads == c.hidden_size else 16,
                   max_position_embeddings=64)
    if c.sliding_window:
        changes["sliding_window"] = 8
    if c.word_embed_proj_dim:
        changes["word_embed_proj_dim"] = 16
    if c.rope_scaling and c.rope_scaling.original_max_position_embeddings:
        changes["rope_scaling"] = dataclasses.replace(c.rope_scaling, original_max_position_embeddings=16)
    if c.mla:
        changes["mla"] = MLAConfig(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                                   q_lora_rank=12 if c.mla.q_lora_rank else None)
        changes["head_dim"] = 12
    if c.moe:
        m = c.moe
        changes["moe"] = dataclasses.replace(
            m, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, n_group=min(m.n_group, 2),
            topk_group=1, first_k_dense_replace=min(m.first_k_dense_replace, 1),
            shared_expert_intermediate_size=32 if m.shared_expert_intermediate_size else 0)
    if c.model_type == "mixtral":   # one width: experts are the only MLPs
        changes["intermediate_size"] = 16
    if c.model_type == "bloom":     # Bloom's MLP is always 4 x hidden
        changes["intermediate_size"] = 128
    return dataclasses.replace(c, **changes)


SCALED = {}
for _name, _config in PRESETS.items():
    SCALED.setdefault(scaled_down(_config), _name)   # one per distinct architecture


@pytest.mark.parametrize("config", list(SCALED), ids=list(SCALED.values()))
def test_num_parameters_equals_built_model_for_every_architecture(config):
    model = build_model(config, seed=0)
    assert config.num_parameters() == sum(int(np.prod(p.shape)) for p in model.parameters())
    logits = model(paddle.to_tensor([[1, 5, 7, 9, 2, 3, 4, 8, 11, 12]]))
    assert logits.shape == [1, 10, 64] and np.isfinite(logits.numpy()).all()


@pytest.mark.parametrize("extra", [
    {},                                                  # multi-head
    {"num_key_value_heads": 2},                          # GQA
    {"num_key_value_heads": 1, "tie_word_embeddings": True},
    {"num_key_value_heads": 2, "attention_bias": True, "model_type": "qwen2"},
    {"head_dim": 12, "num_key_value_heads": 2, "attention_bias": True, "tie_word_embeddings": True},
    {"attention_out_bias": True, "mlp_bias": True, "localized_filtering": True},
    {"norm_type": "layernorm", "mlp_type": "plain", "hidden_act": "gelu"},
], ids=["mha", "gqa", "mqa-tied", "qwen2-bias", "head_dim-bias-tied", "all-biases-lf", "layernorm-plain"])
def test_num_parameters_equals_built_model(extra):
    config = ModelConfig(**SMALL, **extra)
    model = build_model(config, seed=0)
    assert config.num_parameters() == sum(int(np.prod(p.shape)) for p in model.parameters())


def test_published_parameter_counts():
    # Totals the model cards / HF report for these checkpoints.
    published = {
        "llama2-7b": 6_738_415_616, "llama2-70b": 68_976_648_192, "llama3-8b": 8_030_261_248,
        "llama3.1-405b": 405_853_388_800, "llama3.2-1b": 1_235_814_400, "qwen2-0.5b": 494_032_768,
        "qwen2.5-7b": 7_615_616_512, "mistral-7b-v0.1": 7_241_732_096, "mixtral-8x7b": 46_702_792_704,
        "gemma-2b": 2_506_172_416, "gemma-7b": 8_537_680_896, "bloom-560m": 559_214_592,
        "bloom-7b1": 7_069_016_064, "opt-125m": 125_239_296, "opt-350m": 331_196_416,
        "chatglm2-6b": 6_243_584_000, "qwen1.5-moe-a2.7b": 14_315_784_192, "baichuan2-7b": 7_505_973_248,
        "baichuan-13b": 13_264_901_120, "qwen-7b": 7_721_324_544, "deepseek-v2-lite": 15_706_484_224,
    }
    for name, count in published.items():
        assert get_preset(name).num_parameters() == count, name


def test_defaults_are_derived():
    config = ModelConfig(**SMALL)
    assert config.head_dim == 8 and config.num_key_value_heads == 4 and config.rotary_dim == 8
    assert ModelConfig(**SMALL, partial_rotary_factor=0.5).rotary_dim == 4


@pytest.mark.parametrize("bad, words", [
    (dict(hidden_size=30), ["hidden_size=30", "num_attention_heads=4", "head_dim"]),
    (dict(num_key_value_heads=3), ["num_key_value_heads=3", "divide"]),
    (dict(vocab_size=0), ["vocab_size", "positive"]),
    (dict(num_hidden_layers=-1), ["num_hidden_layers"]),
    (dict(head_dim=7), ["head_dim", "7", "even"]),
    (dict(hidden_act="tanh"), ["hidden_act", "silu"]),
    (dict(model_type="gpt9"), ["model_type", "gpt9"]),
    (dict(norm_type="batchnorm"), ["norm_type", "rmsnorm"]),
    (dict(position="sinusoidal"), ["position", "alibi"]),
    (dict(rope_scaling={"rope_type": "longrope", "factor": 4.0}), ["longrope", "yarn"]),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), ["original_max_position_embeddings"]),
    (dict(partial_rotary_factor=1.5), ["partial_rotary_factor"]),
    (dict(position="learned"), ["learned", "GPT-style"]),
    (dict(model_type="gpt2"), ["GPT-style", "LayerNorm"]),
    (dict(moe={"num_experts": 4, "num_experts_per_tok": 5, "moe_intermediate_size": 8}), ["num_experts_per_tok=5"]),
    (dict(moe={"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8, "n_group": 3}), ["n_group=3"]),
    (dict(moe={"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8, "scoring_func": "relu"}),
     ["scoring_func"]),
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
    # The trainer's from-scratch adjustments work on every family.
    for name in ("mixtral-8x7b", "deepseek-v3", "bloom-560m", "chatglm2-6b", "opt-350m"):
        c = get_preset(name).replace(vocab_size=get_preset(name).vocab_size + 128, max_position_embeddings=8192,
                                     num_hidden_layers=2)
        assert c.num_hidden_layers == 2 and c.moe == get_preset(name).moe


def test_rope_scaling_mapping_is_normalised_and_hashable():
    config = ModelConfig(**SMALL, rope_scaling={"type": "linear", "factor": 2.0})
    assert config.rope_scaling == RopeScaling("linear", 2.0)
    hash(config)
    moe = ModelConfig(**SMALL, moe={"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
                                    "dense_layers": [1]})
    assert isinstance(moe.moe, MoEConfig) and moe.moe.dense_layers == (1,) and not moe.moe.is_sparse(1)
    hash(moe)


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_fixture_configs_in_both_key_styles_agree(model):
    path = fixture_dir(model)
    v5 = from_hf_dict(json.loads((path / "config.json").read_text()))
    v4 = from_hf_dict(json.loads((path / "config.v4.json").read_text()))
    assert v5 == v4
    assert (v5.hidden_size, v5.num_attention_heads, v5.num_key_value_heads, v5.head_dim) == (64, 4, 2, 16)
    assert v5.model_type == model
    assert v5.rope_theta == (1e4 if model == "llama" else 1e6)
    assert v5.attention_bias == (model == "qwen2") and v5.tie_word_embeddings == (model == "qwen2")
    assert get_config(path) == v5


def test_rope_scaling_in_both_key_styles():
    common = dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    v4 = from_hf_dict({**common, "rope_theta": 500000.0, "rope_scaling": scaling})
    v5 = from_hf_dict({**common, "rope_parameters": {**scaling, "rope_theta": 500000.0}})
    assert v4 == v5
    assert v4.rope_theta == 500000.0 and v4.rope_scaling.rope_type == "llama3"
    legacy = from_hf_dict({**common, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
    assert legacy.rope_scaling == RopeScaling("dynamic", 2.0)
    yarn = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
            "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
    y = from_hf_dict({**common, "rope_scaling": yarn}).rope_scaling
    assert (y.rope_type, y.factor, y.mscale, y.mscale_all_dim) == ("yarn", 40.0, 0.707, 0.707)


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("style", ["v4", "v5"])
def test_presets_round_trip_through_hf_dict(name, style):
    config = PRESETS[name]
    d = json.loads(json.dumps(to_hf_dict(config, style=style)))
    assert from_hf_dict(d) == config
    if config.model_type in ("qwen", "chatglm", "gpt2", "opt", "bloom", "glm"):  # own keys (rotary_emb_base...) or none
        assert "rope_theta" not in d and "rope_parameters" not in d
    elif style == "v4":
        assert "rope_theta" in d and "rope_parameters" not in d
    else:
        assert d["rope_parameters"]["rope_theta"] == config.rope_theta and "rope_theta" not in d


def test_to_hf_dict_refuses_combinations_hf_cannot_express():
    with pytest.raises(ConfigError, match="o_proj|qwen2"):
        to_hf_dict(ModelConfig(**SMALL, attention_bias=True))
    with pytest.raises(ConfigError, match="qwen2"):
        to_hf_dict(ModelConfig(**SMALL, model_type="qwen2"))
    with pytest.raises(ConfigError, match="sliding_window"):
        to_hf_dict(ModelConfig(**SMALL, sliding_window=16))
    with pytest.raises(ConfigError, match="cannot express"):
        to_hf_dict(ModelConfig(**SMALL, partial_rotary_factor=0.5))
    with pytest.raises(ConfigError, match="would change"):
        to_hf_dict(ModelConfig(**SMALL, model_type="qwen", attention_bias=True,
                               rope_scaling=RopeScaling("linear", 2.0)))


@pytest.mark.parametrize("patch, words", [
    ({"model_type": "gpt9", "architectures": ["GPT9LMHeadModel"]}, ["gpt9", "GPT9LMHeadModel"]),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True,
      "sliding_window": 64}, ["sliding"]),
    ({"layer_types": ["full_attention", "sliding_attention"]}, ["sliding"]),
    ({"attention_bias": True}, ["o_proj"]),
    ({"mlp_bias": True}, ["mlp_bias"]),
    ({"architectures": ["LlamaForSequenceClassification"]}, ["LlamaForSequenceClassification"]),
    ({"model_type": "chatglm", "architectures": ["ChatGLMModel"], "rmsnorm": False, "padded_vocab_size": 96,
      "num_layers": 2, "ffn_hidden_size": 40}, ["rmsnorm"]),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "scale_attn_by_inverse_layer_idx": True},
     ["scale_attn_by_inverse_layer_idx"]),
    ({"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "moe_layer_freq": 2},
     ["moe_layer_freq"]),
])
def test_from_hf_dict_rejects_unsupported_features(patch, words):
    d = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **SMALL, "max_position_embeddings": 256,
         **patch}
    with pytest.raises(ConfigError) as e:
        from_hf_dict(d)
    for word in words:
        assert word in str(e.value)


def test_mistral_sliding_window_is_read():
    d = {"model_type": "mistral", "architectures": ["MistralForCausalLM"], **SMALL, "sliding_window": None}
    assert from_hf_dict(d).sliding_window is None
    assert from_hf_dict({**d, "sliding_window": 4096}).sliding_window == 4096


def test_required_presets_exist_with_exact_numbers():
    tiny = get_preset("llama-tiny")
    assert (tiny.vocab_size, tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads,
            tiny.num_key_value_heads, tiny.intermediate_size, tiny.max_position_embeddings,
            tiny.tie_word_embeddings) == (8192, 256, 4, 4, 2, 688, 1024, False)
    assert 1e6 < tiny.num_parameters() < 1e7
    l31 = get_preset("llama3.1-8b")
    assert l31.rope_theta == 500000.0 and l31.max_position_embeddings == 131072
    assert l31.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    l32 = get_preset("llama3.2-1b")
    assert l32.tie_word_embeddings and l32.rope_scaling.factor == 32.0 and l32.head_dim == 64
    assert get_preset("llama2-70b").num_key_value_heads == 8
    assert get_preset("qwen2.5-0.5b").tie_word_embeddings and not get_preset("qwen2.5-7b").tie_word_embeddings
    assert all(c.attention_bias for n, c in PRESETS.items() if n.startswith(("qwen1.5", "qwen2", "qwq")))
    assert not any(c.attention_bias for n, c in PRESETS.items() if n.startswith("llama"))
    assert get_preset("mistral-7b-v0.1").sliding_window == 4096
    assert get_preset("baichuan-13b").position == "alibi" and get_preset("baichuan-7b").position == "rope"
    assert get_preset("baichuan2-7b").lm_head_norm and not get_preset("baichuan-7b").lm_head_norm
    glm = get_preset("chatglm2-6b")
    assert glm.num_key_value_heads == 2 and glm.rotary_dim == 64 and glm.rope_interleaved
    gemma = get_preset("gemma-7b")
    assert gemma.head_dim == 256 and gemma.norm_type == "rmsnorm_plus_one" and gemma.hidden_act == "gelu_tanh"
    v3 = get_preset("deepseek-v3")
    assert v3.moe.scoring_func == "sigmoid" and v3.moe.topk_method == "noaux_tc" and v3.mla.q_lora_rank == 1536
    assert get_preset("qwen2-57b-a14b").moe.num_experts == 64 and get_preset("bloom-7b1").position == "alibi"
    assert get_preset("opt-350m").word_embed_proj_dim == 512 and not get_preset("opt-350m").pre_norm


@pytest.mark.parametrize("name", WEIGHT_TABLE)
def test_every_name_of_the_weight_table_resolves(name):
    config = get_config(name)
    assert config is get_preset(name.upper()) and config.num_parameters() > 1e8


@pytest.mark.parametrize("alias, name", [
    ("meta-llama/Llama-2-7b-hf", "llama2-7b"), ("meta-llama/Meta-Llama-3-8B", "llama3-8b"),
    ("Qwen/Qwen2-7B", "qwen2-7b"), ("Qwen/Qwen2.5-7B", "qwen2.5-7b"), ("huggyllama/llama-30b", "llama-30b"),
    ("meta-llama/Llama-3.1-405B", "llama3.1-405b"), ("qwen/qwen2.5-0.5b", "qwen2.5-0.5b"), ("LLaMA-Tiny", "llama-tiny"),
    ("qwen-7b", "qwen-7b"), ("meta-llama/Llama-2-13b", "llama2-13b"), ("mistralai/Mixtral-8x7B-Instruct-v0.1",
                                                                       "mixtral-8x7b"),
])
def test_aliases_resolve_to_the_same_config(alias, name):
    assert get_preset(alias) is PRESETS[name]
    assert get_config(alias) is PRESETS[name]


def test_every_alias_points_at_a_preset():
    assert set(ALIASES.values()) <= set(PRESETS)


def test_unknown_preset_lists_close_matches():
    with pytest.raises(ConfigError) as e:
        get_preset("llama2-7")
    message = str(e.value)
    assert "'llama2-7'" in message and "llama2-7b" in message and "llama-tiny" in message
    with pytest.raises(ConfigError, match="config.json"):
        get_config("no-such-model")
    assert get_preset("THUDM/chatglm-6b").model_type == "glm"      # GLM v1 is built (tests/models/test_glm.py)
