"""``llmpre plan``: flags, PaddleNLP argument files, errors, and the fit search."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmpre.cli import main
from llmpre.models import get_config
from llmpre.plan import PlanSettings, cheapest_fits, plan_memory
from llmpre.plan.args import parse_plan_arguments
from llmpre.plan.memory import GIB, MIB
from llmpre.plan.search import layer_forward_flops, recompute_loss, settings_delta

L7_FLAGS = ["--model", "llama2-7b", "--seq-length", "4096", "--micro-batch", "2", "--tp", "2", "--sharding", "4",
            "--stage", "2", "--bf16", "--fp16-opt-level", "O2", "--flash-attention", "--fused-rms-norm",
            "--fused-rope"]


def run(args):
    return CliRunner().invoke(main, ["plan", *args])


def write(tmp_path, obj) -> str:
    p = tmp_path / "args.json"
    p.write_text(json.dumps(obj))
    return str(p)


def test_flags_print_the_table():
    r = run(L7_FLAGS)
    assert r.exit_code == 0, r.output
    settings, _ = parse_plan_arguments(None, {"model": "llama2-7b", "seq_length": "4096", "micro_batch": "2",
                                              "tp": "2", "sharding": "4", "stage": "2", "bf16": "true",
                                              "fp16_opt_level": "O2", "flash_attention": "true",
                                              "fused_rms_norm": "true", "fused_rope": "true"})
    plan = plan_memory(settings)
    assert "8 GPUs = dp 1 x sharding 4 (stage 2) x tp 2 x pp 1" in r.output
    assert f"{plan.peak_reserved / MIB:,.0f} MiB" in r.output
    for word in ("weights", "gradients", "optimizer states", "activations", "logits + loss", "peak allocated"):
        assert word in r.output


def test_paddlenlp_file_with_flag_overrides(tmp_path):
    path = write(tmp_path, {"model_name_or_path": "meta-llama/Llama-2-7b", "per_device_train_batch_size": 2,
                            "gradient_accumulation_steps": 8, "tensor_parallel_degree": 2, "sharding": "stage2",
                            "bf16": True, "fp16_opt_level": "O2", "use_flash_attention": True,
                            "max_seq_length": 4096, "learning_rate": 3e-5, "continue_training": 1,
                            "unified_checkpoint": True, "sequence_parallel": 0})
    s, _ = parse_plan_arguments(path, {"gpus": "8", "micro_batch": "1", "recompute": "true"})
    assert (s.tp, s.sharding, s.stage, s.dp, s.world_size) == (2, 4, 2, 1, 8)
    assert (s.micro_batch, s.grad_accum, s.recompute, s.granularity) == (1, 8, True, "full")
    assert s.sources["per_device_train_batch_size"] == "flag" and s.sources["tensor_parallel_degree"] == "file"
    r = run([path, "--gpus", "8", "--json", "--gpu-memory", "80"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["world_size"] == 8 and out["fits"] is True and out["suggestions"] == []


def test_sharding_word_and_degree_spellings(tmp_path):
    s, _ = parse_plan_arguments(None, {"model": "llama2-7b", "seq_length": "128", "micro_batch": "1",
                                       "sharding": "stage3", "gpus": "8"})
    assert (s.stage, s.sharding, s.dp) == (3, 8, 1)
    s, _ = parse_plan_arguments(None, {"model": "llama2-7b", "seq_length": "128", "micro_batch": "1",
                                       "sharding": "2", "stage": "1", "dp": "4"})
    assert (s.stage, s.sharding, s.dp, s.world_size) == (1, 2, 4, 8)


@pytest.mark.parametrize("content,flags,match", [
    ({"model_name_or_path": "llama-tiny", "bogus_key": 1}, [], "`bogus_key` is not a training argument"),
    ({"model_name_or_path": "llama-tiny", "sharding": "stage2"}, [], "--gpus N"),
    ({"model_name_or_path": "llama-tiny", "sharding": 4}, [], "the degree is sharding_parallel_degree"),
    ({"model_name_or_path": "llama-tiny", "sharding": "stage2 offload"}, ["--gpus", "8"], "offload"),
    ({"model_name_or_path": "llama-tiny", "bf16": True, "fp16": True}, [], "only one of bf16 and fp16"),
    ({"model_name_or_path": "llama-tiny", "tensor_parallel_degree": "two"}, [], "must be an integer"),
    ({"model_name_or_path": "llama-tiny", "tensor_parallel_degree": 3}, [], "tp=3 must divide"),
    ({"model_name_or_path": "llama-tiny"}, ["--gpus", "8", "--dp", "3"], "--gpus 8 but"),
    ({"model_name_or_path": "no-such-model"}, [], "unknown model preset"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, content, flags, match):
    r = run([write(tmp_path, content), *flags])
    assert r.exit_code == 2, r.output
    assert match in r.output and "Traceback" not in r.output


def test_flags_without_a_file_need_model_and_shape():
    r = run(["--model", "llama-tiny"])
    assert r.exit_code == 2 and "--seq-length, --micro-batch" in r.output
    r = run(["--model", "llama-tiny", "--seq-length", "8", "--micro-batch", "1", "--no-such-flag", "3"])
    assert r.exit_code == 2 and "unknown option `--no-such-flag`" in r.output
    # a training key that does not change memory is accepted and ignored, as in a file
    r = run(["--model", "llama-tiny", "--seq-length", "8", "--micro-batch", "1", "--learning-rate", "1e-3"])
    assert r.exit_code == 0, r.output


def test_does_not_fit_prints_the_cheapest_changes_that_do():
    r = run(["--model", "llama2-13b", "--seq-length", "4096", "--micro-batch", "4", "--tp", "2", "--sharding", "4",
             "--stage", "2", "--bf16", "--fp16-opt-level", "O2", "--flash-attention", "--gpu-memory", "80"])
    assert r.exit_code == 0, r.output
    assert "does NOT fit in 80 GiB" in r.output and "cheapest changes that fit" in r.output


def test_suggestions_fit_and_come_cheapest_first():
    s = PlanSettings(model=get_config("llama2-13b"), seq_length=4096, micro_batch=4, tp=2, sharding=4, stage=2,
                     dtype="bfloat16", opt_level="O2", flash_attention=True)
    cap = 80 * GIB
    assert not plan_memory(s).fits(cap)
    found = cheapest_fits(s, cap)
    assert found, "a 13B model on 8 x 80 GiB has fitting layouts"
    assert [g.loss for g in found] == sorted(g.loss for g in found)
    for g in found:
        assert plan_memory(g.settings).fits(cap)
        assert g.settings.world_size == s.world_size
        assert g.settings.micro_batch * g.settings.grad_accum == s.micro_batch * s.grad_accum
        assert settings_delta(s, g.settings) == g.changes


def test_recompute_cost_is_its_share_of_step_flops():
    s = PlanSettings(model=get_config("llama2-7b"), seq_length=4096, micro_batch=1)
    proj, core, mlp = layer_forward_flops(s)
    layer = proj + core + mlp
    head = 2 * 4096 * 32000
    step = 3 * (32 * layer + head)
    assert recompute_loss(s, s.replace(recompute=True)) == pytest.approx(1 - step / (step + 32 * layer))
    assert recompute_loss(s, s.replace(recompute=True, granularity="full_attn")) == pytest.approx(
        1 - step / (step + 32 * (proj + core)))
