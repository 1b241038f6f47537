"""A PaddleNLP ``checkpoint-N`` in output_dir is resumed (weights, Adam moments, step, data
position) or refused with one error: never ignored. The checkpoints under
``tests/assets/paddlenlp_checkpoint`` were written by PaddleNLP 2.8.1's Trainer (README there);
PaddleNLP resumed from them logs the losses in ``expected.json``, and so must llmpre."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from llmpre.train import checkpoint as ckpt
from llmpre.train import paddlenlp_ckpt as pnlp

ASSET = Path(__file__).resolve().parents[1] / "assets" / "paddlenlp_checkpoint"
EXPECTED = json.loads((ASSET / "expected.json").read_text())


def _digest(path: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _run_dir(tmp_path, fmt: str, **overrides):
    """The PaddleNLP argument file, its inputs and an output_dir holding PaddleNLP's
    checkpoint-2 of ``fmt``, copied into ``tmp_path``; returns (args, output_dir)."""
    from llmpre.train.args import parse_arguments

    for name in ("model", "tokenizer", "data"):
        shutil.copytree(ASSET / name, tmp_path / name)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(ASSET / fmt / "checkpoint-2", out / "checkpoint-2")
    raw = json.loads((ASSET / "args.json").read_text())
    raw.update({"model_name_or_path": str(tmp_path / "model"), "input_dir": str(tmp_path / "data"),
                "tokenizer_name_or_path": str(tmp_path / "tokenizer"), "output_dir": str(out),
                "num_threads": 1, **overrides})
    (tmp_path / "args.json").write_text(json.dumps(raw))
    return parse_arguments(str(tmp_path / "args.json"), {}), out


@pytest.mark.parametrize("fmt", ["plain", "unified"])
def test_llmpre_continues_a_paddlenlp_run_with_paddlenlps_losses(tmp_path, fmt):
    from llmpre.train.monitor import read_metrics
    from llmpre.train.trainer import run

    args, out = _run_dir(tmp_path, fmt)
    before = _digest(out / "checkpoint-2")
    run(args)
    got = {e["step"]: e for e in read_metrics(str(out))["train"]}
    want = EXPECTED["resumed_from_checkpoint-2"]
    assert sorted(got) == [3, 4, 5]            # steps 1-2 are PaddleNLP's, not trained again
    for step, w in want.items():
        g = got[int(step)]
        # measured: equal at steps 3-4, 7.5e-8 apart at step 5 (fp32 reduction order); a fresh
        # optimizer instead of the checkpoint's moments moves step 4 by 7e-4
        assert g["loss"] == pytest.approx(w["loss"], rel=5e-7), (step, g["loss"], w["loss"])
        assert g["learning_rate"] == pytest.approx(w["learning_rate"], rel=1e-3), step
    # PaddleNLP's checkpoint is left as it was; llmpre's own follow it; no converted copy remains
    assert _digest(out / "checkpoint-2") == before
    assert [s for s, _ in ckpt.list_checkpoints(str(out))] == [3, 4, 5]
    assert not [n for n in os.listdir(out) if n.startswith(".checkpoint-")]


def test_explicit_resume_from_a_paddlenlp_checkpoint_elsewhere(tmp_path):
    from llmpre.train.monitor import read_metrics
    from llmpre.train.trainer import run

    args, out = _run_dir(tmp_path, "unified")
    shutil.move(str(out / "checkpoint-2"), str(tmp_path / "checkpoint-2"))
    args.resume_from_checkpoint = str(tmp_path / "checkpoint-2")
    args.max_steps, args.decay_steps = 3, 5        # the same schedule, one step
    run(args)
    got = {e["step"]: e["loss"] for e in read_metrics(str(out))["train"]}
    assert list(got) == [3]
    assert got[3] == pytest.approx(EXPECTED["resumed_from_checkpoint-2"]["3"]["loss"], rel=5e-7)


def test_a_later_start_resumes_from_llmpres_newer_checkpoint(tmp_path):
    from llmpre.train.trainer import Trainer, run

    args, out = _run_dir(tmp_path, "plain", max_steps=3, decay_steps=5)
    run(args)
    trainer = Trainer(args)
    assert trainer._prepare_run_directory() == str(out / "checkpoint-3")


def test_an_unmappable_checkpoint_is_one_error_before_training(tmp_path):
    from llmpre.train.trainer import run

    args, out = _run_dir(tmp_path, "plain")
    ckdir = out / "checkpoint-2"       # as a tensor-parallel rank of a hybrid run names its files
    (ckdir / "model_state.pdparams").rename(ckdir / "model_state.tp00_pp00.pdparams")
    (ckdir / "optimizer.pdopt").rename(ckdir / "optimizer.tp00_pp00.pdopt")
    with pytest.raises(ckpt.CheckpointError) as e:
        run(args)
    msg = str(e.value)
    assert msg.startswith(f"{ckdir}: a PaddleNLP hybrid-parallel checkpoint")
    assert "at global_step 2, 1 process(es)" in msg
    assert "model_state.tp00_pp00.pdparams" in msg
    assert "resume it with PaddleNLP (with unified_checkpoint true its next checkpoints are ones llmpre resumes)" in msg
    assert "overwrite_output_dir true" in msg and "Nothing was trained" in msg
    # nothing trained, nothing converted, no run identity recorded (the fixed run may differ)
    assert sorted(os.listdir(out)) == [".llmpre.lock", "checkpoint-2"]


@pytest.mark.parametrize("overrides, expected", [
    ({"per_device_train_batch_size": 1},
     "its global batch is 4 samples (per_device_train_batch_size 2 x gradient_accumulation_steps 2 x 1 "
     "data-parallel process(es)) and this run's is 2"),
    ({"seed": 7}, "it was trained with seed 42 and this run has seed 7"),
    ({"max_seq_length": 16}, "it was trained with max_seq_length 32 and this run has 16"),
    ({"max_steps": 2}, "it is at global_step 2 and this run's max_steps is 2, so there is nothing left"),
])
def test_a_run_that_would_not_continue_paddlenlps_stream_is_refused(tmp_path, overrides, expected):
    from llmpre.train.trainer import run

    args, out = _run_dir(tmp_path, "unified", **overrides)
    with pytest.raises(ckpt.CheckpointError, match="llmpre cannot resume from it") as e:
        run(args)
    assert expected in str(e.value)
    assert f"continue_training true, model_name_or_path {out / 'checkpoint-2'}, another output_dir" in str(e.value)
    args, _ = _run_dir(tmp_path / "fixed", "unified")    # the same directory with the run's values
    shutil.rmtree(args.output_dir)
    shutil.copytree(out, args.output_dir)
    from llmpre.train.trainer import Trainer

    assert ckpt.is_temporary(Trainer(args)._prepare_run_directory())


def test_another_model_is_refused(tmp_path):
    from llmpre.train.trainer import run

    args, out = _run_dir(tmp_path, "plain", num_hidden_layers=1)
    with pytest.raises(ckpt.CheckpointError) as e:
        run(args)
    assert "its config.json describes another model: num_hidden_layers 2 (this run: 1)" in str(e.value)


# ---- reading, without training ------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["plain", "unified"])
def test_examine(fmt):
    found = pnlp.examine(str(ASSET / fmt / "checkpoint-2"))
    assert (found.kind, found.step, found.world_size, found.reason) == (fmt, 2, 1, "")
    ta = found.training_args
    assert (ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"], ta["seed"],
            ta["max_steps"], ta["unified_checkpoint"]) == (2, 2, 42, 5, fmt == "unified")


def test_find_skips_llmpre_checkpoints_and_other_folders(tmp_path):
    shutil.copytree(ASSET / "plain" / "checkpoint-2", tmp_path / "checkpoint-2")
    ckpt.save_checkpoint(str(tmp_path), 7, {"x.bin": lambda p: Path(p).write_bytes(b"1")})
    (tmp_path / "checkpoint-9").mkdir()         # empty: neither PaddleNLP's nor llmpre's
    assert [(f.step, os.path.basename(f.path)) for f in pnlp.find(str(tmp_path))] == [(2, "checkpoint-2")]


@pytest.mark.parametrize("fmt", ["plain", "unified"])
def test_both_formats_hold_the_same_state(fmt):
    """Weights, moments and the update count read from either format agree exactly."""
    import numpy as np

    a = pnlp._Plain(str(ASSET / "plain" / "checkpoint-2"))
    b = pnlp._Unified(str(ASSET / "unified" / "checkpoint-2"))
    assert a.shapes() == b.shapes()
    for name in a.shapes():
        np.testing.assert_array_equal(a.weights(name), b.weights(name))
        for kind in ("moment1", "moment2", "beta1_pow_acc"):
            np.testing.assert_array_equal(a.state(name, kind), b.state(name, kind))
        assert pnlp._updates(b.state(name, "beta1_pow_acc"), 0.9) == 2


def test_tensor_rules_name_every_problem():
    from llmpre.models import get_config

    config = get_config(str(ASSET / "model" / "config.json"))
    theirs = pnlp._Plain(str(ASSET / "plain" / "checkpoint-2")).shapes()
    params, _ = pnlp._model_params(config)
    rules, problems = pnlp.tensor_rules(config, theirs, params)
    assert problems == [] and sorted(o for r in rules for o in r.ours) == sorted(params)
    bad = {**theirs, "llama.norm.weight": [5], "llama.extra.bias": [1]}
    del bad["lm_head.weight"]
    _, problems = pnlp.tensor_rules(config, bad, params)
    assert problems == ["llama.norm.weight has shape [5], this run's model needs [8]", "no tensor lm_head.weight",
                        "unexpected tensor llama.extra.bias"]


def _fuse(parts, kind, config):
    """PaddleNLP's fused [in, out] tensor (or bias) from its parts (inverse of the split)."""
    import numpy as np

    from llmpre.models.paddlenlp_names import fused_columns

    widths = [p.shape[-1] for p in parts]
    offsets = np.cumsum([0] + widths).tolist()
    out = np.zeros(parts[0].shape[:-1] + (sum(widths),), np.float32)
    for j, p in enumerate(parts):
        out[..., fused_columns(kind, j, np.arange(widths[j]), offsets, config)] = p
    return out


