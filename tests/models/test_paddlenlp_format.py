"""PaddleNLP checkpoints both ways: the PaddleNLP-saved fixtures reproduce PaddleNLP's logits
(safetensors and pdparams, single and sharded, whole and by regions), fused layouts read as
PaddleNLP splits them, ``export-hf --style paddlenlp`` writes what PaddleNLP writes, and
every family PaddleNLP 2.8.1 has round-trips through llmpre's writer and reader.

Fixtures: ../shared/fixtures/paddlenlp_ckpt (GPT and QWen saved by PaddleNLP 2.8.1 with the
logits PaddleNLP computed; skipped when absent).
"""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import paddle
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.numpy import save_file

from llmpre.cli import main
from llmpre.errors import ConfigError
from llmpre.models import PRESETS, build_model, from_pretrained, get_config, init
from llmpre.models.hf_load import open_pretrained
from llmpre.models.paddlenlp_format import is_paddlenlp_dir, save_paddlenlp
from llmpre.models.paddlenlp_names import FAMILIES as FAMILY_TYPES

from .test_config import scaled_down

CKPT = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "paddlenlp_ckpt"
DIRS = ["gpt_safetensors", "gpt_pdparams", "qwen_safetensors", "qwen_pdparams"]
# max|llmpre - PaddleNLP| / max|PaddleNLP logits|, measured: gpt 2.0e-7, qwen 4.0e-7 (both formats);
# the bound is 5x the larger (two fp32 implementations summing in different orders).
LOGITS_REL = 2e-6


def fixture(name) -> Path:
    path = CKPT / name
    if not path.is_dir():
        pytest.skip(f"reference fixture absent: {path}")
    return path


def params(model) -> dict:
    return {n: p.numpy() for n, p in model.named_parameters()}


def logits(model, ids) -> np.ndarray:
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(ids)).numpy()


