"""GLM: ChatGLM-6B (GLM v1) and GLM-130B.

Logits against an independent numpy forward (glm_ref.py, float64, reading the HF-layout
file llmpre wrote) and against PaddleNLP 2.8.1's ``ChatGLMForCausalLM`` (its saved weights
and logits, tests/assets/glm_paddlenlp/README.md), both within 1e-5 relative (max |diff|
over max |logit|; fp32 against fp64 / against another fp32 implementation, measured
<= 2.2e-7); positions and masks derived from the [gMASK]/[MASK]/<sop> tokens as the original
derives them; HF and PaddleNLP layouts round-trip bit-exactly; config.json forms; presets;
DeepNorm initialisation; the planner on glm-130b.
"""

import json
import math
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from llmpre.errors import ConfigError
from llmpre.models import PRESETS, build_model, from_pretrained, get_config, get_preset, init, save_pretrained
from llmpre.models.glm import glm_inputs
from llmpre.models.hf import hf_state_dict
from llmpre.models.hf_config import from_hf_dict, to_hf_dict
from llmpre.models.paddlenlp_names import config_from_paddlenlp, config_to_paddlenlp

from . import glm_ref

ASSET = Path(__file__).resolve().parents[1] / "assets" / "glm_paddlenlp"
REL = 1e-5          # the bound; measured: 2.2e-7 (PaddleNLP), 1.8e-7 (numpy float64)

# THUDM's config.json keys (chatglm-6b's configuration_chatglm.py), tiny numbers
CHATGLM = {"architectures": ["ChatGLMModel"], "model_type": "chatglm", "vocab_size": 160, "hidden_size": 32,
           "num_layers": 2, "num_attention_heads": 4, "inner_hidden_size": 48, "layernorm_epsilon": 1e-5,
           "max_sequence_length": 64, "position_encoding_2d": True, "bos_token_id": 154, "eos_token_id": 155,
           "mask_token_id": 150, "gmask_token_id": 151, "pad_token_id": 3, "quantization_bit": 0,
           "pre_seq_len": None}
# GLM-130B's architecture in the same keys: 1-D RoPE, GeGLU, DeepNorm initialisation
GLM130B = {**CHATGLM, "num_layers": 3, "inner_hidden_size": 40, "position_encoding_2d": False,
           "activation": "geglu", "deepnorm_init": True}
MASK, GMASK, SOP = 150, 151, 154


def batch(seed=3):
    """Samples covering every rule: [gMASK] <sop> (chat), [MASK] blank, [gMASK] early, <sop>
    without a mask token, plain text (no <sop>: causal)."""
    rs = np.random.RandomState(seed)
    w = lambda n: list(rs.randint(5, 150, n))                               # noqa: E731
    return np.array([w(5) + [GMASK, SOP] + w(5), w(2) + [MASK] + w(3) + [SOP] + w(5),
                     w(1) + [GMASK] + w(2) + [SOP] + w(7), w(7) + [SOP] + w(4), w(12)], dtype="int64")


def seeded(model, seed=7):
    """Non-trivial weights: norms 1 + 0.2 N, biases 0.2 N, matrices N(0, 0.5 / sqrt(fan_in))."""
    rng = np.random.default_rng(seed)
    with paddle.no_grad():
        for name, p in model.named_parameters():
            shape = list(p.shape)
            if len(shape) == 1:
                value = (1.0 if name.endswith("norm.weight") else 0.0) + 0.2 * rng.standard_normal(shape)
            elif name.startswith("embed_tokens"):
                value = rng.standard_normal(shape) / np.sqrt(shape[1])
            else:
                value = 0.5 / np.sqrt(shape[0]) * rng.standard_normal(shape)
            p.set_value(value.astype("float32"))


