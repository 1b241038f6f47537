"""The planner's parameter, gradient and optimizer-state bytes equal what a built
model and llmpre's AdamW allocate on the CPU (fp32: 4 + 4 + 8 bytes a parameter)."""

from __future__ import annotations

import pytest

paddle = pytest.importorskip("paddle")

from llmpre.models import build_model, causal_lm_loss, get_config  # noqa: E402
from llmpre.plan import PlanSettings, plan_memory  # noqa: E402
from llmpre.parallel.dims import ParallelDims  # noqa: E402
from llmpre.parallel.env import init_parallel  # noqa: E402
from llmpre.parallel.optimizer import ShardedAdamW  # noqa: E402


def _bytes(tensors) -> int:
    return sum(int(t.numel().item()) * t.element_size() for t in tensors)


def _small(**changes):
    base = get_config("llama-tiny").replace(num_hidden_layers=2, vocab_size=384, hidden_size=64,
                                            intermediate_size=176, num_attention_heads=4, num_key_value_heads=2)
    return base.replace(**changes)


CONFIGS = {
    "llama-tiny preset": get_config("llama-tiny"),
    "gqa, untied": _small(),
    "tied embeddings": _small(tie_word_embeddings=True),
    "multi-head, 3 layers": _small(num_key_value_heads=4, num_hidden_layers=3),
    "qwen2-style q/k/v biases": _small(attention_bias=True, model_type="qwen2"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_planned_bytes_equal_allocated_bytes(name):
    cfg = CONFIGS[name]
    model = build_model(cfg, seed=0)
    ids = paddle.randint(0, cfg.vocab_size, [2, 9])
    loss = causal_lm_loss(model(ids[:, :-1]), ids[:, 1:])
    loss.backward()
    optimizer = ShardedAdamW(model.named_parameters(), init_parallel(ParallelDims()))

    params = [p for p in model.parameters() if not p.stop_gradient]
    grads = [p.grad for p in params]
    assert all(g is not None for g in grads), "every parameter should have a gradient after a backward"
    # one shard of fp32 parameters: they are their own master weights (no copy)
    assert optimizer.aliased and all(p._is_shared_buffer_with(optimizer.master) for p in params)
    states = [optimizer.exp_avg, optimizer.exp_avg_sq]

    plan = plan_memory(PlanSettings(model=cfg, seq_length=8, micro_batch=2))
    stage = plan.stages[0]
    assert stage.params == sum(int(p.numel().item()) for p in params)
    assert stage.weights == _bytes(params)
    assert stage.gradients == _bytes(grads)
    assert stage.optimizer == _bytes(states)
    # one shard: the update reads the gradients packed into one fp32 buffer, kept between steps
    optimizer.reduce_gradients()
    assert optimizer._grad_buffer is not None and optimizer.grad_shard is optimizer._grad_buffer
    assert stage.grad_buffer == _bytes([optimizer._grad_buffer]) == stage.params * 4
    assert all(v >= stage.weights + stage.optimizer + stage.grad_buffer for v in stage.phases.values())
