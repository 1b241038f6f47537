"""Counter-based initialisation (llmpre.models.init): any slice of any parameter computed
alone equals that slice of the whole, values depend only on (seed, name), and a deferred
model allocates nothing until asked."""

from __future__ import annotations

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from llmpre.models import build_model, get_config, init  # noqa: E402


def _small(**changes):
    base = dict(num_hidden_layers=2, vocab_size=384, hidden_size=64, intermediate_size=176,
                num_attention_heads=4, num_key_value_heads=2)
    return get_config("llama-tiny").replace(**{**base, **changes})


def _values(model):
    return {n: p.numpy().copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("shape,region", [
    ([10], [(3, 7)]),
    ([6, 9], [(0, 6), (2, 5)]),       # columns (a column-parallel slice)
    ([6, 9], [(4, 6), (0, 9)]),       # rows (a row-parallel or vocabulary slice)
    ([4, 5, 6], [(1, 3), (0, 5), (2, 6)]),
])
def test_a_region_equals_that_slice_of_the_whole(shape, region):
    key = init.param_key(7, "w")
    whole = init.normal_region(key, shape, [(0, s) for s in shape], 0.02)
    part = init.normal_region(key, shape, region, 0.02)
    assert np.array_equal(part, whole[tuple(slice(a, b) for a, b in region)])


@pytest.mark.parametrize("shape,region", [
    ([1000], [(0, 1000)]),
    ([301, 257], [(0, 301), (0, 257)]),              # odd sizes: pairs straddle rows
    ([301, 257], [(17, 200), (3, 250)]),
    ([3, 70, 90], [(1, 3), (5, 66), (1, 89)]),
])
def test_the_cpp_generator_is_the_numpy_reference(shape, region):
    """C++ (threads) and numpy compute the same scheme; they may differ only where libm's
    log/sin/cos and numpy's differ in the last bit of a double, which float32 rounding hides
    almost always: at most one float32 ulp, on a tiny fraction of elements."""
    key = init.param_key(11, "w")
    got = init.normal_region(key, shape, region, 0.02)
    want = init.normal_region_reference(key, shape, region, 0.02)
    assert got.dtype == np.float32 and got.shape == want.shape
    ulp = np.spacing(np.abs(want))
    assert np.all(np.abs(got - want) <= ulp)
    assert np.mean(got != want) < 1e-3


def test_thread_count_does_not_change_values(monkeypatch):
    from llmpre._core import counter_normal

    key, shape, region = init.param_key(2, "x"), [512, 384], [(0, 512), (0, 384)]
    one = counter_normal(key, shape, region, 1.0, 1)
    assert np.array_equal(one, counter_normal(key, shape, region, 1.0, 3))
    assert np.array_equal(one, counter_normal(key, shape, region, 1.0, 8))


def test_draws_are_standard_normal():
    z = init.standard_normal(init.param_key(3, "x"), np.arange(1_000_000))
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5e-3     # the cos and sin of a pair
    assert abs(z.mean()) < 5e-3 and abs(z.std() - 1) < 5e-3
    assert abs((z ** 3).mean()) < 2e-2 and abs((z ** 4).mean() - 3) < 3e-2
    # distinct names and seeds give unrelated streams
    w = init.standard_normal(init.param_key(3, "y"), np.arange(100_000))
    assert abs(np.corrcoef(z[:100_000], w)[0, 1]) < 2e-2


def test_values_depend_on_seed_and_name_only():
    cfg = _small()
    paddle.seed(1)
    a = _values(build_model(cfg, seed=5))
    paddle.seed(999)                            # the global generator plays no part
    b = _values(build_model(cfg, seed=5))
    c = _values(build_model(cfg, seed=6))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["layers.0.mlp.up_proj.weight"], c["layers.0.mlp.up_proj.weight"])
    # a deeper model: the shared layers' names are the same, their values too, except the
    # residual projections whose scale depends on the depth
    d = _values(build_model(_small(num_hidden_layers=3), seed=5))
    assert np.array_equal(a["layers.1.mlp.up_proj.weight"], d["layers.1.mlp.up_proj.weight"])
    ratio = d["layers.1.mlp.down_proj.weight"] / a["layers.1.mlp.down_proj.weight"]
    assert np.allclose(ratio, np.sqrt(4 / 6), rtol=1e-6)


def test_the_scheme_is_paddlenlps():
    cfg = _small(vocab_size=4096, hidden_size=256, intermediate_size=1024)
    v = _values(build_model(cfg, seed=0))
    std, scale = cfg.initializer_range, 1 / np.sqrt(2 * cfg.num_hidden_layers)
    assert abs(v["embed_tokens.weight"].std() - std) < 2e-4
    assert abs(v["layers.0.mlp.down_proj.weight"].std() - std * scale) < 2e-4
    assert np.all(v["layers.0.input_layernorm.weight"] == 1.0)
    assert np.all(v["norm.weight"] == 1.0)


def test_deferred_model_allocates_nothing_and_materializes_the_same_values():
    cfg = _small(attention_bias=True, model_type="qwen2")
    eager = _values(build_model(cfg, seed=3))
    lazy = build_model(cfg, seed=3, lazy=True)
    assert all(init.is_lazy(p) for p in lazy.parameters())
    assert init.materialize(lazy) == len(eager)
    assert all(np.array_equal(p.numpy(), eager[n]) for n, p in lazy.named_parameters())


def test_a_70b_model_is_built_deferred_in_no_memory():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_model("llama2-70b", seed=0, lazy=True)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) > 68e9
    assert grown < 512 * 2 ** 20, f"a deferred 70B model took {grown / 2 ** 20:.0f} MiB"
    p = dict(model.named_parameters())["layers.79.mlp.down_proj.weight"]
    part = init.value(p, [(0, 2), (0, 8192)])       # two rows of a 28672 x 8192 weight
    assert list(part.shape) == [2, 8192] and init.is_lazy(p)


def test_bf16_storage_is_the_fp32_values_cast():
    cfg = _small()
    fp32 = build_model(cfg, seed=2)
    bf16 = build_model(cfg, seed=2, dtype="bfloat16")
    for (n, a), (_, b) in zip(fp32.named_parameters(), bf16.named_parameters()):
        assert str(b.dtype).endswith("bfloat16")
        assert np.array_equal(a.astype("bfloat16").astype("float32").numpy(), b.astype("float32").numpy()), n


def test_direct_construction_follows_paddle_seed():
    from llmpre.models.llama import LlamaForCausalLM

    cfg = _small()
    paddle.seed(11)
    a = _values(LlamaForCausalLM(cfg))
    paddle.seed(11)
    b = _values(LlamaForCausalLM(cfg))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_random_default_without_a_rule_is_refused():
    import paddle.nn as nn

    class Odd(nn.Layer):
        def __init__(self):
            super().__init__()
            self.w = self.create_parameter([3, 3])            # Xavier: random, order dependent

    with init.deferred():
        layer = Odd()
    init.plan(layer, _small(), seed=0)
    with pytest.raises(RuntimeError, match="not a constant"):
        init.materialize(layer)