def rel_err(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module", params=["chatglm", "glm130b"])
def saved(request, tmp_path_factory):
    hf = {"chatglm": CHATGLM, "glm130b": GLM130B}[request.param]
    model = build_model(from_hf_dict(hf), seed=0)
    seeded(model)
    path = tmp_path_factory.mktemp(request.param)
    save_pretrained(model, path)
    return hf, path


@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_logits_match_the_numpy_reference(saved, kernels):
    """Reference ops, and the fused rotary (on each half of a head) and flash attention
    (plain-text samples) where this build has them."""
    from llmpre.ops import REFERENCE, available, select_ops

    if kernels == "fused" and not (available("llmpre_rotary") and available("llmpre_flash_attention")):
        pytest.skip("this build has no fused rotary / flash attention op")
    ops = REFERENCE if kernels == "reference" else select_ops(use_flash_attention=True, use_fused_rope=True)
    hf, path = saved
    model = from_pretrained(path, ops=ops)
    tensors = load_file(str(path / "model.safetensors"))
    for ids in (batch(), batch()[4:]):          # with prefixes (written-out attention); plain text only
        want = glm_ref.logits(tensors, hf, ids)
        with paddle.no_grad():
            got = model(paddle.to_tensor(ids)).numpy()
        assert rel_err(got, want) < REL


def ref_loss(tensors, hf, ids):
    """Causal-LM loss of the numpy reference: logits[:, :-1] against ids[:, 1:]."""
    z = glm_ref.logits(tensors, hf, ids)[:, :-1]
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, ids[:, 1:, None], -1).mean())


def test_every_gradient_matches_finite_differences_of_the_reference(saved):
    """Two entries of every tensor (HF layout): the model's gradient against a central difference
    (h = 1e-4, float64: accurate to ~1e-8) of the numpy loss; atol 1e-5 / rtol 1e-3 as for the
    other families (tests/models/test_numpy_parity.py)."""
    from llmpre.models import causal_lm_loss

    from .parity import hf_grads

    hf, path = saved
    model = from_pretrained(path)
    ids = batch()
    ids_t = paddle.to_tensor(ids)
    causal_lm_loss(model(ids_t)[:, :-1], ids_t[:, 1:]).backward()
    grads = hf_grads(model)
    tensors = {k: v.astype(np.float64) for k, v in load_file(str(path / "model.safetensors")).items()}
    assert set(grads) == set(tensors)
    rng, h = np.random.default_rng(11), 1e-4
    for name in sorted(tensors):
        for _ in range(2):
            idx = tuple(int(rng.integers(0, n)) for n in tensors[name].shape)
            plus, minus = tensors[name].copy(), tensors[name].copy()
            plus[idx] += h
            minus[idx] -= h
            fd = (ref_loss({**tensors, name: plus}, hf, ids) - ref_loss({**tensors, name: minus}, hf, ids)) / (2 * h)
            np.testing.assert_allclose(grads[name][idx], fd, atol=1e-5, rtol=1e-3, err_msg=f"{name}{idx}")


def test_positions_come_from_the_tokens_as_the_original_derives_them(saved):
    hf, path = saved
    config = from_hf_dict(hf)
    ids = batch()
    positions, blocks, prefix = glm_inputs(paddle.to_tensor(ids), config)
    for b, row in enumerate(ids):
        pos, blk, context = glm_ref.positions_and_context(row, hf)
        assert positions.numpy()[b].tolist() == pos and int(prefix.numpy()[b]) == context
        assert (blocks is None) == (blk is None) and (blk is None or blocks.numpy()[b].tolist() == blk)
    assert glm_inputs(paddle.to_tensor(ids[4:]), config)[2] is None      # plain text only: the causal path


def test_explicit_positions_and_prefix_give_the_derived_logits(saved):
    hf, path = saved
    model = from_pretrained(path)
    ids = paddle.to_tensor(batch())
    positions, blocks, prefix = glm_inputs(ids, model.config)
    explicit = positions if blocks is None else paddle.stack([positions, blocks], axis=1)   # [b, 2, s]
    with paddle.no_grad():
        assert np.array_equal(model(ids).numpy(), model(ids, position_ids=explicit, prefix=prefix).numpy())
    with pytest.raises(ConfigError, match="position_ids have shape"):
        model(ids, position_ids=positions if blocks is not None else explicit.unsqueeze(1))
    with pytest.raises(ConfigError, match="prefix"):
        model(ids, prefix=prefix)


def test_hf_layout_round_trip_is_bit_exact(saved, tmp_path):
    hf, path = saved
    model = from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "chatglm" and from_hf_dict(config) == model.config
    tensors = load_file(str(path / "model.safetensors"))
    assert "transformer.layers.1.attention.query_key_value.weight" in tensors
    assert tensors["transformer.layers.0.attention.query_key_value.weight"].shape == (96, 32)
    save_pretrained(model, tmp_path / "again")
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert set(again) == set(tensors)
    assert all(np.array_equal(again[n], tensors[n]) for n in tensors)
    reloaded = dict(from_pretrained(tmp_path / "again").named_parameters())
    assert all(np.array_equal(p.numpy(), reloaded[n].numpy()) for n, p in model.named_parameters())


