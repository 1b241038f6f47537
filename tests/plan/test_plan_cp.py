"""The planner models context parallelism and sep: each rank keeps seq / N tokens of
every sequence, so its activations and logits shrink by N (ring attention adds its fp32
output and lse per token); parameters and optimizer state do not change; the world is
N times larger; bad degrees are one error naming the numbers."""

from __future__ import annotations

import pytest

from llmpre.errors import ConfigError
from llmpre.models import get_config
from llmpre.plan import PlanSettings, plan_memory
from llmpre.plan.args import parse_plan_arguments
from llmpre.plan.memory import layer_inventory

TINY = get_config("llama-tiny").replace(max_position_embeddings=16384)


def _plan(**kw):
    return plan_memory(PlanSettings(model=TINY, seq_length=16384, micro_batch=1, flash_attention=True,
                                    fused_rms_norm=True, fused_rope=True, **kw))


def test_cp4_rank_holds_a_quarter_of_the_tokens():
    one, cp4 = _plan(), _plan(cp=4)
    assert cp4.settings.world_size == 4 and cp4.settings.local_seq == 4096
    a, b = one.worst, cp4.worst
    assert b.weights == a.weights and b.optimizer == a.optimizer and b.gradients == a.gradients
    assert b.logits == pytest.approx(a.logits / 4)
    # per token the ring keeps its fp32 output and lse on top of flash attention's tensors
    inv1 = layer_inventory(one.settings)
    inv4 = layer_inventory(cp4.settings)
    extra = inv4["attention: ring's fp32 output and lse"] - inv1["attention softmax stats (fp32)"]
    layers = TINY.num_hidden_layers
    assert b.activations == pytest.approx(a.activations / 4 + extra * 4096 * layers)
    assert (b.activations + b.logits) / (a.activations + a.logits) < 0.3


def test_sep2_halves_the_tokens_and_counts_the_ranks():
    sep2 = _plan(sep=2, dp=2)
    assert sep2.settings.world_size == 4 and sep2.settings.local_seq == 8192
    assert sep2.worst.logits == pytest.approx(_plan(dp=2).worst.logits / 2)


@pytest.mark.parametrize("kw,match", [
    (dict(cp=3), "max_seq_length 16384 is not a multiple of 6"),
    (dict(sep=4), r"\(4 heads, 2 KV heads after tp 1\)"),
    (dict(sep=2, cp=2), "are both > 1"),
])
def test_bad_degrees_are_one_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        _plan(**kw)


def test_training_keys_reach_the_plan():
    s, _ = parse_plan_arguments(None, {"model": "llama-tiny", "seq_length": "16384", "micro_batch": "1",
                                       "context_parallel_degree": "4", "gpus": "8"})
    assert (s.cp, s.dp, s.world_size) == (4, 2, 8)
