"""Argument parsing: PaddleNLP keys, defaults, overrides and clear refusals."""

from __future__ import annotations

import json

import pytest

from llmpre.errors import ConfigError
from llmpre.train.args import QUICKSTART, TrainingArguments, parse_arguments, parse_flag_list


def write(tmp_path, obj) -> str:
    p = tmp_path / "args.json"
    p.write_text(json.dumps(obj))
    return str(p)


def test_quickstart_applies_without_a_file():
    args = parse_arguments(None, {})
    for key, value in QUICKSTART.items():
        assert getattr(args, key) == value
    assert args.output_dir == "output/llama-tiny"


def test_json_file_uses_paddlenlp_defaults_and_flags_override(tmp_path):
    path = write(tmp_path, {"model_name_or_path": "llama-tiny", "max_steps": 10,
                            "learning_rate": 3e-5, "warmup_ratio": 0.1, "bf16": False,
                            "unified_checkpoint": True, "tensor_parallel_degree": 1,
                            "sharding": "", "do_eval": True})
    args = parse_arguments(path, parse_flag_list(["--learning-rate", "1e-4", "--logging_steps=2",
                                                   "--disable-tqdm"]))
    assert args.learning_rate == 1e-4          # the flag wins over the file
    assert args.max_steps == 10 and args.logging_steps == 2 and args.disable_tqdm is True
    assert args.min_learning_rate == TrainingArguments.min_learning_rate == 1e-5  # PaddleNLP default
    assert args.warmup == pytest.approx(1.0)   # warmup_ratio * max_steps
    assert args.effective_eval_steps == 2      # eval_steps defaults to logging_steps


def test_aliases_and_types():
    args = parse_arguments(None, parse_flag_list(["--model", "llama-tiny", "--data", "x/y",
                                                   "--seq-length", "64", "--lr", "0.01",
                                                   "--do_eval", "0", "--save_total_limit", "null"]))
    assert (args.input_dir, args.max_seq_length, args.learning_rate) == ("x/y", 64, 0.01)
    assert args.do_eval is False and args.save_total_limit is None


@pytest.mark.parametrize("overrides,match", [
    ({"max_steps": "x"}, "`max_steps` must be an integer"),
    ({"max_steps": "0"}, "max_steps"),
    ({"learnin_rate": "1"}, "unknown argument `learnin_rate`"),
    ({"recompute_granularity": "partial"}, "recompute_granularity"),
    ({"no_recompute_layers": "1,x"}, "no_recompute_layers"),
    ({"bf16": "true", "fp16": "true"}, "only one of bf16 and fp16"),
    ({"lr_scheduler_type": "poly"}, "lr_scheduler_type"),
    ({"min_learning_rate": "1", "learning_rate": "0.1"}, "exceeds"),
    ({"per_device_train_batch_size": "0"}, "positive"),
])
def test_refusals_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        parse_arguments(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such argument file"):
        parse_arguments(str(tmp_path / "nope.json"), {})
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_arguments(str(bad), {})
    with pytest.raises(ConfigError, match="unknown argument `frobnicate`"):
        parse_arguments(write(tmp_path, {"max_steps": 5, "frobnicate": 1}), {})


def test_parallel_shortcuts():
    args = parse_arguments(None, parse_flag_list(["--tp", "2", "--pp", "2", "--sharding", "4",
                                                   "--sp", "true", "--vpp", "2"]))
    assert (args.tensor_parallel_degree, args.pipeline_parallel_degree) == (2, 2)
    assert (args.sharding_parallel_degree, args.sharding) == (4, "stage1")
    assert args.sequence_parallel and args.virtual_pp_degree == 2
    args = parse_arguments(None, {"sharding": "4", "sharding_stage": "3"})
    assert (args.sharding_parallel_degree, args.sharding) == (4, "stage3")


def test_flag_list_parsing():
    assert parse_flag_list(["--a", "1", "--b=2", "--c", "--d", "x"]) == \
        {"a": "1", "b": "2", "c": "true", "d": "x"}
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_flag_list(["stray"])