def test_fused_qkv_rows_are_per_head_q_k_v(saved):
    """THUDM's query_key_value row h*3d + j*d + i is part j (q, k, v) of head h, feature i."""
    hf, path = saved
    model = from_pretrained(path)
    fused = hf_state_dict(model)["transformer.layers.0.attention.query_key_value.weight"].numpy()   # [3hd, in]
    heads, d = model.config.num_attention_heads, model.config.head_dim
    attn = model.layers[0].self_attn
    for j, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
        rows = np.concatenate([fused[h * 3 * d + j * d: h * 3 * d + (j + 1) * d] for h in range(heads)])
        assert np.array_equal(rows, proj.weight.numpy().T)


@pytest.mark.skipif(not (ASSET / "expected.npz").is_file(), reason=f"fixture absent: {ASSET}")
def test_paddlenlp_weights_give_paddlenlps_logits():
    expected = np.load(ASSET / "expected.npz")
    model = from_pretrained(ASSET / "model")
    assert model.config.model_type == "glm" and model.config.glm.position_2d
    with paddle.no_grad():
        derived = model(paddle.to_tensor(expected["derived_ids"])).numpy()
        causal = model(paddle.to_tensor(expected["causal_ids"])).numpy()
        explicit = model(paddle.to_tensor(expected["causal_ids"]),
                         position_ids=paddle.to_tensor(expected["causal_positions"])).numpy()
    assert rel_err(derived, expected["derived_logits"]) < REL
    assert rel_err(causal, expected["causal_logits"]) < REL           # plain text: llmpre's causal default
    assert rel_err(explicit, expected["causal_logits"]) < REL
    # the numpy reference agrees on PaddleNLP's weights too
    hf = to_hf_dict(model.config)
    tensors = {n: t.numpy() for n, t in hf_state_dict(model).items()}
    ids = np.concatenate([expected["derived_ids"], expected["causal_ids"]])
    want = glm_ref.logits(tensors, hf, ids)
    assert rel_err(np.concatenate([derived, causal]), want) < REL


@pytest.mark.skipif(not (ASSET / "expected.npz").is_file(), reason=f"fixture absent: {ASSET}")
def test_paddlenlp_layout_round_trip_is_bit_exact(tmp_path):
    from llmpre.models.paddlenlp_format import save_paddlenlp

    model = from_pretrained(ASSET / "model")
    params = dict(model.named_parameters())
    save_paddlenlp(model.config, {n: p.shape for n, p in params.items()}, lambda n: params[n], tmp_path / "out")
    written, original = (load_file(str(p / "model.safetensors")) for p in (tmp_path / "out", ASSET / "model"))
    assert set(written) == set(original)
    assert all(np.array_equal(written[n], original[n]) for n in original)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "chatglm" and config["architectures"] == ["ChatGLMForCausalLM"]
    assert config_from_paddlenlp(config) == model.config


def test_config_json_forms():
    v1 = from_hf_dict(CHATGLM)
    assert v1.model_type == "glm" and v1.glm.position_2d and v1.hidden_act == "gelu_tanh" and v1.tie_word_embeddings
    assert to_hf_dict(v1)["model_type"] == "chatglm" and from_hf_dict(to_hf_dict(v1)) == v1
    g = from_hf_dict(GLM130B)
    assert (g.mlp_type, g.hidden_act, g.glm.position_2d, g.glm.deepnorm_init) == ("gated", "gelu", False, True)
    # the first chatglm-6b config.json: no mask ids (its code fixed them at 150000 / 150001)
    first = {k: v for k, v in CHATGLM.items() if k not in ("mask_token_id", "gmask_token_id")}
    first.update(bos_token_id=150004, eos_token_id=150005, vocab_size=150528)
    assert (from_hf_dict(first).glm.mask_token_id, from_hf_dict(first).glm.gmask_token_id) == (150000, 150001)
    # ChatGLM2/3 keep their reader; mixed or unrecognisable keys are one error
    assert from_hf_dict(to_hf_dict(PRESETS["chatglm2-6b"])).model_type == "chatglm"
    with pytest.raises(ConfigError, match="both ChatGLM-6B"):
        from_hf_dict({**CHATGLM, "ffn_hidden_size": 48})
    with pytest.raises(ConfigError, match="inner_hidden_size"):
        from_hf_dict({k: v for k, v in CHATGLM.items() if k not in ("inner_hidden_size", "position_encoding_2d")})
    for key, value in (("quantization_bit", 4), ("pre_seq_len", 8), ("activation", "relu")):
        with pytest.raises(ConfigError, match=key):
            from_hf_dict({**CHATGLM, key: value})
    with pytest.raises(ConfigError, match="'glm'"):
        from_hf_dict({**CHATGLM, "model_type": "glm"})
    with pytest.raises(ConfigError, match="model_type 'chatglm' is missing num_layers"):
        from_hf_dict({k: v for k, v in CHATGLM.items() if k != "num_layers"})


