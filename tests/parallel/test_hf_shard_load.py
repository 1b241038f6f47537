"""continue_training's shard-local HF loading (llmpre.models.hf_load): any rank of any layout,
built in one process, reads only its own slices of the checkpoint (counted at safetensors)
and holds exactly what the former path held: ``from_pretrained`` of the whole model,
``Precision.prepare_model``, then ``parallelize``."""

from __future__ import annotations

import re

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from models.test_config import scaled_down  # noqa: E402
from read_counting import ReadCounter  # noqa: E402

from llmpre.errors import ConfigError  # noqa: E402
from llmpre.models import PRESETS, build_model, from_pretrained, get_config, hf, hf_load, init  # noqa: E402
from llmpre.models import save_pretrained  # noqa: E402
from llmpre.parallel.dims import ParallelDims  # noqa: E402
from llmpre.parallel.env import detached_env  # noqa: E402
from llmpre.parallel.parallelize import parallelize  # noqa: E402
from llmpre.parallel.tensor_parallel import TP_SPLIT  # noqa: E402
from llmpre.train.precision import Precision  # noqa: E402


def _cfg(**changes):
    base = dict(num_hidden_layers=4, vocab_size=512, hidden_size=64, intermediate_size=192,
                num_attention_heads=8, num_key_value_heads=4)
    return get_config("llama-tiny").replace(**{**base, **changes})


FP32, O2 = Precision(), Precision("bfloat16", "O2")
# name: (dims, config, save_pretrained options, checkpoint dtype, precision)
LAYOUTS = {
    "tp2": (ParallelDims(tp=2), _cfg(), {}, "float32", FP32),
    "pp2": (ParallelDims(pp=2), _cfg(), {}, "float32", FP32),
    "tp2 x pp2": (ParallelDims(tp=2, pp=2), _cfg(), {}, "float32", FP32),
    "tied embedding, tp2 x pp2": (ParallelDims(tp=2, pp=2), _cfg(tie_word_embeddings=True), {}, "float32", FP32),
    "qwen2 q/k/v biases, tp2 sp": (ParallelDims(tp=2, sequence_parallel=True),
                                   _cfg(attention_bias=True, model_type="qwen2"), {}, "float32", FP32),
    "tp4, 2 kv heads (replicated k/v)": (ParallelDims(tp=4), _cfg(num_key_value_heads=2), {}, "float32", FP32),
    "sharded files + index, tp2 x pp2": (ParallelDims(tp=2, pp=2), _cfg(), {"max_shard_bytes": 100_000},
                                         "float32", FP32),
    "O2 from an fp32 checkpoint, tp2": (ParallelDims(tp=2), _cfg(), {}, "float32", O2),
    "O2 from a bf16 checkpoint, tp2 x pp2": (ParallelDims(tp=2, pp=2), _cfg(), {}, "bfloat16", O2),
    # the fused and permuted layouts of hf_names: rows (+ biases), cols, heads3, yuan_qk
    "qwen c_attn (fused rows, biases), tp2": (ParallelDims(tp=2), scaled_down(PRESETS["qwen-7b"]), {},
                                              "float32", FP32),
    "baichuan W_pack, tp2 x pp2": (ParallelDims(tp=2, pp=2), scaled_down(PRESETS["baichuan2-13b"]), {},
                                   "float32", FP32),
    "chatglm fused qkv + gate/up, tp2": (ParallelDims(tp=2), scaled_down(PRESETS["chatglm2-6b"]), {},
                                         "float32", FP32),
    "gpt2 c_attn (fused cols), tp2": (ParallelDims(tp=2), scaled_down(PRESETS["gpt2-en"]), {}, "float32", FP32),
    "bloom q/k/v per head, tp2": (ParallelDims(tp=2), scaled_down(PRESETS["bloom-560m"]), {}, "float32", FP32),
    "yuan q/k interleaved, tp2": (ParallelDims(tp=2), scaled_down(PRESETS["yuan2-2b"]), {}, "float32", FP32),
    "opt projected embeddings, tp2 x pp2": (ParallelDims(tp=2, pp=2), scaled_down(PRESETS["opt-350m"]), {},
                                            "float32", FP32),
    "chatglm2 one kv head (replicated), tp2 sp": (ParallelDims(tp=2, sequence_parallel=True),
                                                  scaled_down(PRESETS["chatglm2-6b"]).replace(num_key_value_heads=1),
                                                  {}, "float32", FP32),
    # MoE: each expert's (and the shared expert's) columns / rows; MLA: columns of this rank's heads
    "mixtral experts, tp2 x pp2": (ParallelDims(tp=2, pp=2), scaled_down(PRESETS["mixtral-8x7b"]), {},
                                   "float32", FP32),
    "qwen-moe shared expert + gate, tp2 sp": (ParallelDims(tp=2, sequence_parallel=True),
                                              scaled_down(PRESETS["qwen1.5-moe-a2.7b"]), {}, "float32", FP32),
    "deepseek-v3 MLA + experts, tp2 x pp2": (ParallelDims(tp=2, pp=2), scaled_down(PRESETS["deepseek-v3"]), {},
                                             "float32", FP32),
    "deepseek-v2 MLA without q bottleneck, tp2": (ParallelDims(tp=2), scaled_down(PRESETS["deepseek-v2-lite"]), {},
                                                  "float32", FP32),
}