def test_fused_projections_resume_with_the_same_losses(tmp_path):
    """PaddleNLP's fuse_attention_qkv / fuse_attention_ffn layout of the same state (weights
    and moments fused alike) resumes to the same losses: the moments are split as the weights."""
    import numpy as np
    from safetensors.numpy import save_file

    from llmpre.models import get_config
    from llmpre.train.monitor import read_metrics
    from llmpre.train.trainer import run

    args, out = _run_dir(tmp_path, "unified")
    ck = out / "checkpoint-2"
    config = get_config(str(ASSET / "model" / "config.json"))
    src = pnlp._Unified(str(ck))
    weights, optim = {}, {}
    groups = {}
    for i in range(config.num_hidden_layers):
        a, m = f"llama.layers.{i}.self_attn.", f"llama.layers.{i}.mlp."
        groups[a + "qkv_proj.weight"] = ([a + n + ".weight" for n in ("q_proj", "k_proj", "v_proj")], "grouped_cols")
        groups[m + "gate_up_fused_proj.weight"] = ([m + "gate_proj.weight", m + "up_proj.weight"], "cols")
    fused_parts = {p for parts, _ in groups.values() for p in parts}
    for name in src.shapes():
        if name not in fused_parts:
            weights[name] = src.weights(name)
            for kind in ("moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc"):
                optim[f"{name}/{kind}_0"] = src.state(name, kind)
    for fused, (parts, kind) in groups.items():
        weights[fused] = _fuse([src.weights(p) for p in parts], kind, config)
        for k in ("moment1", "moment2"):
            optim[f"{fused}/{k}_0"] = _fuse([src.state(p, k) for p in parts], kind, config)
        for k in ("beta1_pow_acc", "beta2_pow_acc"):
            optim[f"{fused}/{k}_0"] = src.state(parts[0], k)
    for f in list(ck.iterdir()):
        if f.name.startswith(("model", "optimizer")):
            f.unlink()
    save_file(weights, str(ck / "model.safetensors"), metadata={"format": "np"})
    save_file(optim, str(ck / "optimizer.safetensors"), metadata={"format": "np"})
    cfg = json.loads((ck / "config.json").read_text())
    cfg.update(fuse_attention_qkv=True, fuse_attention_ffn=True)
    (ck / "config.json").write_text(json.dumps(cfg))
    run(args)
    got = {e["step"]: e["loss"] for e in read_metrics(str(out))["train"]}
    for step, w in EXPECTED["resumed_from_checkpoint-2"].items():
        assert got[int(step)] == pytest.approx(w["loss"], rel=5e-7), step


