"""PaddleNLP's official pretraining argument sets (tests/assets/paddlenlp_configs) run
through ``llmpre train FILE`` as a PaddleNLP user runs them, with only what a CPU test
must change overridden:

- model size: the file's model family, shrunk to 2 layers of width 64 (a tiny random
  checkpoint of that family when the file sets continue_training), 64-token sequences;
- tokenizer and data: the bundled tokenizer and corpus (copied into a ``data/`` folder);
- precision: fp32 (bf16/fp16 need a GPU build of Paddle), device cpu;
- parallel degrees: 1 (this test runs one process; tests/parallel runs the degrees);
- max_steps: 3, and output_dir a temporary folder.

Every other key is the file's: schedules, batch sizes, accumulation, recompute, eval and
save settings, fused-op switches, and the keys llmpre accepts as no-ops (each with its
notice line). In process, through the click command, so Paddle is imported once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import shutil
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "paddlenlp_configs"
JSON_FILES = sorted(p.name for p in ASSETS.glob("*.json"))
FLAGS_FILE = ASSETS / "experimental-run_trainer_tp4pp2.flags"
STEPS = 3


def tiny(config):
    """The family of ``config`` at test size: 2 layers, hidden 64, 4 heads (GQA kept)."""
    kw = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2 if (config.num_key_value_heads or config.num_attention_heads)
              < config.num_attention_heads else 4,
              vocab_size=8192, max_position_embeddings=256)
    if config.head_dim is not None and config.mla is None:
        kw["head_dim"] = 16
    if config.word_embed_proj_dim:
        kw["word_embed_proj_dim"] = 32
    if config.mla is not None:
        kw["mla"] = dataclasses.replace(config.mla, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                        v_head_dim=16, q_lora_rank=24 if config.mla.q_lora_rank else None)
        kw["head_dim"] = 24
    if config.moe is not None:
        m = config.moe
        if config.intermediate_size == m.moe_intermediate_size:   # Mixtral: one width for both
            kw["intermediate_size"] = 32
        kw["moe"] = dataclasses.replace(
            m, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=32 if m.shared_expert_intermediate_size else 0,
            n_group=2 if m.n_group > 1 else 1, topk_group=1, first_k_dense_replace=min(m.first_k_dense_replace, 1))
    return config.replace(**kw)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from llmpre.data.default import default_corpus_prefix

    root = tmp_path_factory.mktemp("paddlenlp_files")
    prefix = Path(default_corpus_prefix())
    data = root / "data"
    data.mkdir()
    for suffix in (".bin", ".idx"):
        shutil.copy(str(prefix) + suffix, data / ("corpus" + suffix))
    tokenizer = prefix.parent / "tokenizer.json"
    return {"root": root, "data": data, "tokenizer": tokenizer, "models": {}}


def tiny_model_dir(ws, name: str, pretrained: bool) -> Path:
    """A directory with the tiny config of ``name``'s family (and random weights when
    ``pretrained``, for continue_training)."""
    key = (name, pretrained)
    if key in ws["models"]:
        return ws["models"][key]
    from llmpre.models import build_model, get_config
    from llmpre.models.hf import save_pretrained
    from llmpre.models.hf_config import to_hf_dict

    config = tiny(get_config(name))
    path = ws["root"] / "models" / f"{name.replace('/', '_')}{'-weights' if pretrained else ''}"
    path.mkdir(parents=True)
    if pretrained:
        save_pretrained(build_model(config, seed=7), path)
    else:
        (path / "config.json").write_text(json.dumps(to_hf_dict(config)))
    ws["models"][key] = path
    return path


def overrides(ws, raw: dict, out: Path) -> list[str]:
    model = tiny_model_dir(ws, raw["model_name_or_path"], bool(int(raw.get("continue_training", 0))))
    flags = {"model_name_or_path": model, "tokenizer_name_or_path": ws["tokenizer"],
             "input_dir": ws["data"], "output_dir": out, "max_seq_length": 64, "max_steps": STEPS,
             "bf16": "false", "fp16": "false", "tensor_parallel_degree": 1, "pipeline_parallel_degree": 1,
             "sharding_parallel_degree": 1, "expert_parallel_degree": 1, "num_threads": 1}
    if "device" in raw:
        flags["device"] = "cpu"
    return [t for k, v in flags.items() for t in (f"--{k}", str(v))]


def run_train(argv: list[str], monkeypatch):
    from click.testing import CliRunner

    from llmpre.cli.train_cmd import train

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")   # one process whatever the machine
    return CliRunner().invoke(train, argv, catch_exceptions=False)


def train_steps(out: Path) -> list[int]:
    lines = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return [e["step"] for e in lines if e["type"] == "train"]


def check_run(result, out: Path, raw: dict, logging_steps: int = 1):
    assert result.exit_code == 0, result.output[-3000:]
    assert train_steps(out) == [s for s in range(1, STEPS + 1) if s % logging_steps == 0 or s == STEPS]
    assert (out / "config.json").exists()                  # the final weights
    for key in ("unified_checkpoint", "distributed_dataloader"):
        if raw.get(key):
            assert f"{key} = " in result.output and "has no effect here" in result.output


# MoE / latent-attention files that recompute (llmpre once refused them): run as they are.
MOE_RECOMPUTE = {"config-deepseek-v2-pretrain_argument.json", "config-qwen2moe-pretrain_argument.json"}


@pytest.mark.parametrize("name", [n for n in JSON_FILES if "chatglm2" not in n])
def test_official_file_trains(name, workspace, tmp_path, monkeypatch):
    path = ASSETS / name
    raw = json.loads(path.read_text())
    out = tmp_path / "run"
    if name in MOE_RECOMPUTE:
        assert raw["recompute"]
    result = run_train([str(path), *overrides(workspace, raw, out)], monkeypatch)
    check_run(result, out, raw)
    if name in MOE_RECOMPUTE:
        assert f"recompute {raw.get('recompute_granularity', 'full')}" in result.output
    if raw.get("pipeline_parallel_config"):
        assert f"pipeline_parallel_config '{raw['pipeline_parallel_config']}' has no effect here" in result.output


def test_chatglm2_file(workspace, tmp_path, monkeypatch):
    """The chatglm2 file asks for metric_for_best_model 'accuracy', which pretraining
    evaluation never computes (PaddleNLP's own run would fail looking up eval_accuracy
    at its first save): one error naming it. With the metric set to loss, the file's
    epoch strategies, load_best_model_at_end and num_hidden_layers run."""
    path = ASSETS / "config-chatglm2-pretrain_argument.json"
    raw = json.loads(path.read_text())
    out = tmp_path / "run"
    from llmpre.errors import ConfigError

    with pytest.raises(ConfigError, match="metric_for_best_model.*accuracy.*eval_loss only"):
        run_train([str(path), *overrides(workspace, raw, out)], monkeypatch)
    result = run_train([str(path), *overrides(workspace, raw, out), "--metric_for_best_model", "loss"],
                       monkeypatch)
    check_run(result, out, raw)
    assert "num_train_epochs = 2.0 is ignored: max_steps = 3 > 0" in result.output
    assert "eval_accumulation_steps = 4 has no effect here" in result.output
    # evaluation_strategy/save_strategy epoch: an epoch is far longer than 3 steps, so the
    # only evaluation and checkpoint are those of the last step (the end of the cut epoch)
    evals = [json.loads(line) for line in open(out / "metrics.jsonl") if '"type": "eval"' in line]
    assert [e["step"] for e in evals] == [STEPS]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{STEPS}"]


def test_tp4pp2_script_flags(workspace, tmp_path, monkeypatch):
    """run_trainer_tp4pp2.sh's flags (bare --fp16/--do_train, --model_type, --device gpu),
    with --paddlenlp-defaults: a flags-only run with PaddleNLP's defaults."""
    tokens = [t for line in FLAGS_FILE.read_text().splitlines() for t in shlex.split(line)]
    raw = {"model_name_or_path": "facebook/llama-7b", "continue_training": 1, "device": "gpu"}
    out = tmp_path / "run"
    result = run_train(["--paddlenlp-defaults", *tokens, *overrides(workspace, raw, out)], monkeypatch)
    check_run(result, out, raw, logging_steps=10)
    args = json.load(open(out / "run_config.json"))["training"]
    assert args["lr_scheduler_type"] == "linear" and args["adam_beta2"] == 0.999   # PaddleNLP's, no quickstart
    assert "quickstart values" not in result.output