@pytest.fixture
def counting(monkeypatch):
    counter = ReadCounter()
    monkeypatch.setattr(hf_load, "safe_open", counter)
    monkeypatch.setattr(hf, "safe_open", counter)     # the up-front header check
    return counter


def _checkpoint(path, config, save_kw, dtype):
    model = build_model(config, seed=11)
    with paddle.no_grad():     # non-trivial norms and biases too, so a misplaced slice shows
        for p in model.parameters():
            p.set_value(p + 0.1 * paddle.randn(p.shape))
    if dtype != "float32":
        model.to(dtype=dtype)
    save_pretrained(model, path, **save_kw)
    return path


def _former_path(path, precision, env):
    """What continue_training did before: the whole checkpoint in every process."""
    model = from_pretrained(path)
    precision.prepare_model(model)
    return parallelize(model, env).model


def _arrays(layer, what="parameters"):
    items = layer.named_parameters() if what == "parameters" else layer.named_buffers()
    return {n: (str(t.dtype), t.astype("float32").numpy()) for n, t in items}


def _stage_of(hf_name):
    m = re.search(r"\.(?:layers|h)\.(\d+)\.", hf_name)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_rank_reads_only_its_slices_and_holds_what_the_whole_load_held(name, tmp_path, counting):
    dims, config, save_kw, disk_dtype, precision = LAYOUTS[name]
    path = _checkpoint(tmp_path / "hf", config, save_kw, disk_dtype)
    assert (path / hf.INDEX_NAME).is_file() == bool(save_kw)
    itemsize = 2 if disk_dtype == "bfloat16" else 4
    whole = sum(int(np.prod(p.shape)) for p in from_pretrained(path).parameters()) * itemsize
    for rank in range(dims.world_size):
        env = detached_env(dims, rank)
        want = _former_path(path, precision, env)
        counting.reset()

        model, reader = hf_load.open_pretrained(path, dtype=precision.param_dtype)
        with reader:
            model = parallelize(model, env).model
        assert counting.open == 0, "files left open"

        got, expected = _arrays(model), _arrays(want)
        assert got.keys() == expected.keys()
        for n in expected:
            assert got[n][0] == expected[n][0], (name, rank, n)               # dtype
            assert np.array_equal(got[n][1], expected[n][1]), (name, rank, n)
        assert _arrays(model, "buffers").keys() == _arrays(want, "buffers").keys()
        for n, (dtype, value) in _arrays(want, "buffers").items():             # fp32 RoPE tables stay fp32
            assert _arrays(model, "buffers")[n][0] == dtype and np.array_equal(
                _arrays(model, "buffers")[n][1], value), (name, rank, n)

        # every element this rank holds was read once, and nothing else
        params = dict(model.named_parameters())
        held = sum(int(np.prod(p.shape)) for p in params.values()) * itemsize
        assert counting.bytes == reader.bytes_read == held, (name, rank)
        replicated = sum(int(np.prod(p.shape)) for p in params.values() if not hasattr(p, TP_SPLIT)) * itemsize
        assert counting.bytes <= whole / dims.tp + replicated, (name, rank)
        if dims.pp > 1:      # no tensor of another stage's layers
            per = config.num_hidden_layers // dims.pp
            stage = env.coords["pp"]
            layers = {_stage_of(t) for t in counting.names} - {None}
            assert layers and all(i // per == stage for i in layers), (name, rank, sorted(layers))
            assert (stage == dims.pp - 1) == any(t.startswith("lm_head") for t in counting.names) \
                or config.tie_word_embeddings, (name, rank)


def test_a_mismatched_tensor_is_named_with_both_shapes_before_anything_is_read(tmp_path, counting):
    from safetensors.numpy import load_file, save_file

    path = _checkpoint(tmp_path / "hf", _cfg(), {}, "float32")
    tensors = load_file(str(path / hf.WEIGHTS_NAME))
    tensors["model.layers.2.mlp.up_proj.weight"] = np.zeros((190, 64), np.float32)
    save_file(tensors, str(path / hf.WEIGHTS_NAME), metadata={"format": "pt"})
    counting.reset()
    with pytest.raises(ConfigError) as e:
        hf_load.open_pretrained(path)
    message = str(e.value)
    assert "1 problem" in message and str(path) in message, message
    assert "shape mismatch model.layers.2.mlp.up_proj.weight: checkpoint [190, 64], config expects [192, 64]" \
        in message, message
    assert counting.bytes == 0 and counting.opened > 0 and counting.open == 0


def test_a_region_is_the_same_slice_of_the_whole_parameter_for_every_layout_kind(tmp_path):
    """Random regions of every parameter of a fused/permuted family equal the slices of
    from_pretrained's whole parameter (regions a layout never asks for included)."""
    rng = np.random.default_rng(0)
    for preset in ("qwen-7b", "chatglm2-6b", "gpt2-en", "bloom-560m", "yuan2-2b", "deepseek-v2-lite"):
        path = _checkpoint(tmp_path / preset, scaled_down(PRESETS[preset]), {}, "float32")
        whole = {n: p.numpy() for n, p in from_pretrained(path).named_parameters()}
        model, reader = hf_load.open_pretrained(path)
        with reader:
            for n, p in model.named_parameters():
                for _ in range(3):
                    region = [tuple(sorted(int(v) for v in rng.integers(0, s + 1, 2))) for s in p.shape]
                    got = init.value(p, region).numpy()
                    want = whole[n][tuple(slice(a, b) for a, b in region)]
                    assert got.shape == want.shape and np.array_equal(got, want), (preset, n, region)
