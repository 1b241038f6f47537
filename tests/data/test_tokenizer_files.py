"""The tokenizer written beside the final weights: what transformers' PreTrainedTokenizerFast
needs (tokenizer.json + tokenizer_config.json naming the class) and what PaddleNLP 2.8.1's
GPTTokenizer reads (vocab.json + merges.txt, named by init_class), encoding as the source."""

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmpre.data.default import default_tokenizer_path
from llmpre.data.tokenizer_files import run_tokenizer, save_tokenizer

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune,\n"
        "must be in want of a wife.  <|endoftext|> Émile's naïve café — 42 tokens?\t\n")


def test_the_bundled_tokenizer_is_saved_for_transformers_and_paddlenlp(tmp_path):
    written = save_tokenizer(str(tmp_path), default_tokenizer_path())
    assert sorted(written) == ["merges.txt", "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)          # no temporaries left
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["init_class"] == "GPTTokenizer"
    assert config["eos_token"] == "<|endoftext|>"
    source = Tokenizer.from_file(default_tokenizer_path())
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(TEXT).ids == source.encode(TEXT).ids
    # vocab.json + merges.txt, read as a byte-level BPE (GPT-2's, which GPTTokenizer implements), encode alike
    bpe = Tokenizer(models.BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.add_special_tokens(["<|endoftext|>"])
    assert bpe.encode(TEXT).ids == source.encode(TEXT).ids


def test_a_directory_keeps_its_own_files_and_config(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(src / "tokenizer.json"))
    (src / "tokenizer.model").write_bytes(b"\x00sentencepiece stand-in")
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "eos_token": "</s>",
                                                           "model_max_length": 4096}))
    out = tmp_path / "out"
    written = save_tokenizer(str(out), str(src))
    assert sorted(written) == ["tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    assert (out / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()
    # its class and keys stay; no BPE files are made up for a word-level tokenizer
    assert json.loads((out / "tokenizer_config.json").read_text()) == {
        "tokenizer_class": "LlamaTokenizer", "eos_token": "</s>", "model_max_length": 4096}
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode("a b c").ids == [2, 3, 0]


def test_a_trained_byte_level_bpe_file(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT] * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tok.json"))
    out = tmp_path / "out"
    save_tokenizer(str(out), str(tmp_path / "tok.json"))
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config == {"init_class": "GPTTokenizer", "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>",
                      "unk_token": "</s>", "bos_token": "</s>", "pad_token": "</s>"}
    bpe = Tokenizer(models.BPE.from_file(str(out / "vocab.json"), str(out / "merges.txt")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert bpe.encode(TEXT.replace("<|endoftext|>", "")).ids == tok.encode(TEXT.replace("<|endoftext|>", "")).ids


def test_which_tokenizer_a_run_used():
    assert run_tokenizer("tok/", None) == "tok/"
    assert run_tokenizer(None, None) == default_tokenizer_path()     # the bundled corpus's own
    assert run_tokenizer(None, "data/corpus") is None                 # unknown: nothing is written
