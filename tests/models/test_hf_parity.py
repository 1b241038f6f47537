"""Every family transformers implements, against transformers on tiny seeded models:
logits, loss (plus the MoE auxiliary loss) and the gradient of every parameter.

Fixtures: tests/fixtures/hf/<family> (made by tools/make_hf_fixtures.py, in the repo) and
../shared/fixtures/hf/{llama,qwen2,gpt2} (skipped when absent).  Tolerances are those the
shared fixtures' README suggests for float32: logits atol 1e-4, loss 1e-5, gradients
atol 1e-5 / rtol 1e-3.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from llmpre.models import causal_lm_loss, from_pretrained

from .parity import hf_grads, max_abs

ROOT = Path(__file__).resolve().parents[2]
OWN = ROOT / "tests" / "fixtures" / "hf"
SHARED = ROOT.parent / "shared" / "fixtures" / "hf"
OWN_FAMILIES = sorted(p.name for p in OWN.iterdir() if (p / "expected.json").is_file())
SHARED_FAMILIES = ["llama", "qwen2", "gpt2"]


def fixture(where, name):
    path = (OWN if where == "own" else SHARED) / name
    if not path.is_dir():
        pytest.skip(f"HF parity fixtures absent: {path}")
    return path


def check_parity(ref: Path, model_dir: Path):
    expected = json.loads((ref / "expected.json").read_text())
    model = from_pretrained(model_dir)
    ids = paddle.to_tensor(np.load(ref / "input_ids.npy"))
    want_logits = np.load(ref / "logits.npy")

    logits = model(ids)
    assert logits.shape == list(want_logits.shape) and logits.dtype == paddle.float32
    np.testing.assert_allclose(logits.numpy(), want_logits, atol=1e-4, rtol=0)

    loss = causal_lm_loss(logits[:, :-1], ids[:, 1:])  # HF shifts inside its loss
    np.testing.assert_allclose(loss.item(), expected["loss"], atol=1e-5, rtol=0)
    total = loss
    if expected.get("total_loss") is not None and expected["total_loss"] != expected["loss"]:
        assert model.aux_loss is not None, "MoE fixture with an auxiliary loss, model computed none"
        coef = expected["router_aux_loss_coef"]
        np.testing.assert_allclose(model.aux_loss.item() / coef, expected["aux_loss"], atol=1e-5, rtol=1e-5)
        total = causal_lm_loss(logits[:, :-1], ids[:, 1:], aux_loss=model.aux_loss)
        np.testing.assert_allclose(total.item(), expected["total_loss"], atol=1e-5, rtol=0)
    total.backward()

    grads = load_file(str(ref / "grads.safetensors"))
    ours = hf_grads(model)
    assert set(ours) == set(grads), (set(ours) ^ set(grads))
    for name, want in grads.items():
        np.testing.assert_allclose(ours[name], want, atol=1e-5, rtol=1e-3, err_msg=name)
    return max_abs(logits.numpy(), want_logits)


@pytest.mark.parametrize("name", OWN_FAMILIES)
def test_matches_transformers(name):
    ref = fixture("own", name)
    diff = check_parity(ref, ref)
    print(f"{name}: max |logits - transformers| = {diff:.2e}")


@pytest.mark.parametrize("style", ["v5", "v4"])
@pytest.mark.parametrize("name", SHARED_FAMILIES)
def test_matches_shared_transformers_fixtures(name, style, tmp_path):
    ref = fixture("shared", name)
    model_dir = ref
    if style == "v4":  # the same weights with the transformers-4 config keys
        shutil.copy(ref / "config.v4.json", tmp_path / "config.json")
        (tmp_path / "model.safetensors").symlink_to(ref / "model.safetensors")
        model_dir = tmp_path
    check_parity(ref, model_dir)


def test_families_cover_the_transformers_architectures():
    classes = {json.loads((OWN / f / "expected.json").read_text())["class"] for f in OWN_FAMILIES}
    assert {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GemmaForCausalLM", "MixtralForCausalLM",
            "Qwen2MoeForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "GPT2LMHeadModel",
            "OPTForCausalLM", "BloomForCausalLM"} <= classes
