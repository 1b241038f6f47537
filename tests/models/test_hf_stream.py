"""HF checkpoints written one parameter at a time (llmpre.models.hf_stream): the files equal
what safetensors' own writer makes of the whole converted model (names, dtypes, values,
metadata, config.json), single file and sharded, and no more than one rule's parameters
are ever held."""

import json
import struct
import weakref

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.paddle import save_file

from llmpre.cli import main
from llmpre.errors import ConfigError
from llmpre.models import PRESETS, build_model, from_pretrained, save_pretrained
from llmpre.models.hf import hf_state_dict
from llmpre.models.hf_config import to_hf_dict
from llmpre.models.hf_names import checkpoint_rules
from llmpre.models.hf_stream import header, save_streamed
from llmpre.train.checkpoint import save_checkpoint
from llmpre.train.engine import to_numpy

from .test_config import scaled_down
from .test_hf_io import CONFIGS

# one per layout kind: copy/linear (llama-tiny itself), tied embeddings, rows with biases
# (Qwen v1 c_attn), cols (GPT-2 Conv1D), heads3 (Bloom), yuan_qk (two tensors from one
# rule), MLA + MoE (DeepSeek-V3)
FAMILIES = {"llama-tiny": PRESETS["llama-tiny"], "qwen2-tied": CONFIGS["qwen2-tied"],
            "qwen-7b": scaled_down(PRESETS["qwen-7b"]), "gpt2-en": scaled_down(PRESETS["gpt2-en"]),
            "bloom-560m": scaled_down(PRESETS["bloom-560m"]), "yuan2-2b": scaled_down(PRESETS["yuan2-2b"]),
            "deepseek-v3": scaled_down(PRESETS["deepseek-v3"])}


def reference_save(model, path, metadata=None):
    """The whole-model writer save_pretrained used before streaming: every tensor converted
    at once (hf_state_dict) and written by safetensors itself."""
    path.mkdir(parents=True)
    save_file(hf_state_dict(model), str(path / "model.safetensors"), metadata={**(metadata or {}), "format": "pt"})
    config = to_hf_dict(model.config)
    config["torch_dtype"] = str(next(iter(model.parameters())).dtype).replace("paddle.", "")
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_dir(path):
    """{name: (dtype, bytes as numpy)} of every tensor, metadata per file, config dict."""
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    tensors, metas = {}, []
    for name in files:
        with safe_open(str(path / name), framework="paddle") as f:
            metas.append(f.metadata())
            for k in f.keys():
                t = f.get_tensor(k)
                tensors[k] = (str(t.dtype), t.numpy())     # bf16 as its uint16 bits
    return tensors, metas, json.loads((path / "config.json").read_text())


def assert_same(got_dir, ref_dir):
    got, got_meta, got_config = read_dir(got_dir)
    ref, ref_meta, ref_config = read_dir(ref_dir)
    assert sorted(got) == sorted(ref)
    for k in ref:
        assert got[k][0] == ref[k][0], k
        assert got[k][1].dtype == ref[k][1].dtype and got[k][1].shape == ref[k][1].shape, k
        np.testing.assert_array_equal(got[k][1], ref[k][1], err_msg=k)
    assert all(m == ref_meta[0] for m in got_meta)
    assert got_config == ref_config


def numpy_params(model):
    params = dict(model.named_parameters())
    return {n: list(p.shape) for n, p in params.items()}, lambda n: to_numpy(params[n])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_streamed_files_equal_the_whole_model_writers(family, tmp_path):
    model = build_model(FAMILIES[family], seed=5)
    meta = {"llmpre_step": "7"}
    reference_save(model, tmp_path / "ref", meta)
    shapes, tensor = numpy_params(model)
    total = save_streamed(model.config, shapes, tensor, tmp_path / "one", metadata=meta)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["config.json", "model.safetensors"]
    assert_same(tmp_path / "one", tmp_path / "ref")

    # capped: several shards and an index, the same tensors
    cap = total // 3
    save_streamed(model.config, shapes, tensor, tmp_path / "sharded", max_shard_bytes=cap, metadata=meta)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert index["metadata"]["total_size"] == total
    for name in files:
        with safe_open(str(tmp_path / "sharded" / name), framework="np") as f:
            keys = list(f.keys())
            assert keys and all(index["weight_map"][k] == name for k in keys)
            sizes = [f.get_slice(k).get_shape() for k in keys]
        nbytes = sum(int(np.prod(s)) * 4 for s in sizes)
        assert nbytes <= cap or len(keys) == 1, name
    assert_same(tmp_path / "sharded", tmp_path / "ref")

    loaded = from_pretrained(tmp_path / "sharded")
    for (n, a), b in zip(model.named_parameters(), loaded.parameters()):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=n)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cast_while_streaming_equals_casting_the_model(dtype, tmp_path):
    """export-hf --dtype from fp32 values, and a bf16 run's values passed as fp32 (numpy has
    no bf16): the files equal those of the model cast to ``dtype``."""
    model = build_model(FAMILIES["qwen-7b"], seed=2)
    shapes, tensor = numpy_params(model)
    save_streamed(model.config, shapes, tensor, tmp_path / "cast", dtype=dtype)
    half = build_model(FAMILIES["qwen-7b"], seed=2).to(dtype=dtype)
    reference_save(half, tmp_path / "ref")
    assert_same(tmp_path / "cast", tmp_path / "ref")
    shapes, tensor = numpy_params(half)                 # bf16 -> fp32 numpy -> bf16 on disk
    save_streamed(half.config, shapes, tensor, tmp_path / "again", dtype=dtype, max_shard_bytes=10_000)
    assert_same(tmp_path / "again", tmp_path / "ref")
    save_pretrained(half, tmp_path / "params")          # Paddle tensors of the model's dtype
    assert_same(tmp_path / "params", tmp_path / "ref")