def test_pickles_are_read_as_data_only(tmp_path):
    class Code:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = tmp_path / "model_state.pdparams"
    bad.write_bytes(pickle.dumps({"w": Code()}))
    with pytest.raises(ckpt.CheckpointError, match="holds a posix.system object"):
        pnlp._load_pickle(str(bad))
    assert not (tmp_path / "pwned").exists()


def test_incomplete_or_split_checkpoints_are_refused(tmp_path):
    from safetensors.numpy import save_file

    from llmpre.train.trainer import run

    args, out = _run_dir(tmp_path / "a", "plain")
    (out / "checkpoint-2" / "optimizer.pdopt").unlink()          # a save that died half-way
    with pytest.raises(ckpt.CheckpointError) as e:
        run(args)
    assert ("an incomplete PaddleNLP checkpoint at global_step 2, 1 process(es); llmpre cannot resume from it: "
            "optimizer.pdopt missing. Nothing was trained. To continue: remove it") in str(e.value)
    args, out = _run_dir(tmp_path / "b", "unified")
    ck = out / "checkpoint-2"
    src = pnlp._Unified(str(ck))
    optim = {k: src.optim.read(k) for k in src.optim.where}
    key = "llama.embed_tokens.weight/moment1_0"
    optim[key] = optim[key][:256]                                # one sharding rank's half
    for f in ck.glob("optimizer*"):
        f.unlink()
    save_file(optim, str(ck / "optimizer.safetensors"), metadata={"format": "np"})
    with pytest.raises(ckpt.CheckpointError, match=r"its optimizer state is not whole for "
                                                   r"llama.embed_tokens.weight \(moment1 \[256, 8\], weight \[512, 8\]\)"):
        run(args)