def stored(path: Path) -> dict:
    """name -> array of a PaddleNLP checkpoint directory (its single file)."""
    if (path / "model.safetensors").is_file():
        with safe_open(str(path / "model.safetensors"), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    return dict(paddle.load(str(path / "model_state.pdparams"), return_numpy=True))


@pytest.mark.parametrize("name", DIRS)
def test_paddlenlp_saved_models_reproduce_paddlenlp_logits(name):
    path = fixture(name)
    assert is_paddlenlp_dir(path)
    model = from_pretrained(path)
    ref = np.load(path / "logits.npy")
    got = logits(model, np.load(path / "input_ids.npy"))
    assert np.abs(got - ref).max() / np.abs(ref).max() < LOGITS_REL
    assert model.config.model_type == {"gpt": "gpt2", "qwen": "qwen"}[name.split("_")[0]]


@pytest.mark.parametrize("name", ["gpt_safetensors", "qwen_pdparams"])
def test_region_reads_equal_the_whole_load(name):
    """continue_training's reader (each parameter reads the regions asked of it) gives the
    bits from_pretrained gives, for whole parameters and for tensor-parallel-like slices."""
    path = fixture(name)
    whole = params(from_pretrained(path))
    model, reader = open_pretrained(path)
    with reader:
        for n, p in model.named_parameters():
            if p.ndim == 2:
                a, b = p.shape[1] // 4, p.shape[1] // 2          # a column slice, as a column-parallel rank
                np.testing.assert_array_equal(init.value(p, [(0, p.shape[0]), (a, b)]).numpy(), whole[n][:, a:b])
        init.materialize(model)
        assert reader.bytes_read > 0
    for n, v in params(model).items():
        np.testing.assert_array_equal(v, whole[n], err_msg=n)


def _split(src: Path, dst: Path, fmt: str) -> None:
    """``src`` re-saved as two shards with PaddleNLP's file names and index."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "model_state.pdparams"))
    tensors = stored(src)
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    if fmt == "safetensors":
        files, index = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)], "model.safetensors.index.json"
        for file, part in zip(files, halves):
            save_file({k: tensors[k] for k in part}, str(dst / file), metadata={"format": "np"})
    else:
        files, index = [f"model_state-0000{i}-of-00002.pdparams" for i in (1, 2)], "model_state.pdparams.index.json"
        for file, part in zip(files, halves):
            paddle.save({k: paddle.to_tensor(tensors[k]) for k in part}, str(dst / file))
    weight_map = {k: f for f, part in zip(files, halves) for k in part}
    (dst / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


@pytest.mark.parametrize("name", ["gpt_safetensors", "qwen_pdparams"])
def test_sharded_checkpoints_load_identically(name, tmp_path):
    path = fixture(name)
    fmt = name.split("_")[1]
    _split(path, tmp_path / "sharded", fmt)
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    assert is_paddlenlp_dir(tmp_path / "sharded")
    want = params(from_pretrained(path))
    for loaded in (from_pretrained(tmp_path / "sharded"), _materialized(tmp_path / "sharded")):
        got = params(loaded)
        assert got.keys() == want.keys()
        for n in want:
            np.testing.assert_array_equal(got[n], want[n], err_msg=n)


def _materialized(path, **kw):
    model, reader = open_pretrained(path, **kw)
    with reader:
        init.materialize(model)
    return model


def _fuse_per_kv_head(q, k, v, kv_heads, head_dim):
    """PaddleNLP's fused ``qkv_proj`` ``[in, out]``, built by reshapes: for each KV head its
    query heads, then its key, then its value (paddlenlp fuse_param_func's order)."""
    rows = q.shape[0]
    q = q.reshape(rows, kv_heads, -1, head_dim)                   # [in, kv, g, d]
    k = k.reshape(rows, kv_heads, 1, head_dim)
    v = v.reshape(rows, kv_heads, 1, head_dim)
    return np.concatenate([q, k, v], axis=2).reshape(rows, -1)


@pytest.mark.parametrize("preset,fuse_ffn", [("llama2-70b", True), ("gpt2-en", False)])
def test_fused_projections_read_as_paddlenlp_splits_them(preset, fuse_ffn, tmp_path):
    """A checkpoint saved with fuse_attention_qkv / fuse_attention_ffn (GQA for LLaMA: 4 query
    heads on 2 KV heads; GPT: one [q|k|v] block per head) loads as its unfused twin."""
    config = scaled_down(PRESETS[preset])
    model = build_model(config, seed=5)
    save_paddlenlp(config, {n: p.shape for n, p in model.named_parameters()}, dict(model.named_parameters()).get,
                   tmp_path / "plain")
    tensors = stored(tmp_path / "plain")
    fused = dict(tensors)
    for i in range(config.num_hidden_layers):
        a = (f"llama.layers.{i}.self_attn." if config.model_type == "llama" else f"gpt.decoder.layers.{i}.self_attn.")
        for kind in ("weight", "bias") if config.attention_bias else ("weight",):
            q, k, v = (fused.pop(f"{a}{p}_proj.{kind}") for p in "qkv")
            if kind == "bias":
                q, k, v = q[None], k[None], v[None]
            f = _fuse_per_kv_head(q, k, v, config.num_key_value_heads, config.head_dim)
            fused[f"{a}qkv_proj.{kind}"] = f[0] if kind == "bias" else f
        if fuse_ffn:
            m = f"llama.layers.{i}.mlp."
            fused[m + "gate_up_fused_proj.weight"] = np.concatenate(
                [fused.pop(m + "gate_proj.weight"), fused.pop(m + "up_proj.weight")], axis=1)
    (tmp_path / "fused").mkdir()
    shutil.copy(tmp_path / "plain" / "config.json", tmp_path / "fused")
    save_file(fused, str(tmp_path / "fused" / "model.safetensors"), metadata={"format": "np"})
    want = params(model)
    for loaded in (from_pretrained(tmp_path / "fused"), _materialized(tmp_path / "fused")):
        for n, v in params(loaded).items():
            np.testing.assert_array_equal(v, want[n], err_msg=n)
    probe, reader = open_pretrained(tmp_path / "fused")      # a rank's column slice of k_proj
    with reader:
        p = dict(probe.named_parameters())["layers.1.self_attn.k_proj.weight"]
        half = p.shape[1] // 2
        np.testing.assert_array_equal(init.value(p, [(0, p.shape[0]), (half, p.shape[1])]).numpy(),
                                      want["layers.1.self_attn.k_proj.weight"][:, half:])


@pytest.mark.parametrize("name", ["gpt_safetensors", "qwen_pdparams"])
def test_export_writes_what_paddlenlp_saved(name, tmp_path):
    """export-hf --style paddlenlp of a PaddleNLP-saved model gives PaddleNLP's own tensor
    names, shapes and values (the fixture's key set), format np, its model_type and
    architectures, and reloads with the same logits."""
    path = fixture(name)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export-hf", str(path), str(out), "--style", "paddlenlp"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(out / "model.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "np"}
        written = {k: f.get_tensor(k) for k in f.keys()}
    saved = stored(path)
    assert written.keys() == saved.keys()
    for k in saved:
        np.testing.assert_array_equal(written[k], saved[k], err_msg=k)
    ours, theirs = json.loads((out / "config.json").read_text()), json.loads((path / "config.json").read_text())
    for key in ("architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size"):
        assert ours[key] == theirs[key], key
    assert get_config(out) == get_config(path)
    ids = np.load(path / "input_ids.npy")
    np.testing.assert_array_equal(logits(from_pretrained(out), ids), logits(from_pretrained(path), ids))


FAMILIES = ["llama-tiny", "baichuan-13b", "qwen-7b", "gpt2-en", "mixtral-8x7b", "chatglm2-6b", "bloom-560m",
            "opt-125m", "opt-350m"]


@pytest.mark.parametrize("preset", FAMILIES)
def test_every_paddlenlp_family_round_trips(preset, tmp_path):
    config = scaled_down(PRESETS[preset])
    model = build_model(config, seed=11)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    save_paddlenlp(config, shapes, dict(model.named_parameters()).get, tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "paddlenlp_version" in saved and saved["model_type"] == FAMILY_TYPES[config.model_type][0]
    again = from_pretrained(tmp_path)
    want = params(model)
    if config.model_type == "opt" and config.tie_word_embeddings:   # PaddleNLP's OPT head is its own matrix
        assert not again.config.tie_word_embeddings
        np.testing.assert_array_equal(params(again).pop("lm_head.weight"), want["embed_tokens.weight"].T)
        again_params = {k: v for k, v in params(again).items() if k != "lm_head.weight"}
    else:
        assert again.config == config
        again_params = params(again)
    assert again_params.keys() == want.keys()
    for n in want:
        np.testing.assert_array_equal(again_params[n], want[n], err_msg=n)


def test_bfloat16_is_written_as_paddlenlp_writes_it(tmp_path):
    config = scaled_down(PRESETS["llama-tiny"])
    model = build_model(config, seed=2)
    save_paddlenlp(config, {n: p.shape for n, p in model.named_parameters()}, dict(model.named_parameters()).get,
                   tmp_path, dtype="bfloat16")
    raw = (tmp_path / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"U16"}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    again = from_pretrained(tmp_path, dtype="bfloat16")
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(dict(again.named_parameters())[n].astype("float32").numpy(),
                                      p.astype("bfloat16").astype("float32").numpy(), err_msg=n)


@pytest.mark.parametrize("preset", ["qwen1.5-7b", "gemma-2b", "mistral-7b-v0.1", "deepseek-v2-lite"])
def test_families_paddlenlp_lacks_are_refused(preset, tmp_path):
    config = scaled_down(PRESETS[preset])
    with pytest.raises(ConfigError, match="PaddleNLP 2.8.1 has no such model"):
        save_paddlenlp(config, {}, None, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_tied_llama_is_refused(tmp_path):
    config = scaled_down(PRESETS["llama-tiny"]).replace(tie_word_embeddings=True)
    with pytest.raises(ConfigError, match="cannot tie"):
        save_paddlenlp(config, {}, None, tmp_path)


def test_a_mismatched_checkpoint_is_one_error_naming_file_tensor_and_shapes(tmp_path):
    path = fixture("gpt_safetensors")
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    tensors = stored(path)
    tensors["gpt.decoder.layers.1.linear1.weight"] = tensors["gpt.decoder.layers.1.linear1.weight"][:, :100]
    del tensors["gpt.decoder.norm.bias"]
    tensors["gpt.decoder.layers.9.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "np"})
    with pytest.raises(ConfigError) as e:
        from_pretrained(bad)
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "shape mismatch gpt.decoder.layers.1.linear1.weight (model.safetensors): checkpoint [64, 100], " \
           "config.json expects [64, 256]" in msg
    assert "missing tensor gpt.decoder.norm.bias" in msg and "unexpected tensor gpt.decoder.layers.9.extra" in msg


def test_a_damaged_pdparams_is_one_error(tmp_path):
    path = fixture("qwen_pdparams")
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    (bad / "model_state.pdparams").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="model_state.pdparams: cannot read it as a Paddle state dict"):
        from_pretrained(bad)


def test_the_first_layers_of_a_deeper_checkpoint(tmp_path):
    """num_hidden_layers below the checkpoint's depth reads layers 0..N-1 (PaddleNLP's
    behaviour); above it is refused."""
    path = fixture("qwen_safetensors")
    full = params(from_pretrained(path))
    one = get_config(path).replace(num_hidden_layers=1)
    got = params(_materialized(path, config=one))
    assert got.keys() == {n for n in full if not n.startswith("layers.1.")}
    for n in got:
        np.testing.assert_array_equal(got[n], full[n], err_msg=n)
    with pytest.raises(ConfigError, match="has only 2 layers"):
        open_pretrained(path, config=one.replace(num_hidden_layers=3))


def test_export_a_training_checkpoint_for_paddlenlp_in_shards(tmp_path):
    from .test_export_partial import checkpoint

    model, ckpt = checkpoint(tmp_path)
    out = tmp_path / "pnlp"
    result = CliRunner().invoke(main, ["export-hf", ckpt, str(out), "--style", "paddlenlp", "--max-shard-size", "20KB"])
    assert result.exit_code == 0 and "PaddleNLP layout" in result.output, result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(set(index.values()))
    assert len(shards) > 1 and sorted(p.name for p in out.glob("model-*")) == shards
    assert all(name.startswith(("llama.", "lm_head.")) for name in index)
    for shard in shards:
        with safe_open(str(out / shard), framework="np") as f:
            assert f.metadata() == {"format": "np"}
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    want = params(model)
    for n, v in params(from_pretrained(out)).items():
        np.testing.assert_array_equal(v, want[n], err_msg=n)
