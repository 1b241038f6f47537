"""DeepSeek-V3's training recipe: auxiliary-loss-free balancing (the correction bias moves
against each expert's load error after every step, counted once per trained token), the
sequence-wise auxiliary loss against a numpy version of the paper's formula, and the
expert-load figures of the log line and metrics.jsonl."""

from __future__ import annotations

import json
import os

import numpy as np
import paddle
import pytest

from llmpre.models.config import ModelConfig
from llmpre.models.moe import seq_aux_loss
from llmpre.parallel.recompute import recompute
from llmpre.train import balance

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "deepseek_v3")


def _tiny_v3(layers=2) -> ModelConfig:
    return ModelConfig(model_type="deepseek_v3", hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2, head_dim=16, vocab_size=64,
                       max_position_embeddings=64, rope_interleaved=True,
                       mla=dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                                q_lora_rank=16),
                       moe=dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                shared_expert_intermediate_size=16, scoring_func="sigmoid", topk_method="noaux_tc",
                                n_group=2, topk_group=1, routed_scaling_factor=2.5, router_aux_loss_coef=0.001,
                                aux_loss_type="seq", first_k_dense_replace=1))


class _Env:
    """The single-process layout: every group of size one."""

    class _One:
        size = 1

        def all_reduce(self, x, op=None):
            return x

    data = pp = _One()
    groups: dict = {}
    rank = 0


def _model():
    from llmpre.models import build_model

    model = build_model(_tiny_v3(layers=3), seed=5)
    model.train()
    return model


def _ids():
    return paddle.to_tensor(np.random.RandomState(0).randint(0, 64, [2, 16]).astype("int64"))


def test_loads_count_every_trained_pair_once():
    model = _model()
    ids = _ids()
    model(ids)
    model(ids)                                                  # two micro-batches
    sparse = balance.sparse_layers(model)
    assert [i for i, _ in sparse] == [1, 2]                     # first_k_dense_replace = 1
    for (index, moe), layer in zip(sparse, [model.layers[1], model.layers[2]]):
        experts = layer.router_stats[0].numpy()
        want = 2 * np.bincount(experts.reshape(-1), minlength=4)
        np.testing.assert_array_equal(moe.expert_load.numpy(), want)
    loads = balance.take_loads(model, _Env())
    assert sorted(loads) == [1, 2] and all(moe.expert_load is None for _, moe in sparse)
    assert all(int(c.sum()) == 2 * 2 * 16 * 2 for c in loads.values())   # 2 passes x 32 tokens x k=2
    with paddle.no_grad():                                      # evaluation does not count
        model(ids)
    model.eval()
    model(ids)
    assert all(moe.expert_load is None for _, moe in sparse)


def test_recompute_counts_once():
    model = _model()
    layer = model.layers[1]
    x = paddle.randn([2, 8, 32])
    x.stop_gradient = False
    ctx = model.context(2, 8)
    out = recompute(lambda h: layer(h, ctx["cos"], ctx["sin"], None, None), x)
    assert layer.mlp.expert_load is None                        # the no-grad pass does not count
    out.sum().backward()                                        # the pass with gradients counts
    assert int(layer.mlp.expert_load.sum()) == 2 * 8 * 2


