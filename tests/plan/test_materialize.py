"""`llmpre plan --materialize`: one rank's real parameters, gradient buffers and optimizer
state, built by the trainer's code without its peers, measure exactly what the plan says."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

pytest.importorskip("paddle")

from llmpre.cli import main  # noqa: E402
from llmpre.errors import ConfigError  # noqa: E402
from llmpre.models import get_config  # noqa: E402
from llmpre.plan import PlanSettings  # noqa: E402
from llmpre.plan.materialize import materialize  # noqa: E402

CASES = {
    "one process fp32": dict(),
    "tp2 x pp2 x sharding2 stage1, bf16 O2": dict(tp=2, pp=2, sharding=2, stage=1, dtype="bfloat16", opt_level="O2"),
    "sharding2 stage1 fp32": dict(sharding=2, stage=1),
    "tp2, tied embeddings, pp2": dict(tp=2, pp=2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_measured_bytes_equal_the_plan_for_every_rank(name):
    kw = dict(CASES[name])
    model = get_config("llama-tiny")
    if name.startswith("tp2, tied"):
        model = model.replace(tie_word_embeddings=True)
    s = PlanSettings(model=model, seq_length=64, micro_batch=1, **kw)
    for rank in range(s.world_size):
        m = materialize(s, rank)
        assert m.params == m.planned["params"], (name, rank)
        for key in ("weights", "gradients"):
            assert getattr(m, key) == m.planned[key], (name, rank, key)
        # the optimizer's flat layout pads buckets to a multiple of the sharding degree
        assert m.optimizer - m.optimizer_padding == pytest.approx(m.planned["optimizer"], abs=12 * s.sharding), \
            (name, rank, m.optimizer, m.planned["optimizer"])
        assert m.peak_rss >= m.rss_before and m.seconds > 0


def test_a_rank_outside_the_world_and_a_rank_without_materialize_are_refused():
    r = CliRunner().invoke(main, ["plan", "--model", "llama-tiny", "--seq-length", "64", "--micro-batch", "1",
                                  "--tp", "2", "--materialize", "--rank", "2"])
    assert r.exit_code != 0 and "--rank 2: the layout has 2 ranks (0 to 1)" in r.output, r.output
    r = CliRunner().invoke(main, ["plan", "--model", "llama-tiny", "--seq-length", "64", "--micro-batch", "1",
                                  "--rank", "1"])
    assert r.exit_code != 0 and "add --materialize" in r.output, r.output


def test_an_impossible_layout_is_one_error():
    r = CliRunner().invoke(main, ["plan", "--model", "llama-tiny", "--seq-length", "64", "--micro-batch", "1",
                                  "--tp", "3", "--materialize"])
    assert r.exit_code != 0 and "tp=3 must divide num_attention_heads=4" in r.output, r.output
    assert "Traceback" not in r.output and "materialized" not in r.output
    with pytest.raises(ConfigError, match="tp=3"):
        PlanSettings(model=get_config("llama-tiny"), seq_length=64, micro_batch=1, tp=3)


def test_the_cli_prints_measured_next_to_planned():
    r = CliRunner().invoke(main, ["plan", "--model", "llama-tiny", "--seq-length", "64", "--micro-batch", "1",
                                  "--pp", "2", "--materialize", "--rank", "1"])
    assert r.exit_code == 0, r.output
    assert "materialized rank 1 of 2" in r.output and "weights" in r.output and "equal" in r.output
    assert "peak resident memory" in r.output
