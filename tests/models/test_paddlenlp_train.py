"""continue_training from a directory PaddleNLP saved: the run starts from its weights (the
first logged loss is the loaded model's loss on the first batch), trains, and leaves the
run's tokenizer beside the final weights; num_hidden_layers below the checkpoint's depth
trains its first layers (with a notice), above it is one error.

Fixtures: ../shared/fixtures/paddlenlp_ckpt (QWen, vocab 512, saved by PaddleNLP 2.8.1).
"""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmpre.data.writer import write_corpus
from llmpre.errors import ConfigError
from llmpre.models import build_model, causal_lm_loss, from_pretrained, get_config, init
from llmpre.models.hf_load import open_pretrained
from llmpre.train.args import parse_arguments

CKPT = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "paddlenlp_ckpt"
ROOT = Path(__file__).resolve().parents[2]
COMMON = {"max_seq_length": "16", "per_device_train_batch_size": "2", "gradient_accumulation_steps": "1",
          "logging_steps": "1", "do_eval": "false", "disable_tqdm": "true", "report_to": "none",
          "learning_rate": "1e-3", "warmup_steps": "1", "max_steps": "2", "save_steps": "1000", "seed": "3",
          "num_threads": "1", "continue_training": "true"}


def fixture(name) -> Path:
    path = CKPT / name
    if not path.is_dir():
        pytest.skip(f"reference fixture absent: {path}")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A byte-level BPE tokenizer of 400 ids (the fixtures' vocabulary is 512) and a corpus made with it."""
    tmp = tmp_path_factory.mktemp("data")
    text = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (tmp / "tok").mkdir()
    tok.save(str(tmp / "tok" / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    write_corpus(tmp / "corpus", (tok.encode(line).ids + [eos] for line in text), "uint16")
    return tmp


def _run(args):
    from llmpre.train.trainer import run

    run(args)
    with open(Path(args.output_dir) / "metrics.jsonl") as fh:
        return {e["step"]: e["loss"] for e in map(json.loads, fh) if e["type"] == "train"}


def _first_batch_loss(model, args) -> float:
    from llmpre.train.data import TrainData

    tokens = paddle.to_tensor(TrainData(args, model.config.vocab_size).train.batch(0))
    model.eval()
    with paddle.no_grad():
        return float(causal_lm_loss(model(tokens[:, :-1]), tokens[:, 1:]))


def test_continue_training_from_paddlenlp_pdparams(data, tmp_path):
    path = fixture("qwen_pdparams")
    args = parse_arguments(None, {**COMMON, "model_name_or_path": str(path), "output_dir": str(tmp_path / "run"),
                                  "input_dir": str(data / "corpus"), "tokenizer_name_or_path": str(data / "tok")})
    losses = _run(args)
    assert sorted(losses) == [1, 2] and all(np.isfinite(list(losses.values())))
    # the first step's loss is the PaddleNLP model's, before any update (fp32, summed in another order),
    # and not that of a model drawn afresh
    assert losses[1] == pytest.approx(_first_batch_loss(from_pretrained(path), args), rel=1e-5)
    assert abs(losses[1] - _first_batch_loss(build_model(get_config(path), seed=3), args)) > 1e-3
    out = tmp_path / "run"
    assert get_config(out) == get_config(path)                    # final weights, HF layout
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    text = (ROOT / "README.md").read_text()[:2000]
    source = Tokenizer.from_file(str(data / "tok" / "tokenizer.json"))
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids == source.encode(text).ids


def test_fewer_layers_train_the_first_ones(data, tmp_path, capsys):
    path = fixture("qwen_safetensors")
    args = parse_arguments(None, {**COMMON, "model_name_or_path": str(path), "output_dir": str(tmp_path / "run"),
                                  "input_dir": str(data / "corpus"), "num_hidden_layers": "1"})
    losses = _run(args)
    assert "continue_training with num_hidden_layers=1: loading layers 0..0 of the 2" in capsys.readouterr().out
    first, reader = open_pretrained(path, config=get_config(path).replace(num_hidden_layers=1))
    with reader:
        init.materialize(first)
    assert losses[1] == pytest.approx(_first_batch_loss(first, args), rel=1e-5)
    assert get_config(tmp_path / "run").num_hidden_layers == 1
    assert not (tmp_path / "run" / "tokenizer.json").exists()       # input_dir without tokenizer: unknown


def test_more_layers_than_the_checkpoint_is_one_error(data, tmp_path):
    from llmpre.train.trainer import Trainer

    path = fixture("qwen_safetensors")
    args = parse_arguments(None, {**COMMON, "model_name_or_path": str(path), "output_dir": str(tmp_path / "run"),
                                  "input_dir": str(data / "corpus"), "num_hidden_layers": "3"})
    with pytest.raises(ConfigError, match="num_hidden_layers=3: .* has 2 layers; continue_training loads its first"):
        Trainer(args)
