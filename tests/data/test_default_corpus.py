"""The bundled default corpus (Jane Austen) and its tokenizer are complete and consistent."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from tokenizers import Tokenizer

from llmpre.data.corpus import open_corpus
from llmpre.data.default import (
    default_corpus_dir,
    default_corpus_meta,
    default_corpus_prefix,
    default_tokenizer_path,
)

VOCAB = 8192  # llama-tiny's vocab_size; the tokenizer must match it exactly


@pytest.fixture(scope="module")
def meta():
    return default_corpus_meta()


@pytest.fixture(scope="module")
def corpus():
    return open_corpus(default_corpus_prefix())


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(default_tokenizer_path())


@pytest.fixture(scope="module")
def tokens():
    # The whole .bin (about 1.8 MB), in document order.
    return np.fromfile(default_corpus_prefix() + ".bin", dtype="<u2")


def test_paths_are_inside_the_package():
    import llmpre

    pkg = os.path.dirname(os.path.abspath(llmpre.__file__))
    assert default_corpus_prefix() == os.path.join(pkg, "assets", "default", "corpus")
    assert os.path.isabs(default_tokenizer_path())
    for name in ("corpus.bin", "corpus.idx", "tokenizer.json", "meta.json", "SOURCE.md"):
        assert os.path.isfile(os.path.join(default_corpus_dir(), name)), name


def test_meta(meta):
    assert meta["vocab_size"] == VOCAB
    assert meta["dtype"] == "uint16"
    assert meta["eos_token_id"] == 0 and meta["eos_token"] == "<|endoftext|>"
    assert meta["bos_token_id"] is None
    assert 500 <= meta["num_docs"] <= 2000
    assert 800_000 <= meta["num_tokens"] <= 1_200_000
    default_corpus_meta()["vocab_size"] = -1  # callers get their own copy
    assert default_corpus_meta()["vocab_size"] == VOCAB


def test_counts_match_meta(corpus, meta, tokens):
    assert corpus.dtype == "uint16"
    assert corpus.num_docs == meta["num_docs"]
    assert corpus.num_tokens == meta["num_tokens"] == len(tokens)
    # one item per document
    assert corpus.doc_idx.tolist() == list(range(meta["num_docs"] + 1))
    assert int(corpus.sizes.sum()) == meta["num_tokens"]


def test_token_ids_in_vocab_and_documents_end_with_eos(corpus, meta, tokens):
    eos = meta["eos_token_id"]
    assert int(tokens.max()) < VOCAB
    ends = np.cumsum(corpus.sizes.astype(np.int64)) - 1
    assert np.all(tokens[ends] == eos)
    assert int((tokens == eos).sum()) == meta["num_docs"]  # EOS appears nowhere else
    assert corpus.sizes.min() >= 100  # no scraps: documents are a few hundred words or more
    first = corpus.read(0)
    assert first[-1] == eos and np.array_equal(first, tokens[: corpus.sizes[0]])


def test_tokenizer(tokenizer, meta):
    assert tokenizer.get_vocab_size() == VOCAB
    assert tokenizer.token_to_id(meta["eos_token"]) == meta["eos_token_id"]
    text = 'It is a truth universally acknowledged -- "quite so," said he; £20,000.\n\nNaïve café!'
    assert tokenizer.decode(tokenizer.encode(text).ids) == text  # byte-level: exact round trip
    # the tokenizer never adds EOS by itself; the corpus builder appends it
    assert meta["eos_token_id"] not in tokenizer.encode("Emma").ids


def test_first_document_is_readable_english(corpus, tokenizer, meta):
    ids = corpus.read(0).tolist()
    text = tokenizer.decode(ids[:-1])
    assert text.startswith("The family of Dashwood had long been settled in Sussex.")
    words = re.findall(r"[A-Za-z']+", text)
    assert len(words) > 300
    common = {"the", "of", "and", "to", "a", "in", "was", "his", "her", "had"}
    assert sum(w.lower() in common for w in words) / len(words) > 0.2
    assert "<|endoftext|>" not in text and "_" not in text  # markup stripped
    assert tokenizer.encode(text).ids == ids[:-1]  # corpus = tokenizer(text) + [EOS]


def test_compression(meta):
    # In-domain byte-level BPE with 8192 tokens: about 4 bytes of English per token.
    assert 3.0 < meta["text_bytes"] / (meta["num_tokens"] - meta["num_docs"]) < 5.0


def test_assets_are_small_and_documented():
    total = sum(
        os.path.getsize(os.path.join(default_corpus_dir(), f)) for f in os.listdir(default_corpus_dir())
    )
    assert total < 8 * 1024 * 1024
    source = open(os.path.join(default_corpus_dir(), "SOURCE.md"), encoding="utf-8").read()
    for needle in ("r-cran-janeaustenr", "1.0.0-1", "public domain", "MIT", "make_default_corpus.py"):
        assert needle in source, needle