def test_bias_moves_against_the_load_error():
    model = _model()
    before = {i: moe.gate.e_score_correction_bias.numpy().copy() for i, moe in balance.sparse_layers(model)}
    loads = {1: np.array([10, 4, 4, 5]), 2: np.array([6, 6, 6, 6])}
    balance.update_bias(model, loads, 0.001)
    after = {i: moe.gate.e_score_correction_bias.numpy() for i, moe in balance.sparse_layers(model)}
    np.testing.assert_allclose(after[1] - before[1], [-0.001, 0.001, 0.001, 0.001], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(after[2], before[2])          # balanced: sign 0
    balance.update_bias(model, loads, 0.0)                      # rate 0: frozen
    np.testing.assert_array_equal(model.layers[1].mlp.gate.e_score_correction_bias.numpy(), after[1])


def test_bias_steers_routing_toward_balance():
    """A bias that sends every token to one expert group (load 2x the mean on its
    experts) is walked back until both groups get tokens (with k = 2 and one group of
    two chosen per token, the loads are set by the group choice)."""
    model = _model()
    for _, moe in balance.sparse_layers(model):
        moe.gate.e_score_correction_bias.set_value(paddle.to_tensor([0.5, 0.5, 0.0, 0.0]))
    ids = _ids()
    history = []
    for _ in range(40):
        model(ids)
        loads = balance.take_loads(model, _Env())
        history.append(balance.load_summary(loads)["moe_load_max"])
        balance.update_bias(model, loads, 0.05)
    # sign steps oscillate around the balance point (the tiny model's scores differ by ~1e-2)
    assert history[:3] == [2.0] * 3 and np.mean(history[-10:]) < 1.75, history


def test_load_summary_is_relative_to_the_mean():
    s = balance.load_summary({1: np.array([8, 0, 4, 4]), 3: np.array([4, 4, 4, 4])})
    assert s == {"moe_load_max": 2.0, "moe_load_min": 0.0, "moe_load_layers": [1, 3],
                 "moe_load_max_per_layer": [2.0, 1.0], "moe_load_min_per_layer": [0.0, 1.0]}


def _seq_aux_numpy(stats, num_experts, batch):
    """DeepSeek-V3 paper, eqs. 17-20, per layer: f_i = E / (K T) * #{t: i in top-K(t)},
    P_i = mean_t s_i,t / sum_j s_j,t, loss = sum_i f_i P_i; averaged over sequences."""
    total = 0.0
    for experts, scores in stats:
        k = experts.shape[-1]
        for b in range(batch):
            e = experts.reshape(batch, -1, k)[b]                                  # [T, K]
            s = scores.reshape(batch, -1, num_experts)[b].astype(np.float64)      # [T, E]
            t = e.shape[0]
            f = np.array([(e == i).any(-1).sum() for i in range(num_experts)]) * num_experts / (k * t)
            p = (s / s.sum(-1, keepdims=True)).mean(0)
            total += (f * p).sum() / batch
    return total


def test_sequence_wise_aux_loss_matches_the_paper():
    rs = np.random.RandomState(2)
    batch, seq, experts, k = 3, 5, 6, 2
    stats = []
    for _ in range(2):   # two sparse layers
        scores = 1 / (1 + np.exp(-rs.randn(batch * seq, experts)))                # sigmoid scores
        chosen = np.stack([rs.choice(experts, k, replace=False) for _ in range(batch * seq)])
        stats.append((chosen, scores.astype(np.float32)))
    got = seq_aux_loss([(paddle.to_tensor(e), paddle.to_tensor(s)) for e, s in stats], experts, batch)
    np.testing.assert_allclose(float(got), _seq_aux_numpy(stats, experts, batch), rtol=1e-6)


def test_deepseek_v3_config_wires_the_sequence_loss():
    from llmpre.models import get_config

    moe = get_config(FIXTURE).moe
    assert moe.aux_loss_type == "seq" and moe.topk_method == "noaux_tc"


def _train(tmp_path, name, steps, **kw):
    from llmpre.data.default import default_tokenizer_path
    from llmpre.train.args import parse_arguments
    from llmpre.train.trainer import run

    values = {"model": FIXTURE, "tokenizer_name_or_path": default_tokenizer_path(), "max_seq_length": "32",
              "per_device_train_batch_size": "2", "max_steps": str(steps), "logging_steps": "1",
              "save_steps": "2", "do_eval": "false", "disable_tqdm": "true", "num_threads": "1",
              "report_to": "none", "learning_rate": "3e-3", "moe_bias_update_rate": "0.01",
              "output_dir": str(tmp_path / name), **{k: str(v) for k, v in kw.items()}}
    run(parse_arguments(None, values))
    return str(tmp_path / name)


def _entries(out):
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        return [e for e in map(json.loads, fh) if e["type"] == "train"]


def test_training_updates_and_resumes_the_bias_exactly(tmp_path):
    from safetensors.numpy import load_file

    full = _train(tmp_path, "full", 3)
    entries = _entries(full)
    assert all(e["moe_load_max"] >= 1.0 >= e["moe_load_min"] >= 0.0 for e in entries)
    assert entries[0]["moe_load_layers"] == [1]
    bias = load_file(os.path.join(full, "model.safetensors"))["model.layers.1.mlp.gate.e_score_correction_bias"]
    steps = np.round(bias / 0.01)                              # 3 updates of +-0.01 (0 when balanced)
    np.testing.assert_allclose(bias, steps * 0.01, atol=1e-6)
    assert 1 <= np.abs(steps).max() <= 3                       # an odd number of +-1 steps is never 0

    part = _train(tmp_path, "part", 2)
    resumed = _train(tmp_path, "part", 3, resume_from_checkpoint=os.path.join(part, "checkpoint-2"))
    got = load_file(os.path.join(resumed, "model.safetensors"))["model.layers.1.mlp.gate.e_score_correction_bias"]
    np.testing.assert_array_equal(got, bias)
    assert _entries(resumed)[-1]["loss"] == entries[-1]["loss"]


def test_two_data_ranks_apply_the_same_update(tmp_path):
    """dp2 sums both ranks' counts: the same bias and losses as one process."""
    from llmpre.data.default import default_tokenizer_path
    from tests import layout_runner as L

    extra = ("--model", FIXTURE, "--num_hidden_layers", "2", "--tokenizer_name_or_path", default_tokenizer_path(),
             "--moe_bias_update_rate", "0.01")
    L.train(tmp_path / "one", 1, *extra, steps=3)
    L.train(tmp_path / "dp2", 2, *extra, steps=3, data_ranks=2)
    L.assert_same_losses(L.losses(tmp_path / "dp2"), L.losses(tmp_path / "one"))
    name = "model.layers.1.mlp.gate.e_score_correction_bias"
    one, two = L.weights(tmp_path / "one")[name], L.weights(tmp_path / "dp2")[name]
    assert np.abs(one).max() > 0
    np.testing.assert_array_equal(two, one)
    assert L.last_train_entry(tmp_path / "dp2")["moe_load_max"] == L.last_train_entry(tmp_path / "one")["moe_load_max"]


# ---- multi-token prediction -------------------------------------------------------------
def _rms(x, w, eps=1e-6):
    return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * w


def _ce(logits, labels):
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], -1).mean()