# ---- the honoured keys, end to end (tiny GPT from scratch, bundled corpus) ----------
def gpt_args(workspace, out: Path, **kw):
    from llmpre.train.args import parse_arguments

    model = tiny_model_dir(workspace, "gpt2-medium-en", pretrained=False)
    values = {"model_name_or_path": str(model), "tokenizer_name_or_path": str(workspace["tokenizer"]),
              "input_dir": str(workspace["data"]), "output_dir": str(out), "max_seq_length": "32",
              "per_device_train_batch_size": "2", "per_device_eval_batch_size": "2", "eval_iters": "1",
              "logging_steps": "1", "learning_rate": "3e-3", "min_learning_rate": "3e-4",
              "warmup_steps": "2", "num_threads": "1", "disable_tqdm": "true"}
    return parse_arguments(None, {**values, "paddlenlp-defaults": "true", **{k: str(v) for k, v in kw.items()}})


def losses(out: Path) -> dict:
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return {e["step"]: e["loss"] for e in rows if e["type"] == "train"}


def test_gpt_dropout_resume_is_exact(workspace, tmp_path, monkeypatch):
    """With PaddleNLP's GPT dropout (0.1 by default), 6 steps straight == 3 steps, a crash,
    and a resumed run to step 6: the masks depend on the step and the samples only."""
    from llmpre.train import trainer as trainer_mod

    common = dict(max_steps=6, save_steps=3, gradient_accumulation_steps=2)
    straight = gpt_args(workspace, tmp_path / "a", **common)
    assert straight.hidden_dropout_prob == 0.1 and straight.attention_probs_dropout_prob == 0.1
    trainer_mod.run(straight)

    class Crash(Exception):
        pass

    real_save = trainer_mod.Trainer.save

    def save_then_crash(self):
        real_save(self)
        raise Crash()

    monkeypatch.setattr(trainer_mod.Trainer, "save", save_then_crash)
    with pytest.raises(Crash):
        trainer_mod.run(gpt_args(workspace, tmp_path / "b", **common))
    monkeypatch.setattr(trainer_mod.Trainer, "save", real_save)
    trainer_mod.run(gpt_args(workspace, tmp_path / "b", **common))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 7)) and all(a[s] == b[s] for s in range(1, 7)), (a, b)
    # and dropout is on: the same run without it computes other losses
    off = gpt_args(workspace, tmp_path / "c", hidden_dropout_prob=0, attention_probs_dropout_prob=0, **common)
    trainer_mod.run(off)
    assert losses(tmp_path / "c")[2] != a[2]


