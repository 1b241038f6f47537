"""A finished run's outputs, as PaddleNLP's run_pretrain.py leaves them: the config
print, the train metrics block, train_results.json, all_results.json and a
top-level trainer_state.json (which resuming must not mistake for a checkpoint)."""

from __future__ import annotations

import json
import os

import pytest

from llmpre.train.args import parse_arguments
from llmpre.train.monitor import read_metrics

FAST = {"model": "llama-tiny", "num_hidden_layers": "1", "max_seq_length": "32",
        "per_device_train_batch_size": "2", "per_device_eval_batch_size": "2", "eval_iters": "1",
        "logging_steps": "1", "save_steps": "2", "eval_steps": "2", "decay_steps": "3",
        "disable_tqdm": "true", "num_threads": "1"}


def train(output_dir, **kw):
    from llmpre.train.trainer import run

    return run(parse_arguments(None, {**FAST, "output_dir": str(output_dir), **{k: str(v) for k, v in kw.items()}}))


def load(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def block(stdout: str, split: str) -> dict:
    """The ``key = value`` lines after ``***** <split> metrics *****``."""
    lines = [line.split(" - ", 1)[1] for line in stdout.splitlines() if " - " in line]
    start = lines.index(f"***** {split} metrics *****") + 1
    out = {}
    for line in lines[start:]:
        if not line.startswith("  ") or " = " not in line:
            break
        key, value = line.strip().split(" = ")
        out[key.strip()] = value.strip()
    return out


def test_outputs_of_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    result = train(out, max_steps=3, do_eval="true", do_predict="true")
    stdout = capsys.readouterr().out

    # "Final pre-training config: LlamaConfig {" + the config as indented JSON
    head = "Final pre-training config: LlamaConfig "
    text = stdout[stdout.index(head) + len(head):]
    config = json.loads(text[:text.index("\n}\n") + 2])
    from llmpre.models.hf_config import to_hf_dict
    from llmpre.train.trainer import _model_config

    assert config == to_hf_dict(_model_config(parse_arguments(None, {**FAST, "output_dir": str(out)})))
    assert text.startswith('{\n  "architectures": [')

    metrics = read_metrics(str(out))
    steps = [e["step"] for e in metrics["train"]]
    assert steps == [1, 2, 3]
    results = load(out / "train_results.json")
    assert sorted(results) == ["progress_or_epoch", "train_loss", "train_runtime", "train_samples_per_second",
                               "train_steps_per_second"]
    assert results["train_loss"] == pytest.approx(sum(e["loss"] for e in metrics["train"]) / 3, abs=1e-7)
    runtime = results["train_runtime"]
    assert results["train_samples_per_second"] == pytest.approx(3 * 2 / runtime, rel=1e-3)
    assert results["train_steps_per_second"] == pytest.approx(3 / runtime, rel=1e-3)
    assert results["progress_or_epoch"] == metrics["train"][-1]["progress_or_epoch"]
    assert load(out / "all_results.json") == results    # run_pretrain.py saves only the train split
    assert {k: result[k] for k in results} == results and "test_loss" in result

    shown = block(stdout, "train")
    assert list(shown) == sorted(results)
    assert shown["train_loss"] == str(round(results["train_loss"], 4))
    assert shown["train_runtime"].startswith("0:00:")
    assert list(block(stdout, "test")) == ["test_loss", "test_runtime", "test_samples_per_second",
                                           "test_steps_per_second"]
    assert stdout.index("***** train metrics *****") < stdout.index("***** test metrics *****") \
        < stdout.index("Effective Tokens per second")

    state = load(out / "trainer_state.json")
    assert (state["global_step"], state["max_steps"], state["num_train_epochs"]) == (3, 3, 1)
    assert state["epoch"] == results["progress_or_epoch"]
    history = state["log_history"]
    kinds = [(h["step"], "train_runtime" if "train_runtime" in h else "eval_loss" if "eval_loss" in h
              else "loss") for h in history]
    assert kinds == [(1, "loss"), (2, "loss"), (2, "eval_loss"), (3, "loss"), (3, "train_runtime")]
    assert history[-1] == {**results, "step": 3}
    assert history[2] == {k: v for k, v in metrics["eval"][0].items() if k != "type"}   # with progress_or_epoch
    from llmpre.train.metrics import LOG_KEYS

    for h, e in zip(history[:2] + history[3:4], metrics["train"]):   # the log line's keys, as logged
        assert h == {**{k: v for k, v in e.items() if k in LOG_KEYS}, "step": e["step"]}
        assert "cpu_mem_used_peak" in h and not any("memory" in k for k in h)
    # the checkpoint's own state is llmpre's, untouched
    assert "model_config" in load(out / "checkpoint-2" / "trainer_state.json")


def test_a_resumed_run_is_not_confused_by_the_top_level_state(tmp_path, capsys):
    out = tmp_path / "run"
    train(out, max_steps=2, do_eval="false")
    first = load(out / "trainer_state.json")
    assert first["global_step"] == 2
    capsys.readouterr()
    train(out, max_steps=3, do_eval="false")        # the same schedule (decay_steps 3), one step more
    stdout = capsys.readouterr().out
    assert "Resuming from " + str(out / "checkpoint-2") in stdout
    state = load(out / "trainer_state.json")
    assert [h["step"] for h in state["log_history"]] == [1, 2, 3, 3]   # the whole run, then the summary
    assert state["log_history"][:2] == first["log_history"][:2]
    results = load(out / "train_results.json")
    assert results["train_samples_per_second"] == pytest.approx(1 * 2 / results["train_runtime"], rel=1e-3)
    assert load(out / "all_results.json") == results
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_best_model_fields_under_load_best_model_at_end(tmp_path):
    out = tmp_path / "run"
    train(out, max_steps=3, do_eval="true", eval_steps=1, save_steps=1, load_best_model_at_end="true")
    evals = {e["step"]: e["eval_loss"] for e in read_metrics(str(out))["eval"]}
    best = min(evals, key=evals.get)
    state = load(out / "trainer_state.json")
    assert state["best_metric"] == pytest.approx(evals[best], abs=1e-8)        # eval_loss is logged to 8 places
    assert state["best_model_checkpoint"] == str(out / f"checkpoint-{best}")
    assert state["global_step"] == 3                                           # the steps trained, not the best's


def test_export_hf_of_a_finished_run_reads_its_final_weights(tmp_path):
    """output_dir's top-level trainer_state.json sits beside config.json: export-hf takes the
    directory as the HF checkpoint it is, not as a training checkpoint."""
    import numpy as np
    from click.testing import CliRunner
    from safetensors.numpy import load_file

    from llmpre.cli import main

    out = tmp_path / "run"
    train(out, max_steps=1, do_eval="false")
    assert (out / "trainer_state.json").is_file() and (out / "config.json").is_file()
    result = CliRunner().invoke(main, ["export-hf", str(out), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    final, exported = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert sorted(final) == sorted(exported) and all(np.array_equal(final[k], exported[k]) for k in final)