def _mtp_model(depths=2):
    from llmpre.models import build_model

    model = build_model(_tiny_v3(layers=2).replace(num_nextn_predict_layers=depths, num_nextn_predict_lambda=0.3),
                        seed=3)
    model.train()
    return model


def test_mtp_loss_against_a_numpy_transcription():
    """L = lambda / D sum_k CE(head(norm_k(Block_k(eh_proj [enorm(E t_{i+k}); hnorm(h^{k-1}_i)]))), t_{i+k+1})
    with the norms, projection, head and cross-entropy in numpy (float64) and the decoder
    block (checked against transformers elsewhere) run on the numpy inputs."""
    model = _mtp_model()
    tokens = np.random.RandomState(1).randint(0, 64, [2, 13]).astype("int64")
    ids, labels = tokens[:, :-1], tokens[:, 1:]
    model(paddle.to_tensor(ids), labels=paddle.to_tensor(labels))
    got = float(model.aux_loss) - float(model._aux_loss(  # the MoE term of the same forward
        [layer.router_stats for layer in model.layers if layer.sparse], 2))

    p = {n: v.numpy().astype(np.float64) for n, v in model.named_parameters()}
    with paddle.no_grad():
        h = model.embed(paddle.to_tensor(ids), model.context(2, 12))
        ctx = model.context(2, 12)
        for layer in model.layers:
            h = layer(h, ctx["cos"], ctx["sin"], None, None)
    h, n, want = h.numpy().astype(np.float64), ids.shape[1], 0.0
    for k in (1, 2):
        m, j = n - k, k - 1
        emb = p["embed_tokens.weight"][ids[:, k:]]                                  # E t_{i+k}
        x = np.concatenate([_rms(emb, p[f"mtp.{j}.enorm.weight"]), _rms(h[:, :m], p[f"mtp.{j}.hnorm.weight"])], -1)
        x = x @ p[f"mtp.{j}.eh_proj.weight"]
        ctx = model.context(2, m)
        with paddle.no_grad():
            h = model.mtp[j].block(paddle.to_tensor(x.astype("float32")), ctx["cos"], ctx["sin"], None, None)
        h = h.numpy().astype(np.float64)
        logits = _rms(h, p[f"mtp.{j}.norm.weight"]) @ p["lm_head.weight"]
        want += _ce(logits, labels[:, k:])
    np.testing.assert_allclose(got, 0.3 / 2 * want, rtol=2e-5)


