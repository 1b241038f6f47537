"""``llmpre export-hf`` exports a training checkpoint whose only damage is its optimizer
state (with a warning), and still refuses one whose weights are missing or damaged."""

import json
import os
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from safetensors.numpy import save_file

from llmpre.cli import main
from llmpre.cli.export_cmd import verify_for_export
from llmpre.models import PRESETS, build_model, from_pretrained
from llmpre.models.hf_config import to_hf_dict
from llmpre.train.checkpoint import save_checkpoint

from .test_config import scaled_down


def run(*args):
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


def checkpoint(tmp_path, optimizer_name="optimizer.safetensors"):
    """A checkpoint as the trainer writes it, with optimizer state and RNG file."""
    config = scaled_down(PRESETS["llama-7b"])
    model = build_model(config, seed=3)
    arrays = {n: p.numpy() for n, p in model.named_parameters()}
    moments = {f"{n}.exp_avg": np.zeros_like(a) for n, a in arrays.items()}
    state = {"global_step": 2, "model_config": to_hf_dict(config)}
    path = save_checkpoint(str(tmp_path / "run"), 2, {
        "model.safetensors": lambda p: save_file(arrays, p),
        optimizer_name: lambda p: save_file(moments, p),
        "trainer_state.json": lambda p: open(p, "w").write(json.dumps(state)),
        "rng_state.pkl": lambda p: open(p, "wb").write(b"rng"),
    })
    return model, path


def test_missing_optimizer_file_is_exported_with_a_warning(tmp_path):
    model, ckpt = checkpoint(tmp_path)
    assert run("export-hf", ckpt, str(tmp_path / "intact"))[1].count("warning") == 0
    os.remove(os.path.join(ckpt, "optimizer.safetensors"))
    code, out = run("export-hf", ckpt, str(tmp_path / "hf"))
    assert code == 0, out
    assert ("warning: " in out and "optimizer.safetensors missing" in out
            and "cannot resume training" in out), out
    loaded = from_pretrained(tmp_path / "hf")
    for (n, a), b in zip(model.named_parameters(), loaded.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=n)


def test_sharded_optimizer_files_are_optional_too(tmp_path):
    _, ckpt = checkpoint(tmp_path, optimizer_name="optim-tp0-pp0-sh1.safetensors")
    with open(os.path.join(ckpt, "optim-tp0-pp0-sh1.safetensors"), "ab") as fh:
        fh.write(b"x")
    assert verify_for_export(Path(ckpt)) == [
        "optim-tp0-pp0-sh1.safetensors truncated or changed"]


def test_missing_or_damaged_weights_are_still_refused(tmp_path):
    _, ckpt = checkpoint(tmp_path)
    os.remove(os.path.join(ckpt, "optimizer.safetensors"))
    weights = os.path.join(ckpt, "model.safetensors")
    raw = bytearray(open(weights, "rb").read())
    raw[-1] ^= 0xFF
    open(weights, "wb").write(bytes(raw))
    code, out = run("export-hf", ckpt, str(tmp_path / "hf"))
    assert code == 2 and "model.safetensors: size or checksum differs" in out, out
    assert not (tmp_path / "hf").exists()
    os.remove(weights)
    code, out = run("export-hf", ckpt, str(tmp_path / "hf"))
    assert code == 2 and "model.safetensors: missing" in out, out
    os.remove(os.path.join(ckpt, "manifest.json"))
    code, out = run("export-hf", ckpt, str(tmp_path / "hf"))
    assert code == 2 and "no manifest.json" in out, out
