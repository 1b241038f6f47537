"""A corpus of 0 documents is named as such by training, `data verify` and `data fingerprint`."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from llmpre._core import DataError
from llmpre.cli import main
from llmpre.data import build_datasets
from llmpre.data.writer import write_corpus


@pytest.fixture()
def empty(tmp_path):
    prefix = str(tmp_path / "empty")
    assert write_corpus(prefix, [], np.uint16) == (0, 0)
    return prefix


def test_training_names_the_empty_corpus_not_the_split(empty, tmp_path):
    from llmpre.train.args import parse_arguments
    from llmpre.train.data import TrainData

    args = parse_arguments(None, {"model": "llama-tiny", "max_seq_length": "16", "max_steps": "2",
                                  "per_device_train_batch_size": "2", "input_dir": empty,
                                  "output_dir": str(tmp_path / "run")})
    with pytest.raises(DataError) as info:
        TrainData(args, vocab_size=512)
    msg = str(info.value)
    assert f"corpus {empty} " in msg and "has 0 documents" in msg, msg
    assert "llmpre data preprocess" in msg and "positive share" not in msg, msg


def test_blend_with_one_empty_corpus_names_it(empty, tmp_path):
    write_corpus(tmp_path / "full", [np.arange(1, 40)] * 4, np.uint16)
    with pytest.raises(DataError, match=f"corpus {empty} .*has 0 documents"):
        build_datasets(f"1 {tmp_path}/full 1 {empty}", "1", [10, 0, 0], 8, 1, use_cache=False)


def test_verify_reports_an_empty_corpus(empty):
    r = CliRunner().invoke(main, ["data", "verify", empty])
    assert r.exit_code == 1, r.output
    assert "PROBLEM:" in r.output and "0 documents" in r.output and "OK:" not in r.output


def test_fingerprint_refuses_an_empty_corpus(empty):
    r = CliRunner().invoke(main, ["data", "fingerprint", empty, "--no-cache"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "has 0 documents" in lines[0] and empty in lines[0], r.output