def test_mtp_is_saved_and_loaded_in_deepseeks_layout(tmp_path):
    from safetensors.numpy import load_file

    from llmpre.models import from_pretrained, save_pretrained

    model = _mtp_model(depths=1)
    save_pretrained(model, tmp_path / "hf")
    saved = load_file(str(tmp_path / "hf" / "model.safetensors"))
    for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                 "self_attn.kv_b_proj.weight", "mlp.gate.e_score_correction_bias", "mlp.experts.3.down_proj.weight"):
        assert f"model.layers.2.{name}" in saved, name
    np.testing.assert_array_equal(saved["model.layers.2.embed_tokens.weight"], saved["model.embed_tokens.weight"])
    np.testing.assert_array_equal(saved["model.layers.2.shared_head.head.weight"], saved["lm_head.weight"])
    np.testing.assert_array_equal(saved["model.layers.2.eh_proj.weight"], model.mtp[0].eh_proj.weight.numpy().T)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_nextn_predict_layers"] == 1
    back = from_pretrained(tmp_path / "hf")
    assert back.config.num_nextn_predict_layers == 1
    ours = dict(model.named_parameters())
    for name, p in back.named_parameters():
        np.testing.assert_array_equal(p.numpy(), ours[name].numpy(), err_msg=name)


def test_a_checkpoint_without_mtp_weights_loads_without_mtp():
    """transformers saves DeepSeek-V3 without its MTP layer (the fixture's config says 1)."""
    from llmpre.models import from_pretrained

    assert json.load(open(os.path.join(FIXTURE, "config.json")))["num_nextn_predict_layers"] == 1
    assert from_pretrained(FIXTURE).config.num_nextn_predict_layers == 0


def test_mtp_model_trains_its_modules(tmp_path):
    from safetensors.numpy import load_file

    from llmpre.models.hf_config import to_hf_dict

    model_dir = tmp_path / "mtp_model"
    model_dir.mkdir()
    config = _tiny_v3(layers=2).replace(num_nextn_predict_layers=1, vocab_size=8192)
    (model_dir / "config.json").write_text(json.dumps(to_hf_dict(config)))
    out = _train(tmp_path, "run", 2, model=str(model_dir), save_steps=1)
    first = load_file(os.path.join(out, "checkpoint-1", "model-tp0-pp0.safetensors"))
    final = load_file(os.path.join(out, "model.safetensors"))
    assert not np.array_equal(first["mtp.0.eh_proj.weight"].T, final["model.layers.2.eh_proj.weight"])
    assert not np.array_equal(first["mtp.0.block.self_attn.kv_b_proj.weight"].T,
                              final["model.layers.2.self_attn.kv_b_proj.weight"])
    assert [e["moe_load_layers"] for e in _entries(out)][-1] == [1, 2]    # the MTP block's router is balanced too


def test_mtp_refuses_the_layouts_it_does_not_run():
    from llmpre.errors import ConfigError
    from llmpre.parallel.dims import ParallelDims

    config = _tiny_v3(layers=2).replace(num_nextn_predict_layers=1)
    with pytest.raises(ConfigError, match="multi-token prediction"):
        ParallelDims(cp=2).validate(2, config, 1, seq_length=32)
    support = _mtp_model(depths=1).parallel_support()   # tp, sp, pp: tests/parallel/test_layouts_moe.py
    assert support.tensor_parallel and support.pipeline and support.sequence_parallel


