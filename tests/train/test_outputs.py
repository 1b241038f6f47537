"""End-of-training outputs in PaddleNLP's formats (llmpre.train.outputs)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from llmpre.train import outputs


def test_clock_is_hours_minutes_seconds_and_truncated_hundredths():
    assert outputs.clock(0.8226) == "0:00:00.82"
    assert outputs.clock(3725.999) == "1:02:05.99"
    assert outputs.clock(90061.5) == "1 day, 1:01:01.50"


def test_metrics_block_is_sorted_and_aligned():
    metrics = {"train_runtime": 83.615, "train_samples_per_second": 7.294123, "train_loss": 9.081130345662435,
               "progress_or_epoch": 0.0002, "train_steps_per_second": 3.647}
    lines = outputs.metrics_block("train", metrics)
    assert lines == ["***** train metrics *****",
                     "  progress_or_epoch        =     0.0002",
                     "  train_loss               =     9.0811",
                     "  train_runtime            = 0:01:23.61",
                     "  train_samples_per_second =     7.2941",
                     "  train_steps_per_second   =      3.647"]
    assert outputs.metrics_block("test", {}) == ["***** test metrics *****"]


def test_memory_and_flops_values_in_the_block():
    shown = outputs.formatted({"train_mem_cpu_alloc_delta": 3 * 2 ** 20 + 5, "total_flos": 5 * 2 ** 30,
                               "global_step": 7})
    assert shown == {"train_mem_cpu_alloc_delta": "3MB", "total_flos": "5GF", "global_step": 7}


def read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def test_save_metrics_writes_the_split_and_merges_all_results(tmp_path):
    (tmp_path / "all_results.json").write_text(json.dumps({"eval_loss": 5.0, "train_loss": 9.0}))
    outputs.save_metrics(str(tmp_path), "train", {"train_loss": 8.5, "train_runtime": float("inf")})
    text = read(tmp_path / "train_results.json")
    assert text == json.dumps({"train_loss": 8.5, "train_runtime": None}, indent=4, sort_keys=True)
    assert json.loads(read(tmp_path / "all_results.json")) == \
        {"eval_loss": 5.0, "train_loss": 8.5, "train_runtime": None}
    assert sorted(os.listdir(tmp_path)) == ["all_results.json", "train_results.json"]  # no temporaries


def test_unreadable_all_results_is_rewritten_with_a_warning(tmp_path):
    (tmp_path / "all_results.json").write_text('{"eval_loss": 5.0')   # cut short
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("llmpre").addHandler(handler)
    try:
        outputs.save_metrics(str(tmp_path), "train", {"train_loss": 8.5})
    finally:
        logging.getLogger("llmpre").removeHandler(handler)
    assert json.loads(read(tmp_path / "all_results.json")) == {"train_loss": 8.5}
    assert len(seen) == 1 and "all_results.json is unreadable" in seen[0]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    (tmp_path / "train_results.json").write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        outputs.save_metrics(str(tmp_path), "train", {"train_loss": 1.0})
    assert os.listdir(tmp_path) == ["train_results.json"] and read(tmp_path / "train_results.json") == "old"


def test_log_history_interleaves_evaluations_and_stops_at_the_step():
    metrics = {"train": [{"type": "train", "step": s, "loss": 9.0 - s, "global_step": s, "grad_norm": 1.0,
                          "time": 1.0, "skipped_steps": 0} for s in (1, 2, 3, 4)],
               "eval": [{"type": "eval", "step": 2, "eval_loss": 7.5, "progress_or_epoch": 0.1}],
               "skip": [{"type": "skip", "step": 3}]}
    history = outputs.log_history(metrics, last_step=3)
    assert history == [{"loss": 8.0, "global_step": 1, "step": 1}, {"loss": 7.0, "global_step": 2, "step": 2},
                       {"eval_loss": 7.5, "progress_or_epoch": 0.1, "step": 2},
                       {"loss": 6.0, "global_step": 3, "step": 3}]


def test_trainer_state_file(tmp_path):
    state = outputs.trainer_state(global_step=3, max_steps=3, epoch=0.0002, num_train_epochs=1,
                                  history=[{"loss": float("nan"), "step": 3}])
    outputs.save_state(str(tmp_path), state)
    text = read(tmp_path / "trainer_state.json")
    assert text.endswith("}\n") and '\n  "best_metric": null,' in text   # indent 2, sorted keys
    loaded = json.loads(text)
    assert sorted(loaded) == ["best_metric", "best_model_checkpoint", "epoch", "global_step",
                              "is_local_process_zero", "is_world_process_zero", "log_history", "max_steps",
                              "num_train_epochs", "total_flos", "trial_name", "trial_params"]
    assert loaded["log_history"] == [{"loss": None, "step": 3}]


@pytest.mark.parametrize("max_steps,samples,batch,ranks,acc,want", [
    (3, 26896, 2, 1, 1, 1),        # PaddleNLP builds about max_steps * global batch samples: one epoch
    (10, 40, 2, 2, 1, 1),          # 20 samples a rank, 10 batches, 10 updates an epoch
    (11, 40, 2, 2, 1, 2),
    (5, 41, 2, 2, 3, 2),           # ceil(41/2)=21 a rank, 11 batches, 3 updates an epoch
    (4, 3, 2, 1, 4, 4),            # fewer batches than one update: one update an epoch
])
def test_num_train_epochs(max_steps, samples, batch, ranks, acc, want):
    assert outputs.num_train_epochs(max_steps, samples, batch, ranks, acc) == want


def test_config_text_names_the_class_and_indents():
    text = outputs.config_text({"model_type": "qwen2", "vocab_size": 8, "architectures": ["Qwen2ForCausalLM"]})
    assert text.startswith("Qwen2Config {\n  \"architectures\": [\n")
    assert json.loads(text[len("Qwen2Config "):]) == {"model_type": "qwen2", "vocab_size": 8,
                                                      "architectures": ["Qwen2ForCausalLM"]}
    assert text.endswith("}\n")