def test_the_advised_fresh_start_from_its_weights_works(tmp_path):
    """continue_training true with model_name_or_path = the checkpoint (another output_dir):
    its weights, a fresh optimizer, step 0; both formats hold the same weights."""
    from llmpre.train.monitor import read_metrics
    from llmpre.train.trainer import run

    losses = []
    for fmt in ("plain", "unified"):
        args, out = _run_dir(tmp_path / fmt, fmt)
        args.model_name_or_path, args.continue_training = str(out / "checkpoint-2"), True
        args.output_dir, args.max_steps = str(tmp_path / fmt / "fresh"), 1
        run(args)
        losses.append(read_metrics(args.output_dir)["train"][0]["loss"])
    assert losses[0] == losses[1] < EXPECTED["uninterrupted"]["1"]["loss"]   # trained weights, step-1 batch


def test_two_data_parallel_processes_continue_a_one_process_paddlenlp_run(tmp_path):
    """Rank 0 converts, every rank reads its part, the converted copy is removed; the global
    batch (1 per device x 2 accumulation x 2 ranks) is PaddleNLP's, so are the losses."""
    import signal
    import subprocess
    import sys

    from llmpre.train.monitor import read_metrics

    args, out = _run_dir(tmp_path, "unified")
    argv = [sys.executable, "-m", "llmpre.cli", "train", str(tmp_path / "args.json"), "--nproc-per-node", "2",
            "--per_device_train_batch_size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PADDLE_TRAINER_ID", None)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)       # the launcher and its workers
        output, _ = proc.communicate()
    assert proc.returncode == 0, output[-3000:]
    got = {e["step"]: e["loss"] for e in read_metrics(str(out))["train"]}
    assert sorted(got) == [3, 4, 5]
    for step, w in EXPECTED["resumed_from_checkpoint-2"].items():
        # measured: within 7.7e-8 (the data-parallel mean adds one reduction)
        assert got[int(step)] == pytest.approx(w["loss"], rel=5e-7), (step, got[int(step)], w["loss"])
    assert not [n for n in os.listdir(out) if n.startswith(".checkpoint-")]


def test_bf16_weights_resume_from_their_fp32_master_weights(tmp_path):
    """O2 runs store the model in bfloat16 (PaddleNLP: U16 bits) and fp32 master weights beside
    it: the master weights are the state; the bf16 copy reads back exactly (as its bits say)."""
    import numpy as np
    from safetensors.numpy import save_file

    from llmpre.train.monitor import read_metrics
    from llmpre.train.trainer import run

    args, out = _run_dir(tmp_path, "unified")
    ck = out / "checkpoint-2"
    src = pnlp._Unified(str(ck))
    fp32 = {n: src.weights(n) for n in src.shapes()}
    bits = {n: (v.view(np.uint32) >> 16).astype(np.uint16) for n, v in fp32.items()}   # bf16 by truncation
    for f in ck.glob("model*"):
        f.unlink()
    save_file(bits, str(ck / "model.safetensors"), metadata={"format": "np"})
    save_file(fp32, str(ck / "master_weights.safetensors"), metadata={"format": "np"})
    u = pnlp._Unified(str(ck))
    name = "llama.embed_tokens.weight"
    np.testing.assert_array_equal(u.model.read(name).view(np.uint32), bits[name].astype(np.uint32) << 16)
    np.testing.assert_array_equal(u.weights(name), fp32[name])
    run(args)
    got = {e["step"]: e["loss"] for e in read_metrics(str(out))["train"]}
    for step, w in EXPECTED["resumed_from_checkpoint-2"].items():
        assert got[int(step)] == pytest.approx(w["loss"], rel=5e-7), step