def test_continue_training_reads_and_writes_the_mtp_weights(tmp_path):
    """The trainer's shard-local loader reads DeepSeek's MTP tensors (and the duplicated
    embedding / head) and the final export writes them back: at learning rate 0 and a
    frozen bias every tensor comes back bit-identical."""
    from safetensors.numpy import load_file

    from llmpre.models import build_model, save_pretrained

    save_pretrained(build_model(_tiny_v3(layers=2).replace(num_nextn_predict_layers=1, vocab_size=8192), seed=4),
                    tmp_path / "start")
    out = _train(tmp_path, "run", 1, model=str(tmp_path / "start"), continue_training="true", learning_rate=0,
                 min_learning_rate=0, warmup_steps=0, moe_bias_update_rate=0)
    before = load_file(str(tmp_path / "start" / "model.safetensors"))
    after = load_file(os.path.join(out, "model.safetensors"))
    assert "model.layers.2.shared_head.head.weight" in after and sorted(after) == sorted(before)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_mtp_model_under_recompute_reproduces_one_process(tmp_path):
    """Full recompute gives one process's losses (rel 1e-5), correction biases and weights.
    MTP under ep2 (dp2; the MTP block's experts split too) at this bias rate with this
    sequence-wise auxiliary loss: tests/parallel/test_layouts_ep.py's deepseekv3-ep2 and -ep2xtp2."""
    from llmpre.data.default import default_tokenizer_path
    from llmpre.models.hf_config import to_hf_dict
    from tests import layout_runner as L

    model_dir = tmp_path / "mtp_model"
    model_dir.mkdir()
    config = _tiny_v3(layers=2).replace(num_nextn_predict_layers=1, vocab_size=8192)
    (model_dir / "config.json").write_text(json.dumps(to_hf_dict(config)))
    extra = ("--model", str(model_dir), "--num_hidden_layers", "2", "--tokenizer_name_or_path",
             default_tokenizer_path(), "--moe_bias_update_rate", "0.01")
    L.train(tmp_path / "one", 1, *extra, steps=3)
    want, weights = L.losses(tmp_path / "one"), L.weights(tmp_path / "one")
    assert np.abs(weights["model.layers.2.mlp.gate.e_score_correction_bias"]).max() > 0   # the MTP router moved
    L.train(tmp_path / "recompute", 1, *extra, "--recompute", "true", steps=3)
    L.assert_same_losses(L.losses(tmp_path / "recompute"), want)
    L.assert_same_weights(L.weights(tmp_path / "recompute"), weights)


def test_pipeline_stages_update_their_own_biases_and_report_every_layer(tmp_path):
    """pp2 on a 4-layer DeepSeek-V3: each stage moves its layers' biases; the log's load
    figures gather both stages' layers (rank 0 holds none of the later ones)."""
    from llmpre.data.default import default_tokenizer_path
    from tests import layout_runner as L

    extra = ("--model", FIXTURE, "--num_hidden_layers", "4", "--tokenizer_name_or_path", default_tokenizer_path(),
             "--moe_bias_update_rate", "0.01")
    L.train(tmp_path / "one", 1, *extra, steps=3)
    L.train(tmp_path / "pp2", 2, *extra, "--pipeline_parallel_degree", "2", steps=3)
    L.assert_same_losses(L.losses(tmp_path / "pp2"), L.losses(tmp_path / "one"))
    one, pp2 = L.weights(tmp_path / "one"), L.weights(tmp_path / "pp2")
    for i in (1, 2, 3):
        name = f"model.layers.{i}.mlp.gate.e_score_correction_bias"
        np.testing.assert_array_equal(pp2[name], one[name])
    got, want = L.last_train_entry(tmp_path / "pp2"), L.last_train_entry(tmp_path / "one")
    assert got["moe_load_layers"] == want["moe_load_layers"] == [1, 2, 3]
    assert got["moe_load_max_per_layer"] == want["moe_load_max_per_layer"]


def test_the_correction_bias_stays_fp32_in_a_bf16_model():
    """bf16's spacing is 2^-7 |b|: from |b| = 0.5 a 0.001 step would round away."""
    from llmpre.models import build_model

    model = build_model(_tiny_v3(layers=2), seed=5, lazy=True, dtype="bfloat16")
    from llmpre.models import init

    init.materialize(model)
    bias = model.layers[1].mlp.gate.e_score_correction_bias
    assert bias.dtype == paddle.float32 and model.layers[1].mlp.gate.weight.dtype == paddle.bfloat16
    bias.set_value(paddle.full([4], 0.6, dtype="float32"))
    balance.update_bias(model, {1: np.array([9, 1, 1, 1])}, 0.001)
    np.testing.assert_allclose(bias.numpy(), [0.599, 0.601, 0.601, 0.601], rtol=0, atol=1e-7)
