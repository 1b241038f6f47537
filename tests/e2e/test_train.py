"""End to end: training lowers the loss, resumes exactly, and the CLI behaves."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from llmpre.train.args import parse_arguments

# Small and fast: llama-tiny cut to 2 layers, 64-token sequences.
FAST = {"model": "llama-tiny", "num_hidden_layers": "2", "max_seq_length": "64",
        "per_device_train_batch_size": "4", "per_device_eval_batch_size": "4",
        "eval_iters": "2", "disable_tqdm": "true", "num_threads": "1"}


def args_for(tmp_path, **kw):
    values = {**FAST, "output_dir": str(tmp_path / "run"), **{k: str(v) for k, v in kw.items()}}
    return parse_arguments(None, values)


def train_losses(output_dir) -> dict:
    out = {}
    with open(os.path.join(output_dir, "metrics.jsonl")) as fh:
        for line in fh:
            e = json.loads(line)
            if e["type"] == "train":
                out[e["step"]] = e["loss"]
    return out


def test_loss_falls_on_the_bundled_corpus(tmp_path):
    from llmpre.train.trainer import run

    args = args_for(tmp_path, max_steps=40, logging_steps=1, learning_rate=3e-3,
                    min_learning_rate=3e-4, warmup_steps=5, eval_steps=20, save_steps=1000)
    run(args)
    losses = train_losses(args.output_dir)
    assert losses[1] > 8.0                      # before any update: ~ln(8192) = 9.0
    late = sum(losses[s] for s in range(36, 41)) / 5
    assert late < losses[1] - 2.0               # clearly learning
    evals = [json.loads(l) for l in open(os.path.join(args.output_dir, "metrics.jsonl"))
             if '"eval"' in l]
    assert len(evals) == 2 and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    # final weights in HF layout, loadable
    from llmpre.models import from_pretrained

    model = from_pretrained(args.output_dir)
    assert model.config.num_hidden_layers == 2


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """8 steps straight == 4 steps, a crash, then a resumed run to step 8."""
    from llmpre.train import trainer as trainer_mod

    common = dict(max_steps=8, logging_steps=1, save_steps=4, learning_rate=3e-3,
                  min_learning_rate=3e-4, warmup_steps=2, weight_decay=0.1, do_eval="false")
    straight = args_for(tmp_path / "a", **common)
    trainer_mod.run(straight)

    interrupted = args_for(tmp_path / "b", **common)

    class Crash(Exception):
        pass

    real_save = trainer_mod.Trainer.save

    def save_then_crash(self):
        path = real_save(self)
        raise Crash(path)

    monkeypatch.setattr(trainer_mod.Trainer, "save", save_then_crash)
    with pytest.raises(Crash):
        trainer_mod.run(interrupted)
    monkeypatch.setattr(trainer_mod.Trainer, "save", real_save)
    assert sorted(os.listdir(interrupted.output_dir)).count("checkpoint-4") == 1
    trainer_mod.run(args_for(tmp_path / "b", **common))   # picks up checkpoint-4

    a, b = train_losses(straight.output_dir), train_losses(interrupted.output_dir)
    assert sorted(a) == list(range(1, 9))
    assert [b[s] for s in range(1, 9)] == [a[s] for s in range(1, 9)]  # bit-identical
    wa = np.load if False else None  # noqa: F841  (weights compared below)
    from safetensors.numpy import load_file

    fa = load_file(os.path.join(straight.output_dir, "model.safetensors"))
    fb = load_file(os.path.join(interrupted.output_dir, "model.safetensors"))
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)


def cli(*argv, cwd=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llmpre.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_json_file_with_overrides(tmp_path):
    arg_file = tmp_path / "pretrain_argument.json"
    arg_file.write_text(json.dumps({
        "model_name_or_path": "llama-tiny", "num_hidden_layers": 1, "max_seq_length": 32,
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3, "min_learning_rate": 1e-4, "warmup_steps": 1,
        "lr_scheduler_type": "cosine", "max_steps": 50, "logging_steps": 1, "save_steps": 2,
        "save_total_limit": 1, "do_train": True, "do_eval": False, "disable_tqdm": True,
        "tensor_parallel_degree": 1, "sharding": "", "unified_checkpoint": True, "bf16": False,
        "output_dir": str(tmp_path / "ignored"),
    }))
    out = tmp_path / "run"
    r = cli("train", str(arg_file), "--max_steps", "3", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if "global_step:" in l]
    assert len(lines) == 3
    keys = [kv.split(": ")[0] for kv in lines[0].split(" - ", 1)[1].split(", ")]
    # PaddleNLP's line on a CPU: no device memory; process memory (MB) after the speed figures
    assert keys == ["loss", "learning_rate", "global_step", "interval_runtime",
                    "interval_samples_per_second", "interval_tokens_per_second_per_device",
                    "interval_hardware_tflops_per_device", "interval_steps_per_second",
                    "cpu_mem_used", "cpu_mem_used_peak", "progress_or_epoch"]
    assert "Final pre-training config:" in r.stdout
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint-")) == ["checkpoint-2"]
    assert not (tmp_path / "ignored").exists()


@pytest.mark.parametrize("argv,match", [
    (["train", "--model", "llama-tiny", "--data", "/nonexistent/corpus", "--max_steps", "1"],
     "no corpus here"),
    (["train", "--model", "no-such-model", "--max_steps", "1"], "no-such-model"),
    (["train", "--model", "llama-tiny", "--max_steps", "1", "--frobnicate", "2"],
     "unknown argument `frobnicate`"),
    (["data", "fingerprint", "/nonexistent/corpus"], "no corpus here"),
])
def test_bad_input_is_one_clear_line(tmp_path, argv, match):
    r = cli(*argv, "--output_dir" if argv[0] == "train" else "--seed",
            str(tmp_path / "o") if argv[0] == "train" else "1", cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and match in errors[0], r.stderr


def test_corrupt_idx_is_refused(tmp_path):
    from llmpre.data.default import default_corpus_prefix

    src = default_corpus_prefix()
    (tmp_path / "c.bin").write_bytes(open(src + ".bin", "rb").read())
    raw = bytearray(open(src + ".idx", "rb").read())
    raw[17] = 42  # dtype code
    (tmp_path / "c.idx").write_bytes(bytes(raw))
    r = cli("train", "--data", str(tmp_path / "c"), "--max_steps", "1",
            "--output_dir", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "c.idx: unknown dtype code 42" in r.stderr


def test_help_on_every_command():
    for argv in (["--help"], ["train", "--help"], ["data", "--help"],
                 ["data", "fingerprint", "--help"], ["models", "--help"]):
        r = cli(*argv)
        assert r.returncode == 0 and "Usage:" in r.stdout, argv
    assert "sha256_requested" in cli("data", "fingerprint", "--help").stdout


def test_moe_model_trains_with_its_auxiliary_loss(tmp_path):
    """A tiny Mixtral (the HF fixture's config), vocabulary padded to the bundled tokenizer."""
    from llmpre.data.default import default_tokenizer_path
    from llmpre.train.trainer import Trainer

    fixture = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "mixtral")
    args = args_for(tmp_path, model=fixture, num_hidden_layers=None, tokenizer_name_or_path=default_tokenizer_path(),
                    max_steps=3, logging_steps=1, save_steps=100, do_eval="false")
    trainer = Trainer(args)
    assert trainer.config.vocab_size == 8192
    tokens = trainer.data.train.batch(0)
    with_aux = float(trainer.engine.loss(tokens).item())
    lm_only = float(trainer.engine.loss(tokens, training=False).item())
    assert trainer.model.aux_loss is not None and with_aux > lm_only
    trainer.train()
    losses = train_losses(args.output_dir)
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())