def test_num_train_epochs_and_epoch_strategies(workspace, tmp_path):
    """max_steps <= 0: the length is num_train_epochs passes over the train split; the
    epoch strategies evaluate and save at each epoch end and at the last step."""
    from llmpre.train import cadence
    from llmpre.train.trainer import run

    args = gpt_args(workspace, tmp_path / "e", max_steps=-1, num_train_epochs=0.004, evaluation_strategy="epoch",
                    save_strategy="epoch", hidden_dropout_prob=0, attention_probs_dropout_prob=0)
    per_epoch = cadence.steps_per_epoch(args, 1)
    run(args)
    assert per_epoch > 250 and args.max_steps == math.ceil(0.004 * per_epoch)
    rows = [json.loads(line) for line in open(tmp_path / "e" / "metrics.jsonl")]
    assert max(e["step"] for e in rows if e["type"] == "train") == args.max_steps
    assert [e["step"] for e in rows if e["type"] == "eval"] == [args.max_steps]   # less than one epoch
    assert [p.name for p in (tmp_path / "e").glob("checkpoint-*")] == [f"checkpoint-{args.max_steps}"]


def test_load_best_model_at_end(workspace, tmp_path):
    """The final weights are those of the checkpoint with the lowest eval loss, and
    save_total_limit never deletes that checkpoint."""
    import numpy as np
    from safetensors.numpy import load_file

    from llmpre.models.hf import weights_metadata
    from llmpre.train.trainer import run

    out = tmp_path / "best"
    # a learning rate far too high: the eval loss of step 2 is the lowest of steps 2, 4, 6
    args = gpt_args(workspace, out, max_steps=6, eval_steps=2, save_steps=2, do_eval="true",
                    load_best_model_at_end="true", save_total_limit=1, learning_rate=0.3, min_learning_rate=0.3,
                    warmup_steps=0, lr_scheduler_type="constant", hidden_dropout_prob=0,
                    attention_probs_dropout_prob=0)
    run(args)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    evals = {e["step"]: e["eval_loss"] for e in rows if e["type"] == "eval"}
    best = min(evals, key=evals.get)
    assert best != 6, evals       # the test needs a best that is not the last step
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert kept == [best, 6] if best == 4 else best in kept and 6 in kept
    assert weights_metadata(out)["llmpre_step"] == str(best)
    # the same weights as a run stopped at the best step
    again = tmp_path / "again"
    run(gpt_args(workspace, again, max_steps=best, eval_steps=2, save_steps=2, do_eval="true",
                 learning_rate=0.3, min_learning_rate=0.3, warmup_steps=0, lr_scheduler_type="constant",
                 hidden_dropout_prob=0, attention_probs_dropout_prob=0))
    final, reference = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert sorted(final) == sorted(reference)
    assert all(np.array_equal(final[k], reference[k]) for k in final)
