"""Context parallelism (ring attention) and sep (all-to-all) train exactly like one
process: five steps at sequence lengths 512 and 2048 on gloo give the single-process
losses (relative 1e-5) and parameters (layout_runner.assert_same_weights), for
llama-tiny (GQA: 4 heads, 2 KV heads), a tiny Qwen2 (q/k/v biases) and a tiny Mistral
with a sliding window of 200 keys (not a multiple of the 128- or 512-token chunks, so
blocks are cut inside, and at 2048 most block pairs lie wholly outside the window and
are skipped). Two layers and one sequence per micro-batch keep the file near 5
minutes on two busy cores. Bad layouts fail before any worker starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from layout_runner import assert_same_losses, assert_same_weights, losses, max_loss_deviation, record, train, weights

LAYERS = ["--num_hidden_layers", "2"]
TINY = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 8192, "max_position_embeddings": 1024, "hidden_act": "silu",
        "tie_word_embeddings": False, "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2}
MODELS = {
    "llama-tiny": None,
    "qwen2-tiny": dict(TINY, model_type="qwen2", architectures=["Qwen2ForCausalLM"], rms_norm_eps=1e-6,
                       rope_theta=1000000.0, use_sliding_window=False, sliding_window=4096),
    "mistral-window200": dict(TINY, model_type="mistral", architectures=["MistralForCausalLM"],
                              rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=200),
}
LAYOUTS = [
    # name, model, sequence length, processes, flags
    ("cp2", "llama-tiny", 512, 2, ["--cp", "2"]),
    ("cp4", "llama-tiny", 512, 4, ["--cp", "4"]),
    ("sep2", "llama-tiny", 512, 2, ["--sep", "2"]),
    ("cp2xtp2", "llama-tiny", 512, 4, ["--cp", "2", "--tp", "2"]),
    ("cp4-2048", "llama-tiny", 2048, 4, ["--cp", "4"]),
    ("sep2-2048", "llama-tiny", 2048, 2, ["--sep", "2"]),
    ("qwen2-cp2-2048", "qwen2-tiny", 2048, 2, ["--cp", "2"]),
    ("window-cp2-2048", "mistral-window200", 2048, 2, ["--cp", "2"]),
]


def _model_flag(name, root) -> list:
    if MODELS[name] is None:
        return ["--model", name]
    path = root / name
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(MODELS[name]))
    return ["--model", str(path)]


def _train(out, nproc, model, seq, flags, root):
    # data_ranks=4: one sequence per micro-batch (2 per step with gradient accumulation 2)
    return train(out, nproc, "--max_seq_length", str(seq), *LAYERS, *_model_flag(model, root), *flags,
                 data_ranks=4)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    done = {}

    def get(model, seq):
        if (model, seq) not in done:
            out = tmp_path_factory.mktemp(f"single-{model}-{seq}")
            _train(out, 1, model, seq, [], root)
            done[model, seq] = (losses(out), weights(out))
        return done[model, seq]
    get.root = root
    return get


@pytest.mark.parametrize("name,model,seq,nproc,flags", LAYOUTS, ids=[l[0] for l in LAYOUTS])
def test_sequence_split_matches_one_process(tmp_path, references, name, model, seq, nproc, flags):
    ref_losses, ref_weights = references(model, seq)
    _train(tmp_path, nproc, model, seq, flags, references.root)
    got = losses(tmp_path)
    assert_same_losses(got, ref_losses)
    assert_same_weights(weights(tmp_path), ref_weights)
    record(name, tmp_path, nproc, loss_deviation=max_loss_deviation(got, ref_losses))


@pytest.mark.parametrize("flags,message", [
    (["--cp", "4", "--max_seq_length", "36"],
     "context_parallel_degree 4 cuts every sequence into 2 x 4 = 8 equal chunks, but max_seq_length 36"),
    (["--sep", "4", "--max_seq_length", "32"], "(4 heads, 2 KV heads after tp 1)"),
    (["--sep", "2", "--cp", "2", "--max_seq_length", "32"], "are both > 1"),
], ids=["cp-seq", "sep-heads", "both"])
def test_bad_layouts_fail_before_workers_start(tmp_path, flags, message):
    nproc = 4
    proc = subprocess.run([sys.executable, "-m", "llmpre.cli", "train", "--model", "llama-tiny", "--max_steps", "1",
                           "--output_dir", str(tmp_path), "--nproc-per-node", str(nproc), *flags],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    assert not (tmp_path / "launch_logs").exists()      # no worker was started
