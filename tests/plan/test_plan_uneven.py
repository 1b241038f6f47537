"""The planner on uneven pipeline splits: every rank is planned with the layers the trainer
gives it (llmpre.parallel.dims.pipeline_split), the heaviest rank decides the peak, and a
materialized rank of an uneven layout holds exactly the planned bytes."""

from __future__ import annotations

import pytest

from llmpre.errors import ConfigError
from llmpre.models import get_config
from llmpre.parallel.dims import ParallelDims
from llmpre.plan import PlanSettings, plan_memory
from llmpre.plan.args import parse_plan_arguments
from llmpre.plan.memory import in_flight, layer_bytes, param_counts, layer_params, stage_layers


def tiny(layers: int, **kw) -> PlanSettings:
    return PlanSettings(model=get_config("llama-tiny").replace(num_hidden_layers=layers), seq_length=64,
                        micro_batch=1, **kw)


@pytest.mark.parametrize("layers,pp,vpp,explicit", [(3, 2, 1, ()), (5, 2, 2, ()), (7, 4, 1, ()), (4, 2, 1, (1, 3)),
                                                    (61, 16, 1, ()), (10, 2, 2, (1, 4, 2, 3))])
def test_stage_layers_are_the_trainers_chunks_and_sum_to_the_model(layers, pp, vpp, explicit):
    s = tiny(layers, pp=pp, vpp=vpp, pipeline_layers=explicit, grad_accum=pp)
    dims = ParallelDims(pp=pp, vpp=vpp, pipeline_layers=explicit)
    held = [stage_layers(s, r) for r in range(pp)]
    assert sorted(i for h in held for i in h) == list(range(layers))
    for r in range(pp):
        assert held[r] == [i for _, chunk in dims.stage_chunks(layers, r) for i in chunk]
    plan = plan_memory(s)
    assert [st.layers for st in plan.stages] == [len(h) for h in held]


def test_each_rank_counts_its_own_layers_and_the_heaviest_decides():
    s = tiny(3, pp=2, grad_accum=2)                  # rank 0: embedding + layers 0, 1; rank 1: layer 2 + head
    plan = plan_memory(s)
    c = param_counts(s)
    one = layer_params(s, 0).total
    assert [st.params for st in plan.stages] == [c.embedding + 2 * one, one + c.head]
    per_layer = layer_bytes(s, recomputed=False, layer=0)
    assert plan.stages[0].activations == pytest.approx(in_flight(s, 0) * 2 * per_layer + 8 * 64 * in_flight(s, 0))
    assert plan.stages[1].activations == pytest.approx(in_flight(s, 1) * 1 * per_layer)
    assert plan.peak_allocated == max(st.peak for st in plan.stages)
    # the override moves the weight: with 1,2 the second rank holds two layers
    moved = plan_memory(s.replace(pipeline_layers=(1, 2)))
    assert [st.params for st in moved.stages] == [c.embedding + one, 2 * one + c.head]


def test_interleaved_uneven_chunks_are_counted_as_the_schedule_keeps_them():
    # 5 layers on pp2 x vpp2, 2 micro-batches: chunks 1,1,2,1. Rank 0 runs all four forwards
    # (chunk 0 and chunk 2 of both micro-batches) before its first backward: 2 x (1 + 2) layers.
    # Rank 1 holds at most chunk 1 of both and chunk 3 of one: 3 layers.
    s = tiny(5, pp=2, vpp=2, grad_accum=2)
    plan = plan_memory(s)
    per_layer = layer_bytes(s, recomputed=False, layer=0)
    assert plan.stages[0].activations == pytest.approx(6 * per_layer + 8 * 64 * in_flight(s, 0))
    assert plan.stages[1].activations == pytest.approx(3 * per_layer)
    # the same layers as an override: the same plan
    assert plan_memory(s.replace(pipeline_layers=(1, 1, 2, 1))).stages == plan.stages


def test_even_split_plans_are_unchanged_by_an_equal_override():
    s = tiny(4, pp=2, grad_accum=2)
    assert plan_memory(s.replace(pipeline_layers=(2, 2))).stages == plan_memory(s).stages


def test_plan_arguments_read_the_counts_and_refuse_bad_ones():
    flags = {"model": "llama-tiny", "seq-length": "64", "micro-batch": "1", "pp": "2", "num-hidden-layers": "4"}
    s, _ = parse_plan_arguments(None, {**flags, "pipeline-layers": "1,3"})
    assert s.pipeline_layers == (1, 3) and [len(stage_layers(s, r)) for r in (0, 1)] == [1, 3]
    with pytest.raises(ConfigError, match=r"plan: pipeline_layers 1,2 add up to 3 layers but the model has 4"):
        parse_plan_arguments(None, {**flags, "pipeline-layers": "1,2"})
    with pytest.raises(ConfigError, match="plan: 4 layers cannot fill the 8 pipeline stages"):
        parse_plan_arguments(None, {**flags, "pp": "8"})


@pytest.mark.parametrize("kw", [dict(pp=2), dict(pp=2, pipeline_layers=(1, 2)),
                                dict(pp=2, tp=2, sharding=2, stage=1, dtype="bfloat16", opt_level="O2")])
def test_materialized_ranks_of_an_uneven_layout_equal_the_plan(kw):
    pytest.importorskip("paddle")
    from llmpre.plan.materialize import materialize

    s = tiny(3, **kw)
    for rank in range(s.world_size):
        m = materialize(s, rank)
        assert m.params == m.planned["params"], (kw, rank)
        for key in ("weights", "gradients"):
            assert getattr(m, key) == m.planned[key], (kw, rank, key)
        # the optimizer's flat layout pads buckets to a multiple of the sharding degree
        assert m.optimizer - m.optimizer_padding == pytest.approx(m.planned["optimizer"], abs=12 * s.sharding)


def test_deepseek_v3_on_pp16_is_planned_with_its_uneven_split():
    flags = {"model": "deepseek-v3", "seq-length": "4096", "micro-batch": "1", "pp": "16", "ep": "64",
             "sharding": "64", "stage": "1", "bf16": "true", "fp16-opt-level": "O2", "recompute": "true"}
    s, _ = parse_plan_arguments(None, flags)
    plan = plan_memory(s)
    mtp = s.model.num_nextn_predict_layers          # MTP depths are held by the last stage (the preset: 0)
    assert [st.layers for st in plan.stages] == [3, 3] + [4] * 13 + [3 + mtp]
    from llmpre.plan.report import render, to_dict

    assert "layers per chunk 3, 3, 4 x13, 3 (uneven" in render(plan)
    assert to_dict(plan)["pipeline_layers"] == [3, 3] + [4] * 13 + [3]
