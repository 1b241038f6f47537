"""Unknown training keys get a "did you mean" for typos as well as for substrings."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmpre.cli import main
from llmpre.errors import ConfigError
from llmpre.train.args import parse_arguments


@pytest.mark.parametrize("typo, expect", [
    ("learnig_rate", "learning_rate"),
    ("lerning-rate", "learning_rate"),
    ("max_step", "max_steps"),
    ("warmup_step", "warmup_steps"),
    ("save_step", "save_steps"),
    ("per_device_batch_size", "per_device_train_batch_size"),
    ("gradient_accumulation_step", "gradient_accumulation_steps"),
    ("modle", "model"),
])
def test_typo_gets_a_suggestion(typo, expect):
    with pytest.raises(ConfigError) as info:
        parse_arguments(None, {typo: "1"})
    msg = str(info.value)
    assert f"unknown argument `{typo}`; did you mean " in msg, msg
    hint = msg.split("did you mean ", 1)[1].split("?", 1)[0].split(", ")
    assert expect in hint and len(hint) <= 4, msg


def test_unrelated_key_gets_no_suggestion():
    with pytest.raises(ConfigError) as info:
        parse_arguments(None, {"frobnicate": "1"})
    assert "did you mean" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_arguments(None, {"x": "1"})
    assert "did you mean" not in str(info.value)


def test_json_file_and_command_line_both_suggest(tmp_path):
    f = tmp_path / "args.json"
    f.write_text(json.dumps({"model_name_or_path": "llama-tiny", "learnig_rate": 1e-4}))
    with pytest.raises(ConfigError, match=r"args.json: unknown argument `learnig_rate`; did you mean learning_rate"):
        parse_arguments(str(f), {})
    r = CliRunner().invoke(main, ["train", "--learnig_rate", "1e-4"])
    assert r.exit_code == 2 and "did you mean learning_rate" in r.output, r.output
