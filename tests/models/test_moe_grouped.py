"""The MoE block's grouped expert path: equal to the per-expert loop it replaced (outputs
and every gradient, within the kernel standard against a float64 loop), no host
synchronisation in forward or backward, and the capacity factor's deterministic drops."""

from __future__ import annotations

import copy
import math

import numpy as np
import paddle
import pytest

import llmpre.ops as ops
from llmpre.errors import ConfigError
from llmpre.models.config import ModelConfig
from llmpre.models.moe import MoE
from llmpre.ops import reference as R
from tests.ops import fused_checks as C

BUILT = ops.available("llmpre_grouped_mlp") and ops.available("llmpre_moe_combine")
needs_kernel = pytest.mark.skipif(not BUILT, reason=f"llmpre_grouped_mlp or llmpre_moe_combine not built: "
                                                    f"{ops.status()['unavailable']}")


def _config(experts=8, k=2, inter=24, capacity=0.0, **moe):
    return ModelConfig(model_type="qwen2_moe", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=4, vocab_size=64, max_position_embeddings=64,
                       moe=dict(num_experts=experts, num_experts_per_tok=k, moe_intermediate_size=inter,
                                moe_capacity_factor=capacity, **moe))


def _block(config, fused):
    paddle.seed(3)
    block = MoE(config, ops.select_ops(use_fused_grouped_mlp=fused, use_fused_moe_combine=fused))
    for p in block.parameters():   # weights large enough that the experts' outputs are O(1)
        if p.ndim == 2 and not p.stop_gradient:
            p.set_value(p * 8.0)
    return block


def _loop_grads(block, x, dtype, keep=None):
    """Output and gradients (x, router, every expert weight) of the per-expert loop."""
    b = copy.deepcopy(block)
    b.to(dtype=dtype)
    xt = paddle.to_tensor(x.astype(dtype))
    xt.stop_gradient = False
    weights, experts, _ = b.gate(xt)
    if keep is not None:
        weights = weights * paddle.to_tensor(keep.astype("float32"))
    out = R.moe_expert_loop(xt, weights, experts, list(b.experts))
    return _grads(b, xt, out)


def _grads(block, xt, out):
    params = [block.gate.weight] + [p for e in block.experts for p in e.parameters()]
    dy = paddle.to_tensor(np.cos(np.arange(out.size)).reshape(out.shape).astype("float32")).astype(out.dtype)
    grads = paddle.grad([out], [xt] + params, [dy], allow_unused=True)
    return [out.numpy()] + [np.zeros(p.shape) if g is None else g.numpy() for g, p in zip(grads, [xt] + params)]


def _grouped_grads(block, x):
    xt = paddle.to_tensor(x)
    xt.stop_gradient = False
    weights, experts, _ = block.gate(xt)
    return _grads(block, xt, block.routed(xt, weights, experts))


@pytest.mark.parametrize("fused", [pytest.param(True, marks=needs_kernel), False])
def test_grouped_equals_the_per_expert_loop(fused):
    block = _block(_config(), fused)
    x = np.random.default_rng(0).normal(size=(40, 32)).astype(np.float32)
    truth = _loop_grads(block, x, "float64")
    naive = _loop_grads(block, x, "float32")
    got = _grouped_grads(block, x)
    names = ["out", "dx", "d router"] + [f"d {n}" for n, _ in block.experts.named_parameters()]
    for name, g, t, n in zip(names, got, truth, naive):
        C.check(name, g, t, n)


def _kept_pairs(experts: np.ndarray, num: int, capacity: int) -> np.ndarray:
    """[n, k] bool: a (token, slot) pair is kept while its expert has seen fewer than
    `capacity` earlier pairs (token order, then slot order)."""
    seen = np.zeros(num, dtype=np.int64)
    keep = np.zeros(experts.shape, dtype=bool)
    for t in range(experts.shape[0]):
        for s in range(experts.shape[1]):
            e = experts[t, s]
            keep[t, s] = seen[e] < capacity
            seen[e] += 1
    return keep


@pytest.mark.parametrize("fused", [pytest.param(True, marks=needs_kernel), False])
def test_capacity_factor_drops_the_latest_tokens_of_full_experts(fused):
    factor = 0.5
    block = _block(_config(capacity=factor), fused)
    x = np.random.default_rng(1).normal(size=(48, 32)).astype(np.float32)
    experts = block.gate(paddle.to_tensor(x))[1].numpy()
    capacity = math.ceil(factor * 48 * 2 / 8)
    keep = _kept_pairs(experts, 8, capacity)
    assert 0 < keep.sum() < keep.size    # this case drops some pairs and keeps others
    truth = _loop_grads(block, x, "float64", keep)
    naive = _loop_grads(block, x, "float32", keep)
    got = _grouped_grads(block, x)
    for name, g, t, n in zip(["out", "dx", "d router"], got, truth, naive):
        C.check(name, g, t, n)
    again = _grouped_grads(block, x)
    for u, v in zip(got, again):
        np.testing.assert_array_equal(u, v)


@needs_kernel
def test_no_host_synchronisation_in_forward_or_backward(monkeypatch):
    block = _block(_config(experts=16, k=4, n_group=4, topk_group=2, topk_method="group_limited_greedy",
                           shared_expert_intermediate_size=16), True)
    x = paddle.randn([2, 12, 32])
    x.stop_gradient = False

    def sync(*args, **kwargs):
        raise AssertionError("host synchronisation in the MoE block")

    for owner, name in ((paddle, "nonzero"), (paddle.Tensor, "numpy"), (paddle.Tensor, "item"),
                        (paddle.Tensor, "tolist"), (paddle.Tensor, "__bool__"), (paddle.Tensor, "__int__"),
                        (paddle.Tensor, "__float__"), (paddle.Tensor, "__index__"), (paddle, "masked_select")):
        monkeypatch.setattr(owner, name, sync)
    out, _ = block(x)
    out.sum().backward()
    monkeypatch.undo()
    assert x.grad is not None and np.isfinite(x.grad.numpy()).all()


def test_capacity_factor_and_expert_shape_are_checked():
    with pytest.raises(ConfigError, match="moe_capacity_factor"):
        _config(capacity=-1.0)
    config = ModelConfig(**{**_config().__dict__, "hidden_act": "gelu"})
    with pytest.raises(ConfigError, match="hidden_act"):
        MoE(config, ops.select_ops())


def test_capacity_factor_travels_through_config_json():
    """llmpre's own config.json key (HF has none): read by from_hf_dict, written back by
    to_hf_dict (whose round-trip check would otherwise refuse a capacity-limited model)."""
    import dataclasses

    from llmpre.models import get_preset
    from llmpre.models.hf_config import from_hf_dict, to_hf_dict

    for name in ("qwen1.5-moe-a2.7b", "mixtral-8x7b", "deepseek-v3"):
        dropless = get_preset(name)
        config = dropless.replace(moe=dataclasses.replace(dropless.moe, moe_capacity_factor=1.25))
        d = to_hf_dict(config)
        assert d["moe_capacity_factor"] == 1.25 and from_hf_dict(d) == config
        assert "moe_capacity_factor" not in to_hf_dict(dropless)      # dropless: no key