@pytest.mark.parametrize("family", ["llama-tiny", "qwen-7b", "yuan2-2b"])
def test_at_most_one_rules_parameters_are_held(family, tmp_path):
    model = build_model(FAMILIES[family], seed=0)
    params = {n: p.numpy() for n, p in model.named_parameters()}
    largest = max(sum(params[o].nbytes for o in rule.ours) for rule in checkpoint_rules(model.config))
    held = {"now": 0, "peak": 0, "calls": 0}

    def release(nbytes):
        held["now"] -= nbytes

    def tensor(name):
        value = params[name].copy()                   # a fresh array, as a checkpoint read gives
        held["now"] += value.nbytes
        held["peak"] = max(held["peak"], held["now"])
        held["calls"] += 1
        weakref.finalize(value, release, value.nbytes)
        return value

    save_streamed(model.config, {n: list(a.shape) for n, a in params.items()}, tensor, tmp_path,
                  max_shard_bytes=100_000)
    assert held["calls"] == sum(len(r.ours) for r in checkpoint_rules(model.config))
    assert 0 < held["peak"] <= largest, (held, largest)
    assert held["now"] == 0


def test_file_layout_follows_the_safetensors_format(tmp_path):
    model = build_model(CONFIGS["llama"], seed=0)
    shapes, tensor = numpy_params(model)
    total = save_streamed(model.config, shapes, tensor, tmp_path, metadata={"llmpre_step": "3"})
    raw = (tmp_path / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and len(raw) == 8 + n + total
    head = json.loads(raw[8:8 + n])
    assert head.pop("__metadata__") == {"llmpre_step": "3", "format": "pt"}
    spans = sorted(v["data_offsets"] for v in head.values())
    assert spans[0][0] == 0 and spans[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))      # no gaps, no overlaps
    assert all(len(header([("x", [k], 4 * k)], "float32", {"a": "b" * k})) % 8 == 0 for k in range(9))
    with pytest.raises(ValueError, match="str to str"):
        header([], "float32", {"step": 3})


def test_a_failed_save_leaves_the_previous_weights_and_no_temporaries(tmp_path):
    model = build_model(CONFIGS["llama"], seed=0)
    shapes, tensor = numpy_params(model)
    save_streamed(model.config, shapes, tensor, tmp_path, metadata={"llmpre_step": "1"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(name):
        if name.startswith("layers.1."):
            raise OSError(28, "No space left on device")
        return tensor(name)

    with pytest.raises(OSError, match="No space left"):
        save_streamed(model.config, shapes, broken, tmp_path, max_shard_bytes=5_000, metadata={"llmpre_step": "2"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    wrong = dict(shapes, **{"norm.weight": [3]})
    with pytest.raises(ConfigError, match="norm.weight has shape"):
        save_streamed(model.config, wrong, tensor, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(ConfigError, match="no values for parameter"):
        save_streamed(model.config, {k: v for k, v in shapes.items() if k != "norm.weight"}, tensor,
                      tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_resharding_removes_the_other_sharding(tmp_path):
    model = build_model(CONFIGS["llama"], seed=0)
    shapes, tensor = numpy_params(model)
    save_streamed(model.config, shapes, tensor, tmp_path)
    save_streamed(model.config, shapes, tensor, tmp_path, max_shard_bytes=20_000)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    save_streamed(model.config, shapes, tensor, tmp_path, max_shard_bytes=40_000)
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len({s.rsplit("-of-", 1)[1] for s in shards}) == 1          # no shard of the 20KB save left
    loaded = from_pretrained(tmp_path)
    for (n, a), b in zip(model.named_parameters(), loaded.parameters()):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=n)


def test_export_hf_of_a_training_checkpoint_streams_with_dtype_and_cap(tmp_path):
    config = FAMILIES["qwen2-tied"]
    model = build_model(config, seed=3)
    arrays = {n: p.numpy() for n, p in model.named_parameters()}
    state = {"global_step": 2, "model_config": to_hf_dict(config)}
    ckpt = save_checkpoint(str(tmp_path / "run"), 2, {
        "model.safetensors": lambda p: save_numpy(arrays, p),
        "trainer_state.json": lambda p: open(p, "w").write(json.dumps(state)),
    })
    r = CliRunner().invoke(main, ["export-hf", ckpt, str(tmp_path / "hf"), "--dtype", "bfloat16",
                                  "--max-shard-size", "20KB", "--style", "v5"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and f"{sum(a.size for a in arrays.values()):,} parameters" in r.output
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    half = build_model(config, seed=3).to(dtype="bfloat16")
    reference_save(half, tmp_path / "ref")
    got, _, got_config = read_dir(tmp_path / "hf")
    ref, _, _ = read_dir(tmp_path / "ref")
    assert got.keys() == ref.keys() and got_config["dtype"] == "bfloat16"
    for k in ref:
        assert got[k][0] == ref[k][0] == "paddle.bfloat16", k
        np.testing.assert_array_equal(got[k][1], ref[k][1], err_msg=k)
