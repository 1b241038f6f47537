"""GPT dropout (hidden_dropout_prob / attention_probs_dropout_prob, PaddleNLP's 0.1):
masks are a pure function of seed, step, the sample's tokens and the site, so they
repeat on recomputation and resume, and do not depend on what else is in the batch."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from llmpre.models import build_model, get_config
from llmpre.models import dropout as drop
from llmpre.models.stage import micro_batch_context


def tiny_gpt(p_hidden=0.1, p_attn=0.1, seed=3):
    cfg = get_config("gpt2-en").replace(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=128,
                                        max_position_embeddings=64)
    model = build_model(cfg, seed=1)
    model.set_dropout(p_hidden, p_attn, seed=seed)
    return model


def ids(rows=2, seq=16, seed=0):
    return paddle.to_tensor(np.random.RandomState(seed).randint(0, 128, (rows, seq)), dtype="int64")


def test_mask_rate_and_scale():
    keys = drop.sample_keys(ids(4, 32), drop.step_key(5, 1))
    x = paddle.ones([4, 8, 32, 32])
    y = drop.dropout(x, 0.25, keys, site=7)
    dropped = float((y == 0).astype("float32").mean())
    assert abs(dropped - 0.25) < 0.02           # 32768 draws: 4 standard deviations ~ 0.01
    assert np.allclose(y.numpy()[y.numpy() != 0], 1 / 0.75)
    assert drop.dropout(x, 0.0, keys, 7) is x and drop.dropout(x, 0.3, None, 7) is x


def test_masks_are_pure_functions():
    model = tiny_gpt()
    model.train()
    x = ids()
    drop.set_dropout_step(model, 4)
    a, b = model(x).numpy(), model(x).numpy()
    assert np.array_equal(a, b)                        # same step, same masks
    drop.set_dropout_step(model, 5)
    assert not np.allclose(model(x).numpy(), a)        # another step, other masks
    model.eval()
    plain = model(x).numpy()
    model.set_dropout(0.0, 0.0, seed=3)
    model.train()
    assert np.allclose(model(x).numpy(), plain, atol=1e-6)   # p = 0 in training == evaluation


def test_a_samples_masks_do_not_depend_on_the_batch():
    """Layouts stay comparable: a sample's output is the same whichever batch (rank,
    micro-batch) carries it."""
    model = tiny_gpt()
    model.train()
    drop.set_dropout_step(model, 2)
    both = model(ids(2, 16, seed=1)).numpy()
    alone = model(ids(2, 16, seed=1)[1:]).numpy()
    assert np.allclose(both[1:], alone, atol=1e-5)


def test_attention_dropout_of_a_head_slice_is_the_slice():
    """A tensor-parallel rank holding heads 2..3 draws the masks of those heads."""
    rs = np.random.RandomState(0)
    q, k, v = (paddle.to_tensor(rs.randn(2, 8, 4, 16).astype("float32")) for _ in range(3))
    keys = drop.sample_keys(ids(2, 8), drop.step_key(1, 1))
    full = drop.attention_with_dropout(q, k, v, 0.3, keys, site=4).numpy()
    part = drop.attention_with_dropout(q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], 0.3, keys, site=4,
                                       head_offset=2).numpy()
    assert np.allclose(full[:, :, 2:], part, atol=1e-6)


def test_recompute_repeats_the_masks():
    from llmpre.parallel.recompute import recompute

    grads = []
    for use_recompute in (False, True):
        model = tiny_gpt()
        model.train()
        drop.set_dropout_step(model, 3)
        x = ids()
        ctx = micro_batch_context(model, x)
        h = model.embed(x, ctx)
        for layer in model.layers:
            h = (recompute(layer.forward, h, ctx["alibi"], ctx["dropout"]) if use_recompute
                 else layer(h, ctx["alibi"], ctx["dropout"]))
        model.head(h).sum().backward()
        grads.append(model.layers[0].mlp.up_proj.weight.grad.numpy().copy())
    assert np.allclose(grads[0], grads[1], atol=1e-5)


def test_a_sequence_chunk_draws_the_masks_of_its_positions():
    """Sequence parallelism: a rank holding positions 4..7 of [b, s, h] (offset 4 * h) draws
    those positions' masks."""
    keys = drop.sample_keys(ids(2, 16), drop.step_key(1, 2))
    x = paddle.to_tensor(np.random.RandomState(1).randn(2, 16, 8).astype("float32"))
    full = drop.dropout(x, 0.3, keys, site=5).numpy()
    part = drop.dropout(x[:, 4:8], 0.3, keys, site=5, offset=4 * 8).numpy()
    assert np.array_equal(full[:, 4:8], part)


def test_a_later_pipeline_stage_gets_the_samples_keys():
    """A stage that starts at layer 1 never runs embed; its own micro-batch context carries
    the dropout keys, so the split forward is the whole forward."""
    model = tiny_gpt()
    model.train()
    drop.set_dropout_step(model, 6)
    x = ids()
    whole = model(x).numpy()
    first = micro_batch_context(model, x)
    h = model.run_layer(model.layers[0], model.embed(x, first), first)
    later = micro_batch_context(model, x)                 # built by the next stage from the ids alone
    assert np.array_equal(later["dropout"].numpy(), first["dropout"].numpy())
    split = model.head(model.run_layer(model.layers[1], h, later)).numpy()
    assert np.array_equal(split, whole)
    assert model.parallel_support().pipeline


def test_only_gpt_configs_take_dropout():
    assert drop.supports_dropout(tiny_gpt(), get_config("gpt2-en"))
    llama = build_model(get_config("llama-tiny").replace(num_hidden_layers=1), seed=1)
    assert not drop.supports_dropout(llama, get_config("llama-tiny"))
    assert not drop.supports_dropout(tiny_gpt(), get_config("opt-125m"))


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_eval_has_no_dropout(p):
    model = tiny_gpt(p, p)
    drop.set_dropout_step(model, 1)
    model.eval()
    with paddle.no_grad():
        a = model(ids()).numpy()
    model.set_dropout(0.0, 0.0, seed=3)
    with paddle.no_grad():
        assert np.allclose(model(ids()).numpy(), a, atol=1e-6)
