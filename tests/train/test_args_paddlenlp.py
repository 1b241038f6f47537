"""PaddleNLP's keys: every key of the official argument sets is honoured, accepted with a
notice, or refused with the reason; unknown keys come in one error; flags-only runs say
where QUICKSTART differs from PaddleNLP (``--paddlenlp-defaults`` turns it off); the
cadence of evaluation, saving and the best checkpoint."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest

from llmpre.errors import ConfigError
from llmpre.train import cadence
from llmpre.train import paddlenlp_keys as pk
from llmpre.train.args import QUICKSTART, _field_map, parse_arguments, parse_flag_list

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "paddlenlp_configs"


def write(tmp_path, obj) -> str:
    p = tmp_path / "args.json"
    p.write_text(json.dumps(obj))
    return str(p)


def official_keys() -> set:
    keys = set()
    for p in ASSETS.glob("*.json"):
        keys |= set(json.loads(p.read_text()))
    for line in (ASSETS / "experimental-run_trainer_tp4pp2.flags").read_text().splitlines():
        keys.add(shlex.split(line)[0][2:])
    return keys


def test_every_official_key_is_known():
    """Each key is a field (honoured), a no-op with its reason, or refused with its reason."""
    known = set(_field_map()) | set(pk.NOOP) | set(pk.REFUSED)
    assert official_keys() - known == set()
    assert len(official_keys()) > 50


def test_issue_keys_are_all_handled():
    named = ["eval_accumulation_steps", "num_train_epochs", "evaluation_strategy", "save_strategy",
             "load_best_model_at_end", "metric_for_best_model", "model_type", "device",
             "pipeline_parallel_config", "sharding_parallel_config", "tensor_parallel_config",
             "amp_custom_black_list", "amp_custom_white_list", "to_static", "use_fast_layer_norm",
             "hidden_dropout_prob", "attention_probs_dropout_prob"]
    known = set(_field_map()) | set(pk.NOOP)
    assert [k for k in named if k not in known] == []


@pytest.mark.parametrize("name", sorted(p.name for p in ASSETS.glob("*.json")))
def test_official_files_parse(name, tmp_path):
    path = str(ASSETS / name)
    over = {"output_dir": str(tmp_path / "out")}
    if "chatglm2" in name:
        with pytest.raises(ConfigError, match="metric_for_best_model.*'accuracy'"):
            parse_arguments(path, over)
        over["metric_for_best_model"] = "eval_loss"
    args = parse_arguments(path, over)
    raw = json.loads((ASSETS / name).read_text())
    assert args.max_steps == raw["max_steps"] and args.learning_rate == raw["learning_rate"]
    if raw.get("unified_checkpoint"):
        assert any(n.startswith("unified_checkpoint = True has no effect here") for n in args.notices)


def test_unknown_and_refused_keys_come_in_one_error(tmp_path):
    path = write(tmp_path, {"max_steps": 5, "learnig_rate": 1, "frobnicate": 2, "use_fp8": True,
                            "sep_parallel_degree": 2, "context_parallel_degree": 1, "max_seq_length": "x"})
    with pytest.raises(ConfigError) as info:
        parse_arguments(path, {})
    msg = str(info.value)
    assert "4 arguments cannot be used" in msg
    for part in ("`learnig_rate`; did you mean learning_rate", "`frobnicate`", "`use_fp8` = True",
                 "fp8 training is not implemented", "`max_seq_length` must be"):
        assert part in msg, part
    assert "sep_parallel_degree" not in msg and "context_parallel_degree" not in msg   # both built


def test_noop_keys_notice_only_when_not_default(tmp_path):
    args = parse_arguments(write(tmp_path, {"max_steps": 5, "to_static": True, "use_fast_layer_norm": False,
                                            "eval_accumulation_steps": 16, "expert_parallel_degree": 1,
                                            "output_dir": str(tmp_path / "o")}), {})
    text = "\n".join(args.notices)
    assert "to_static = True has no effect here: llmpre trains eagerly" in text
    assert "eval_accumulation_steps = 16 has no effect here" in text
    assert "use_fast_layer_norm" not in text and "expert_parallel_degree" not in text
    assert len(args.notices) == 2


def test_parallel_config_words(tmp_path):
    args = parse_arguments(None, {"pipeline_parallel_config": "disable_partial_send_recv enable_delay_scale_loss",
                                  "sharding_parallel_config": "split_param,enable_stage1_tensor_fusion",
                                  "tensor_parallel_config": "enable_delay_scale_loss",
                                  "output_dir": str(tmp_path / "o")})
    lines = [n for n in args.notices if "_parallel_config '" in n]
    assert len(lines) == 5
    assert any("sharding_parallel_config 'split_param' has no effect here" in n for n in lines)
    with pytest.raises(ConfigError, match="`pipeline_parallel_config` word 'enable_magic' is unknown "
                                          r"\(known: disable_p2p_cache_shape"):
        parse_arguments(None, {"pipeline_parallel_config": "enable_timer enable_magic"})


def test_strategies_follow_paddlenlp(tmp_path):
    out = {"output_dir": str(tmp_path / "o"), "max_steps": "10"}
    base = write(tmp_path, {"max_steps": 10})
    assert parse_arguments(base, out).evaluation_strategy == "no"
    args = parse_arguments(base, {**out, "do_eval": "true"})
    assert args.evaluation_strategy == "steps"
    args = parse_arguments(base, {**out, "evaluation_strategy": "epoch"})
    assert args.do_eval and args.evaluation_strategy == "epoch"
    args = parse_arguments(base, {**out, "eval_strategy": "steps"})   # the newer spelling
    assert args.evaluation_strategy == "steps"
    with pytest.raises(ConfigError, match="evaluation_strategy"):
        parse_arguments(base, {**out, "evaluation_strategy": "sometimes"})


def test_load_best_model_checks(tmp_path):
    out = {"output_dir": str(tmp_path / "o"), "max_steps": "10", "do_eval": "true"}
    args = parse_arguments(None, {**out, "load_best_model_at_end": "true", "eval_steps": "5", "save_steps": "10"})
    assert args.metric_for_best_model == "loss"
    with pytest.raises(ConfigError, match="save_steps \\(7\\) to be a multiple of eval_steps \\(5\\)"):
        parse_arguments(None, {**out, "load_best_model_at_end": "true", "eval_steps": "5", "save_steps": "7"})
    with pytest.raises(ConfigError, match="strategies to match"):
        parse_arguments(None, {**out, "load_best_model_at_end": "true", "save_strategy": "epoch"})
    with pytest.raises(ConfigError, match="'accuracy' is not computed"):
        parse_arguments(None, {**out, "metric_for_best_model": "accuracy"})
    with pytest.raises(ConfigError, match="greater_is_better.*lowest eval loss"):
        parse_arguments(None, {**out, "greater_is_better": "true"})


def test_num_train_epochs(tmp_path):
    out = {"output_dir": str(tmp_path / "o")}
    path = write(tmp_path, {"learning_rate": 1e-4})
    with pytest.raises(ConfigError, match="set `max_steps`.*or `num_train_epochs`"):
        parse_arguments(path, out)
    args = parse_arguments(path, {**out, "num_train_epochs": "1.5"})
    assert args.max_steps == -1 and args.num_train_epochs == 1.5
    args = parse_arguments(path, {**out, "num_train_epochs": "2", "max_steps": "7"})
    assert any("num_train_epochs = 2.0 is ignored: max_steps = 7 > 0" in n for n in args.notices)


def test_epoch_length_from_the_data(tmp_path):
    args = parse_arguments(None, {"output_dir": str(tmp_path / "o"), "max_steps": "0", "num_train_epochs": "0.5",
                                  "max_seq_length": "128", "per_device_train_batch_size": "8"})
    samples = cadence.train_samples_per_epoch(args)
    from llmpre import _core
    from llmpre.data import open_corpus
    from llmpre.data.default import default_corpus_prefix

    corpus = open_corpus(default_corpus_prefix())
    b = _core.split_ranges("949,50,1", corpus.num_items)
    assert samples == (corpus.count_tokens(b[0], b[1]) - 1) // 128
    steps = cadence.steps_per_epoch(args, data_parallel_size=2)
    # PaddleNLP's count: each of 2 ranks holds ceil(samples / 2), in ceil(. / 8) batches
    assert steps == math.ceil(math.ceil(samples / 2) / 8)
    assert cadence.resolve_max_steps(args, steps) == -(-steps // 2)   # ceil(0.5 x steps)


def test_cadence_is_a_function_of_the_step(tmp_path):
    args = parse_arguments(None, {"output_dir": str(tmp_path / "o"), "max_steps": "25", "do_eval": "true",
                                  "evaluation_strategy": "epoch", "save_strategy": "steps", "save_steps": "4"})
    c = cadence.Cadence(args, epoch_steps=10)
    assert [s for s in range(1, 26) if c.eval_due(s)] == [10, 20, 25]
    assert [s for s in range(1, 26) if c.save_due(s)] == [4, 8, 12, 16, 20, 24]
    args.save_strategy = "no"
    assert not any(c.save_due(s) for s in range(1, 26))


def test_best_checkpoint_survives_rotation():
    best = cadence.BestCheckpoint()
    assert best.offer(3.0, 2) and not best.offer(3.5, 4) and best.offer(2.5, 6) and not best.offer(2.6, 8)
    assert best.step == 6
    assert best.keep([2, 4, 6, 8, 10], 1) == 3     # 6, 8 and 10 stay
    assert best.keep([2, 4, 6, 8, 10], 4) == 4
    assert best.keep([8, 10], 1) == 1               # not among them: plain limit
    restored = cadence.BestCheckpoint()
    restored.load_state_dict(best.state_dict())
    assert (restored.step, restored.metric) == (6, 2.5)


def test_quickstart_differences_line_and_paddlenlp_defaults(tmp_path):
    tokens = [t for line in (ASSETS / "experimental-run_trainer_tp4pp2.flags").read_text().splitlines()
              for t in shlex.split(line)]
    flags = {**parse_flag_list(tokens), "output_dir": str(tmp_path / "o")}
    args = parse_arguments(None, flags)
    line = args.notices[0]
    for part in ("warmup_steps 20 (PaddleNLP: 0)", "lr_scheduler_type cosine (PaddleNLP: linear)",
                 "adam_beta2 0.95 (PaddleNLP: 0.999)", "eval_iters 4 (PaddleNLP: 10)",
                 "save_total_limit 2 (PaddleNLP: unset)"):
        assert part in line, part
    assert "max_steps" not in line and "learning_rate 0.003" not in line   # the flags set those
    assert args.warmup == 20
    args = parse_arguments(None, {**flags, "paddlenlp-defaults": "true"})
    assert not any("quickstart" in n for n in args.notices)
    assert (args.warmup, args.lr_scheduler_type, args.adam_beta2, args.eval_iters, args.save_total_limit) == (
        0.01 * 10000, "linear", 0.999, 10, None)
    assert args.model_type == "llama" and args.device == "gpu" and args.fp16 and args.do_train


def test_list_values_and_multi_word_flags(tmp_path):
    flags = parse_flag_list(["--amp_custom_black_list", "reduce_sum", "softmax", "--bf16", "--max_steps", "3"])
    assert flags["amp_custom_black_list"] == "reduce_sum softmax" and flags["bf16"] == "true"
    path = write(tmp_path, {"max_steps": 3, "bf16": True, "amp_custom_white_list": ["lookup_table", "matmul"],
                            "amp_custom_black_list": ["reduce_sum"], "output_dir": str(tmp_path / "o")})
    args = parse_arguments(path, {})
    from llmpre.train.precision import BLACK_LIST, Precision

    p = Precision.from_args(args)
    assert p.white == {"lookup_table", "matmul"} and p.black == {"reduce_sum"}
    with pytest.raises(ConfigError, match="matmul in both"):
        parse_arguments(path, {"amp_custom_black_list": "matmul"})
    args = parse_arguments(path, {"bf16": "false"})
    assert any("have no effect here: the run is fp32" in n for n in args.notices)
    assert "reduce_sum" in BLACK_LIST


def test_amp_lists_reach_autocast(monkeypatch):
    from llmpre.train.precision import Precision

    seen = {}

    class FakeAmp:
        @staticmethod
        def auto_cast(**kw):
            seen.update(kw)
            return "ctx"

    class FakePaddle:
        amp = FakeAmp

    p = Precision("bfloat16", "O2", frozenset({"sin"}), frozenset({"reduce_sum", "matmul"}))
    assert p.autocast(FakePaddle) == "ctx"
    assert "sin" in seen["custom_black_list"] and "reduce_sum" not in seen["custom_black_list"]
    assert {"matmul", "reduce_sum", "lookup_table"} <= seen["custom_white_list"]


def test_device_and_model_type(tmp_path):
    with pytest.raises(ConfigError, match="`device` 'xpu' is not supported"):
        parse_arguments(None, {"device": "xpu"})
    import paddle

    if not paddle.is_compiled_with_cuda():
        with pytest.raises(ConfigError, match="device 'gpu' was asked for"):
            cadence.choose_device("gpu", paddle, 1)
    assert cadence.choose_device("cpu", paddle, 1) == "cpu"
    from llmpre.models import get_config

    cadence.check_model_type("llama", get_config("facebook/llama-7b"))
    cadence.check_model_type("gpt", get_config("gpt2-medium-en"))
    cadence.check_model_type("qwen2", get_config("Qwen/Qwen2-7B"))
    with pytest.raises(ConfigError, match="model_type 'llama' does not match.*'gpt2'"):
        cadence.check_model_type("llama", get_config("gpt2-medium-en"))
    # PaddleNLP's names of the GLM family: chatglm (ChatGLM-6B, or HF's name of ChatGLM2/3), chatglm_v2
    cadence.check_model_type("chatglm", get_config("chatglm-6b"))
    cadence.check_model_type("chatglm", get_config("chatglm2-6b"))
    cadence.check_model_type("chatglm_v2", get_config("chatglm3-6b"))
    with pytest.raises(ConfigError, match="model_type 'chatglm_v2' does not match.*'glm'"):
        cadence.check_model_type("chatglm_v2", get_config("chatglm-6b"))


def test_quickstart_is_unchanged_by_a_file(tmp_path):
    args = parse_arguments(write(tmp_path, {"max_steps": 5, "output_dir": str(tmp_path / "o")}), {})
    assert args.lr_scheduler_type == "linear" and not args.notices
    assert QUICKSTART["lr_scheduler_type"] == "cosine"
