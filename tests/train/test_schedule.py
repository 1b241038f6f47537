"""Learning-rate schedules (PaddleNLP's warmup + cosine/linear decay to min_lr)."""

import math

import pytest

from llmpre.train.schedule import lr_at


def test_warmup_is_linear_from_zero():
    kw = dict(kind="cosine", max_lr=1.0, min_lr=0.1, warmup=10, decay_steps=100)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(0.5)
    assert lr_at(10, **kw) == pytest.approx(1.0)


def test_cosine_reaches_min_at_decay_steps_and_stays():
    kw = dict(kind="cosine", max_lr=1.0, min_lr=0.1, warmup=10, decay_steps=110)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.5 * (math.cos(math.pi * 0.5) + 1) * 0.9)
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == 0.1


def test_linear_and_constant():
    kw = dict(max_lr=2.0, min_lr=0.0, warmup=0, decay_steps=4)
    assert [lr_at(s, kind="linear", **kw) for s in range(6)] == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]
    assert lr_at(3, kind="constant", **kw) == 2.0


def test_fractional_warmup_from_ratio():
    kw = dict(kind="linear", max_lr=1.0, min_lr=0.0, warmup=2.5, decay_steps=10)
    assert lr_at(1, **kw) == pytest.approx(0.4)
    assert lr_at(2, **kw) == pytest.approx(0.8)
    assert lr_at(3, **kw) == pytest.approx(1 - 0.5 / 7.5)