def test_paddlenlp_form_is_chatglm_6b_only():
    assert config_from_paddlenlp(config_to_paddlenlp(from_hf_dict(CHATGLM))) == from_hf_dict(CHATGLM)
    with pytest.raises(ConfigError, match="GLM-130B"):
        config_to_paddlenlp(get_preset("glm-130b"))
    pnlp = config_to_paddlenlp(from_hf_dict(CHATGLM))
    with pytest.raises(ConfigError, match="position_encoding_2d"):
        config_from_paddlenlp({**pnlp, "position_encoding_2d": False})


def test_presets():
    v1, v11, big = (get_preset(n) for n in ("THUDM/chatglm-6b", "THUDM/chatglm-6b-v1.1", "glm-130b"))
    assert v1 is PRESETS["chatglm-6b"] and v11 is PRESETS["chatglm-6b-v1.1"]
    assert (v1.vocab_size, v1.bos_token_id, v1.glm.gmask_token_id) == (150528, 150004, 150001)
    assert (v11.vocab_size, v11.bos_token_id, v11.glm.gmask_token_id) == (130528, 130004, 130001)
    assert (v1.hidden_size, v1.intermediate_size, v1.num_hidden_layers, v1.num_attention_heads) == (4096, 16384, 28, 32)
    assert 6.1e9 < v11.num_parameters() < 6.3e9                               # "6.2B"
    assert (big.hidden_size, big.intermediate_size, big.num_hidden_layers, big.num_attention_heads) == (
        12288, 32768, 70, 96)
    assert 1.25e11 < big.num_parameters() < 1.35e11                           # "130B"
    assert get_config("chatglm-6b-v1.1") is v11


def test_deepnorm_initialisation():
    config = from_hf_dict(GLM130B)
    model = build_model(config, seed=0, lazy=True)
    rules = init.rules(model, config)
    beta = (2 * config.num_hidden_layers) ** -0.5
    h, i = config.hidden_size, config.intermediate_size
    assert rules["layers.0.self_attn.q_proj.weight"] == ("normal", math.sqrt(2 / (2 * h)))
    assert rules["layers.2.self_attn.v_proj.weight"] == ("normal", beta * math.sqrt(2 / (2 * h)))
    assert rules["layers.1.mlp.gate_proj.weight"] == ("normal", beta * math.sqrt(2 / (h + i)))
    assert rules["layers.1.mlp.down_proj.weight"] == ("normal", beta * math.sqrt(2 / (h + i)))
    assert rules["layers.1.mlp.down_proj.bias"] == ("zeros", 0.0)
    assert rules["embed_tokens.weight"] == ("normal", config.initializer_range)
    init.materialize(model)
    w = model.layers[0].self_attn.v_proj.weight.numpy()
    assert abs(w.std() / (beta * math.sqrt(2 / (2 * h))) - 1) < 0.05          # 1024 draws: 5% is > 2 sigma
    # ChatGLM-6B keeps llmpre's scheme
    v1 = from_hf_dict(CHATGLM)
    assert init.rules(build_model(v1, seed=0, lazy=True), v1)["layers.0.self_attn.v_proj.weight"] == (
        "normal", v1.initializer_range)


