"""The bundled default corpus: Jane Austen's novels, tokenized with its own BPE.

``llmpre train`` uses it when no data is given. The files live in
``llmpre/assets/default/`` inside the installed package; ``SOURCE.md`` there
says where the text comes from, its licence, and how
``tools/make_default_corpus.py`` regenerates every file.
"""

from __future__ import annotations

import functools
import json
import os

from llmpre._core import DataError

__all__ = ["default_corpus_dir", "default_corpus_prefix", "default_tokenizer_path", "default_corpus_meta"]

_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "default")


def default_corpus_dir() -> str:
    """Absolute path of the folder holding the bundled corpus files."""
    return _DIR


def _existing(path: str) -> str:
    if not os.path.exists(path):
        raise DataError(
            f"{path}: the bundled default corpus file is missing; reinstall llmpre, or rebuild "
            "it with tools/make_default_corpus.py (see SOURCE.md there)"
        )
    return path


def default_corpus_prefix() -> str:
    """Absolute data prefix of the bundled corpus (``…/assets/default/corpus``)."""
    prefix = os.path.join(_DIR, "corpus")
    _existing(prefix + ".bin")
    _existing(prefix + ".idx")
    return prefix


def default_tokenizer_path() -> str:
    """Absolute path of the bundled ``tokenizer.json`` (HF ``tokenizers`` format)."""
    return _existing(os.path.join(_DIR, "tokenizer.json"))


@functools.lru_cache(maxsize=1)
def _meta() -> str:
    with open(_existing(os.path.join(_DIR, "meta.json")), encoding="utf-8") as f:
        return f.read()


def default_corpus_meta() -> dict:
    """``meta.json``: vocab_size, eos_token_id, bos_token_id, num_docs, num_tokens, dtype, ..."""
    return json.loads(_meta())  # a fresh dict each call: callers may modify it
