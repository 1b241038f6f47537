"""``llmpre models`` and ``llmpre export-hf``."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from llmpre.cli import main
from llmpre.cli.export_cmd import parse_size
from llmpre.errors import ConfigError
from llmpre.models import PRESETS, build_model, from_pretrained, save_pretrained
from llmpre.models.hf_config import to_hf_dict
from llmpre.train.checkpoint import save_checkpoint

from .test_config import scaled_down


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_models_lists_every_preset_with_its_parameter_count():
    code, out = run("models")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == set(PRESETS)
    assert "46.70B" in rows["mixtral-8x7b"] and "MoE 8x top-2" in rows["mixtral-8x7b"]
    assert "671.03B" in rows["deepseek-v3"] and "MLA" in rows["deepseek-v3"]
    assert "ALiBi" in rows["baichuan2-13b"] and "window 4096" in rows["mistral-7b-v0.1"]


def test_models_filters_and_shows_one_config():
    code, out = run("models", "--family", "bloom", "--aliases")
    assert code == 0 and "bloom-7b1" in out and "bigscience/bloomz-7b1-mt" in out and "llama" not in out
    code, out = run("models", "Qwen/Qwen2-57B-A14B-Instruct")
    assert code == 0 and out.startswith("qwen2-57b-a14b: 57,408,658,944 parameters")
    config = json.loads(out[out.index("{"):])
    assert config["model_type"] == "qwen2_moe" and config["num_experts"] == 64
    code, out = run("models", "qwen-7bb")
    assert code == 2 and "qwen-7b" in out


def _training_checkpoint(tmp_path, config, seed=1):
    """A checkpoint as the trainer writes it: llmpre-named weights + trainer_state.json."""
    model = build_model(config, seed=seed)
    arrays = {n: p.numpy() for n, p in model.named_parameters()}
    state = {"global_step": 3, "model_config": to_hf_dict(config)}
    path = save_checkpoint(str(tmp_path / "run"), 3, {
        "model.safetensors": lambda p: save_file(arrays, p),
        "trainer_state.json": lambda p: open(p, "w").write(json.dumps(state)),
    })
    return model, path


@pytest.mark.parametrize("name", ["qwen-7b", "deepseek-v2-lite", "bloom-560m"])
def test_export_a_training_checkpoint_to_hf_and_load_it(name, tmp_path):
    model, ckpt = _training_checkpoint(tmp_path, scaled_down(PRESETS[name]))
    code, out = run("export-hf", ckpt, str(tmp_path / "hf"), "--style", "v5")
    assert code == 0 and "wrote" in out
    assert "dtype" in json.loads((tmp_path / "hf" / "config.json").read_text())
    loaded = from_pretrained(tmp_path / "hf")
    for (n, a), b in zip(model.named_parameters(), loaded.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=n)


def test_export_reshards_and_casts_an_hf_checkpoint(tmp_path):
    model = build_model(scaled_down(PRESETS["mixtral-8x7b"]), seed=2)
    save_pretrained(model, tmp_path / "src")
    code, _ = run("export-hf", str(tmp_path / "src"), str(tmp_path / "out"), "--max-shard-size", "20KB")
    assert code == 0 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    code, _ = run("export-hf", str(tmp_path / "out"), str(tmp_path / "bf16"), "--dtype", "bfloat16")
    assert code == 0
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_export_reports_bad_sources_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    code, out = run("export-hf", str(tmp_path / "empty"), str(tmp_path / "out"))
    assert code == 2 and "trainer_state.json" in out and "config.json" in out
    model, ckpt = _training_checkpoint(tmp_path, scaled_down(PRESETS["llama-7b"]))
    state = json.loads(open(f"{ckpt}/trainer_state.json").read())
    bad = dict(state, model_config={**state["model_config"], "intermediate_size": 40})
    save_checkpoint(str(tmp_path / "run2"), 1, {
        "model.safetensors": lambda p: save_file({n: q.numpy() for n, q in model.named_parameters()}, p),
        "trainer_state.json": lambda p: open(p, "w").write(json.dumps(bad))})
    code, out = run("export-hf", str(tmp_path / "run2" / "checkpoint-1"), str(tmp_path / "out"))
    assert code == 2 and "shape mismatch layers.0.mlp.up_proj.weight" in out


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("1234") == 1234
    with pytest.raises(ConfigError, match="max-shard-size"):
        parse_size("lots")
