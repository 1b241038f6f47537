"""FLOPs per token (PaddleNLP's formula) and the log line format."""

import pytest

from llmpre.train.metrics import flops_per_token, format_log


def test_flops_formula_by_hand():
    h, i, L, v, s = 4, 8, 2, 10, 3
    per_layer = s * h * h * 4 + s * s * h * 2 + s * h * i * 3 + s * i
    want = 2 * (L * per_layer * 3 + 3 * s * h * v) / s
    assert flops_per_token(h, i, L, v, s) == pytest.approx(want)
    full = 2 * (L * (per_layer * 3 + per_layer) + 3 * s * h * v) / s
    assert flops_per_token(h, i, L, v, s, recompute=True, granularity="full") == pytest.approx(full)


def test_llama2_7b_order_of_magnitude():
    # ~6 * 6.7e9 FLOPs per token plus attention: 40-50 GFLOP/token at seq 4096.
    f = flops_per_token(4096, 11008, 32, 32000, 4096)
    assert 4.0e10 < f < 5.0e10


def test_format_log():
    assert format_log({"loss": 1.5, "global_step": 3}) == "loss: 1.5, global_step: 3"
