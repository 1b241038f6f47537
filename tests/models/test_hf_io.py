"""HF checkpoint reading and writing: round trips, layouts, sharding and error reports."""

import json
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from llmpre.errors import ConfigError
from llmpre.models import PRESETS, ModelConfig, build_model, from_pretrained, get_config, save_pretrained

from .test_config import SCALED, scaled_down

SCALED_BY_NAME = {name: scaled_down(config) for name, config in PRESETS.items()}

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "hf"

# Non-square everywhere (hidden 24, q 32, kv 16, intermediate 40) so a missed transpose shows.
TINY = dict(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=32)
CONFIGS = {
    "llama": ModelConfig(**TINY),
    "qwen2-tied": ModelConfig(**TINY, model_type="qwen2", attention_bias=True, tie_word_embeddings=True),
}


def fixture_dir(name):
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"HF parity fixtures absent: {path}")
    return path


def _params(model):
    return {n: p.numpy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_save_then_load_is_bit_identical(kind, tmp_path):
    model = build_model(CONFIGS[kind], seed=3)
    save_pretrained(model, tmp_path / "ckpt")
    again = from_pretrained(tmp_path / "ckpt")
    assert again.config == model.config
    before, after = _params(model), _params(again)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    ids = paddle.to_tensor([[1, 5, 7, 9, 2]])
    np.testing.assert_array_equal(again(ids).numpy(), model(ids).numpy())
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_layout_on_disk_is_hf(tmp_path):
    model = build_model(CONFIGS["qwen2-tied"], seed=0)
    save_pretrained(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt"}  # transformers refuses files without it
        keys = set(f.keys())
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in keys                                           # tied
    assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (32, 24)  # [out, in]
    assert tensors["model.layers.0.self_attn.k_proj.bias"].shape == (16,)
    assert tensors["model.layers.1.mlp.down_proj.weight"].shape == (24, 40)
    assert tensors["model.embed_tokens.weight"].shape == (50, 24)
    np.testing.assert_array_equal(tensors["model.layers.1.mlp.up_proj.weight"],
                                  model.layers[1].mlp.up_proj.weight.numpy().T)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["torch_dtype"] == "float32"
    assert config["rope_theta"] == 10000.0 and config["tie_word_embeddings"] is True


def test_save_in_v5_style_and_fixture_keys_line_up(tmp_path):
    ref = fixture_dir("llama")
    model = from_pretrained(ref)
    save_pretrained(model, tmp_path, style="v5")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert config["dtype"] == "float32"
    # Same tensor names, shapes and bytes as the transformers-written fixture.
    ours, theirs = load_file(str(tmp_path / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_bfloat16_load_and_round_trip(tmp_path):
    model = build_model(CONFIGS["llama"], seed=1)
    save_pretrained(model, tmp_path / "fp32")
    half = from_pretrained(tmp_path / "fp32", dtype="bfloat16")
    assert all(p.dtype == paddle.bfloat16 for p in half.parameters())
    w32 = model.layers[0].self_attn.q_proj.weight
    np.testing.assert_array_equal(half.layers[0].self_attn.q_proj.weight.astype("float32").numpy(),
                                  w32.astype("bfloat16").astype("float32").numpy())
    save_pretrained(half, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = from_pretrained(tmp_path / "bf16", dtype="bfloat16")
    for (name, a), b in zip(half.named_parameters(), again.parameters()):
        np.testing.assert_array_equal(a.astype("float32").numpy(), b.astype("float32").numpy(), err_msg=name)


def test_sharded_checkpoint(tmp_path):
    model = build_model(CONFIGS["llama"], seed=2)
    save_pretrained(model, tmp_path / "single")
    tensors = load_file(str(tmp_path / "single" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    out = tmp_path / "sharded"
    out.mkdir()
    shutil.copy(tmp_path / "single" / "config.json", out / "config.json")
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(out / file), metadata={"format": "pt"})
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded = from_pretrained(out)
    for name, value in _params(model).items():
        np.testing.assert_array_equal(_params(loaded)[name], value, err_msg=name)
    (out / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConfigError, match="model-00002-of-00002.safetensors"):
        from_pretrained(out)


def _saved(tmp_path, kind="llama"):
    model = build_model(CONFIGS[kind], seed=0)
    save_pretrained(model, tmp_path)
    return load_file(str(tmp_path / "model.safetensors"))


def test_missing_unexpected_and_misshaped_tensors_are_all_named(tmp_path):
    tensors = _saved(tmp_path)
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    tensors["model.layers.0.mlp.gate_proj.weight"] = np.zeros((41, 24), np.float32)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros((32,), np.float32)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros((4,), np.float32)  # old HF buffer: ignored
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError) as e:
        from_pretrained(tmp_path)
    message = str(e.value)
    assert "3 problem" in message and str(tmp_path) in message
    assert "missing tensor model.layers.1.self_attn.v_proj.weight" in message
    assert "unexpected tensor model.layers.0.self_attn.q_proj.bias" in message
    assert "shape mismatch model.layers.0.mlp.gate_proj.weight: checkpoint [41, 24], config expects [40, 24]" \
        in message
    assert "inv_freq" not in message


def test_config_that_disagrees_with_weights(tmp_path):
    _saved(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(ConfigError) as e:
        from_pretrained(tmp_path)
    assert "mlp.up_proj.weight" in str(e.value) and "[48, 24]" in str(e.value)


def test_tied_checkpoint_carrying_lm_head_is_accepted(tmp_path):
    tensors = _saved(tmp_path, "qwen2-tied")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = from_pretrained(tmp_path)
    assert model.lm_head.tied is not None and "lm_head.weight" not in dict(model.named_parameters())


def test_unsupported_architecture_names_the_model_type(tmp_path):
    save_pretrained(build_model(CONFIGS["llama"], seed=0), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox",
                                                      "architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(ConfigError) as e:
        from_pretrained(tmp_path)
    assert "gpt_neox" in str(e.value) and "config.json" in str(e.value)


@pytest.mark.parametrize("config", list(SCALED), ids=list(SCALED.values()))
def test_every_architecture_round_trips_bit_identically(config, tmp_path):
    model = build_model(config, seed=5)
    with paddle.no_grad():  # non-trivial values everywhere (norms and biases too)
        for p in model.parameters():
            p.set_value(p + 0.1 * paddle.randn(p.shape))
    save_pretrained(model, tmp_path / "ckpt")
    again = from_pretrained(tmp_path / "ckpt")
    assert again.config == model.config
    before, after = _params(model), _params(again)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    ids = paddle.to_tensor([[1, 5, 7, 9, 2, 3]])
    np.testing.assert_array_equal(again(ids).numpy(), model(ids).numpy())
    # and again through the transformers-5 key style
    save_pretrained(again, tmp_path / "v5", style="v5")
    assert "dtype" in json.loads((tmp_path / "v5" / "config.json").read_text())
    assert from_pretrained(tmp_path / "v5").config == model.config


def test_save_in_shards_writes_an_index_and_loads_back(tmp_path):
    model = build_model(SCALED_BY_NAME["mixtral-8x7b"], seed=4)
    save_pretrained(model, tmp_path, max_shard_bytes=20_000)
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert "model.layers.0.block_sparse_moe.experts.3.w2.weight" in index["weight_map"]
    loaded = from_pretrained(tmp_path)
    for name, value in _params(model).items():
        np.testing.assert_array_equal(_params(loaded)[name], value, err_msg=name)
    save_pretrained(loaded, tmp_path)                  # re-saving unsharded removes the old shards
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("name, tensor, shape", [
    ("baichuan2-13b", "model.layers.0.self_attn.W_pack.weight", [96, 32]),
    ("qwen-7b", "transformer.h.1.attn.c_attn.bias", [96]),
    ("qwen-7b", "transformer.h.1.mlp.w2.weight", [48, 32]),
    ("chatglm2-6b", "transformer.encoder.layers.0.self_attention.query_key_value.weight", [64, 32]),
    ("chatglm2-6b", "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight", [96, 32]),
    ("chatglm2-6b", "transformer.output_layer.weight", [64, 32]),
    ("gpt2-en", "transformer.h.0.attn.c_attn.weight", [32, 96]),
    ("bloom-560m", "transformer.h.0.self_attention.query_key_value.bias", [96]),
    ("bloom-560m", "transformer.h.0.mlp.dense_h_to_4h.weight", [128, 32]),
    ("opt-350m", "model.decoder.project_in.weight", [32, 16]),
    ("deepseek-v3", "model.layers.1.mlp.gate.e_score_correction_bias", [4]),
    ("deepseek-v2-lite", "model.layers.1.mlp.shared_experts.down_proj.weight", [32, 32]),
    ("qwen1.5-moe-a2.7b", "model.layers.0.mlp.shared_expert_gate.weight", [1, 32]),
    ("yuan2-2b", "model.layers.0.self_attn.lf_gate.conv1.weight", [16, 32, 2, 1]),
])
def test_fused_and_family_specific_tensors_on_disk(name, tensor, shape, tmp_path):
    save_pretrained(build_model(SCALED_BY_NAME[name], seed=0), tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="np") as f:
        assert list(f.get_slice(tensor).get_shape()) == shape


def test_deepseek_v3_multi_token_prediction_layer_is_ignored(tmp_path):
    model = build_model(SCALED_BY_NAME["deepseek-v3"], seed=0)
    save_pretrained(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.2.eh_proj.weight"] = np.zeros((32, 64), np.float32)   # layer num_hidden_layers: MTP
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    from_pretrained(tmp_path)


def test_missing_files_are_reported_with_paths(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        from_pretrained(tmp_path)
    save_pretrained(build_model(CONFIGS["llama"], seed=0), tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="pytorch_model.bin"):
        from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        from_pretrained(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="dtype='fp16'"):
        from_pretrained(tmp_path, dtype="fp16")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="JSON"):
        get_config(tmp_path)
