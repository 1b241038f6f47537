"""A model argument meant as a directory is reported as a missing directory, not as an
unknown preset with every preset name; hub names and presets keep resolving."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from llmpre.cli import main
from llmpre.errors import ConfigError
from llmpre.models import get_config

NEEDS = "a model directory needs config.json and model.safetensors; `llmpre models` lists the presets"


@pytest.mark.parametrize("name", ["/missing/dir", "./missing", "../missing/dir", "~/llmpre-missing-dir",
                                  f"missing{os.sep}dir"])
def test_missing_directory_is_named(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        get_config(name)
    msg = str(info.value)
    assert msg.startswith(f"'{name}': no such directory ({NEEDS})"), msg
    assert "unknown model preset" not in msg and "llama2-13b" not in msg, msg


def test_directory_without_config_and_plain_file(tmp_path):
    with pytest.raises(ConfigError, match=r"directory has no config\.json"):
        get_config(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a directory but a file"):
        get_config(str(tmp_path / "weights.bin"))


def test_hub_names_and_presets_still_resolve():
    assert get_config("meta-llama/Llama-2-7b").hidden_size == 4096
    assert get_config("Qwen/Qwen2-0.5B").hidden_size == 896
    assert get_config("llama-tiny").num_hidden_layers == 4
    with pytest.raises(ConfigError, match="unknown model preset 'llama-tyni': did you mean llama-tiny"):
        get_config("llama-tyni")
    # a misspelt hub name: no such directory, and the close hub names
    with pytest.raises(ConfigError, match="no such directory .*did you mean meta-llama/Llama-2-7b"):
        get_config("meta-llama/Llama-2-7x")


def test_train_cli_names_the_missing_model_directory(tmp_path):
    r = CliRunner().invoke(main, ["train", "--model", "/missing/dir", "--continue_training", "true",
                                  "--output_dir", str(tmp_path / "run"), "--max_steps", "1"])
    assert r.exit_code == 2, r.output
    assert f"'/missing/dir': no such directory ({NEEDS})" in r.output, r.output
    assert "unknown model preset" not in r.output