def test_a_training_step_reduces_the_loss_on_plain_text():
    """Pretraining samples (no special tokens) train as a causal LM: the loss falls."""
    from llmpre.models import causal_lm_loss

    model = build_model(from_hf_dict(CHATGLM), seed=0)
    ids = paddle.to_tensor(np.random.RandomState(0).randint(5, 150, (4, 17)))
    opt = paddle.optimizer.AdamW(1e-2, parameters=model.parameters())
    losses = []
    for _ in range(3):
        loss = causal_lm_loss(model(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    assert losses[2] < losses[0]


def test_the_planner_covers_glm_130b():
    from llmpre.plan import PlanSettings, plan_memory

    big = get_preset("glm-130b")
    one = plan_memory(PlanSettings(model=big, seq_length=2048, micro_batch=1))
    assert one.stages[0].params == big.num_parameters()
    s = PlanSettings(model=big, seq_length=2048, micro_batch=1, tp=8, pp=7, dtype="float16", opt_level="O2",
                     flash_attention=True)            # 70 layers: 10 per stage
    plan = plan_memory(s)
    assert len(plan.stages) == 7 and max(st.params for st in plan.stages) < big.num_parameters() / 50


def test_the_trainer_pretrains_glm_with_and_without_recompute(tmp_path):
    """``llmpre train`` on a GLM model: plain-text pretraining samples, recompute gives the
    same losses, output_dir holds THUDM's config.json form."""
    from llmpre.train.args import parse_arguments
    from llmpre.train.monitor import read_metrics
    from llmpre.train.trainer import run

    model_dir = tmp_path / "glm"
    model_dir.mkdir()
    config = get_preset("chatglm-6b-v1.1").replace(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, vocab_size=8192, max_position_embeddings=64)
    (model_dir / "config.json").write_text(json.dumps(to_hf_dict(config)))
    losses = []
    for recompute in ("false", "true"):
        out = tmp_path / f"run-{recompute}"
        run(parse_arguments(None, {"model_name_or_path": str(model_dir), "max_seq_length": "32", "max_steps": "3",
                                   "per_device_train_batch_size": "2", "logging_steps": "1", "save_steps": "100",
                                   "eval_steps": "100", "disable_tqdm": "true", "num_threads": "1", "seed": "3",
                                   "recompute": recompute, "output_dir": str(out)}))
        losses.append([e["loss"] for e in read_metrics(str(out))["train"]])
        saved = json.loads((out / "config.json").read_text())
        assert saved["model_type"] == "chatglm" and saved["position_encoding_2d"] is True
    assert len(losses[0]) == 3 and np.all(np.isfinite(losses[0])) and losses[0] == losses[1]


def test_llmpre_models_lists_the_glm_presets():
    from click.testing import CliRunner

    from llmpre.cli import main

    out = CliRunner().invoke(main, ["models", "--family", "glm", "--aliases"], catch_exceptions=False).output
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if not line.startswith(" ")}
    assert set(rows) == {"chatglm-6b", "chatglm-6b-v1.1", "glm-130b"}
    assert "GLM 2-D positions" in rows["chatglm-6b"] and "GeGLU, DeepNorm" in rows["glm-130b"]
    assert "THUDM/chatglm-6b-v1.1" in out


def test_shard_local_loading_reads_the_slices_of_thudms_layout(saved):
    """A tensor-parallel rank reads its slices straight from the fused THUDM tensors
    (llmpre.models.hf_load): random regions of every parameter equal that slice of the whole
    parameter, and each tp2 rank (built in this process) holds what loading everything and
    then splitting holds."""
    from llmpre.models import hf_load
    from llmpre.parallel.dims import ParallelDims
    from llmpre.parallel.env import detached_env
    from llmpre.parallel.parallelize import parallelize

    hf, path = saved
    whole = {n: p.numpy() for n, p in from_pretrained(path).named_parameters()}
    rng = np.random.default_rng(0)
    model, reader = hf_load.open_pretrained(path)
    with reader:
        for n, p in model.named_parameters():
            for _ in range(3):
                region = [tuple(sorted(int(v) for v in rng.integers(0, s + 1, 2))) for s in p.shape]
                want = whole[n][tuple(slice(a, b) for a, b in region)]
                assert np.array_equal(init.value(p, region).numpy(), want), (n, region)
    dims = ParallelDims(tp=2)
    for rank in range(2):
        env = detached_env(dims, rank)
        want = dict(parallelize(from_pretrained(path), env).model.named_parameters())
        model, reader = hf_load.open_pretrained(path)
        with reader:
            got = dict(parallelize(model, env).model.named_parameters())
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[n].numpy(), want[n].numpy()) for n in want), rank
