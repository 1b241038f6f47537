"""Text handling for preprocessing: tokenizers, EOS, input files, sentences.

Kept apart from the pipeline so worker processes import only what they use.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional

from llmpre._core import DataError

__all__ = [
    "EOS_CANDIDATES",
    "TokenizerInfo",
    "input_files",
    "load_tokenizer",
    "open_lines",
    "remove_repeated_chars",
    "split_sentences",
]

# Tried in this order when neither --eos-token nor tokenizer_config.json names one.
EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>")


@dataclass(frozen=True)
class TokenizerInfo:
    path: str  # the tokenizer.json file
    vocab_size: int  # including added tokens: every id the tokenizer can emit is below it
    eos_id: Optional[int]
    eos_token: Optional[str]
    eos_source: str  # where the EOS came from, for messages


def _tokenizer_file(path: str) -> str:
    if os.path.isdir(path):
        f = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(f):
            raise DataError(f"--tokenizer {path}: the directory has no tokenizer.json (llmpre reads "
                            "HuggingFace fast-tokenizer files; save one with "
                            "tokenizer.save_pretrained(DIR) or convert it first)")
        return f
    if not os.path.isfile(path):
        raise DataError(f"--tokenizer {path}: no such file or directory; give a tokenizer.json or "
                        "a local directory holding one (hub names are not downloaded)")
    return path


def _config_eos(directory: str) -> Optional[str]:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = os.path.join(directory, name)
        if not os.path.isfile(f):
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                value = json.load(fh).get("eos_token")
        except (OSError, ValueError) as e:
            raise DataError(f"{f}: not readable JSON ({e})") from None
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return None


def load_tokenizer(path: str, eos_token: Optional[str] = None):
    """``(tokenizers.Tokenizer, TokenizerInfo)`` for a tokenizer.json or a directory.

    The EOS id comes from ``eos_token`` (a token string or an integer id),
    else from ``eos_token`` in the directory's tokenizer_config.json /
    special_tokens_map.json, else from the first of :data:`EOS_CANDIDATES`
    the vocabulary holds; ``None`` if there is none.
    """
    from tokenizers import Tokenizer

    file = _tokenizer_file(path)
    try:
        tok = Tokenizer.from_file(file)
    except Exception as e:  # tokenizers raises its own Exception type
        raise DataError(f"{file}: not a HuggingFace tokenizer.json ({e})") from None
    vocab = tok.get_vocab_size(with_added_tokens=True)
    eos_id, eos_str, source = None, None, "none found"
    if eos_token is not None:
        if re.fullmatch(r"\d+", eos_token.strip()):
            eos_id = int(eos_token)
            if eos_id >= vocab:
                raise DataError(f"--eos-token {eos_id}: outside the vocabulary of {vocab} ids")
            eos_str, source = tok.id_to_token(eos_id), "--eos-token"
        else:
            eos_id = tok.token_to_id(eos_token)
            if eos_id is None:
                raise DataError(f"--eos-token {eos_token!r}: the tokenizer {file} has no such token")
            eos_str, source = eos_token, "--eos-token"
    else:
        configured = _config_eos(os.path.dirname(file))
        if configured is not None and tok.token_to_id(configured) is not None:
            eos_str, eos_id = configured, tok.token_to_id(configured)
            source = "tokenizer_config.json"
        else:
            for cand in EOS_CANDIDATES:
                if tok.token_to_id(cand) is not None:
                    eos_str, eos_id, source = cand, tok.token_to_id(cand), "vocabulary"
                    break
    return tok, TokenizerInfo(file, vocab, eos_id, eos_str, source)


def input_files(path: str) -> tuple[list[str], list[str]]:
    """``(files to read, files skipped)``: PATH itself, or every file under the
    directory PATH, sorted by path; ``.jsonl`` and ``.zst`` files are read
    (PaddleNLP's rule)."""
    if os.path.isfile(path):
        if not (path.endswith(".jsonl") or path.endswith(".zst")):
            raise DataError(f"--input {path}: expected a .jsonl or .jsonl.zst file (one JSON "
                            "document per line) or a directory of them")
        return [path], []
    if not os.path.isdir(path):
        raise DataError(f"--input {path}: no such file or directory")
    found = []
    for root, _, names in os.walk(path):
        found.extend(os.path.join(root, n) for n in names)
    found.sort()
    keep = [f for f in found if f.endswith(".jsonl") or f.endswith(".zst")]
    kept = set(keep)
    skipped = [f for f in found if f not in kept]
    if not keep:
        raise DataError(f"--input {path}: the directory holds no .jsonl or .zst file")
    return keep, skipped


def open_lines(path: str) -> Iterator[bytes]:
    """The raw lines of a .jsonl or zstd-compressed .zst file."""
    if path.endswith(".zst"):
        import zstandard

        with open(path, "rb") as fh:
            reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh))
            try:
                yield from reader
            except zstandard.ZstdError as e:
                raise DataError(f"{path}: corrupt zstd data ({e})") from None
    else:
        with open(path, "rb") as fh:
            yield from fh


def remove_repeated_chars(text: str, max_repeated_len: int) -> str:
    """PaddleNLP's ``remove_repeated_chars``: a character repeated more than
    ``max_repeated_len`` times in a row (``(.)\\1{N,}``) becomes one."""
    if max_repeated_len <= 0:
        return text
    return _repeat_pattern(max_repeated_len).sub(r"\1", text)


_REPEAT_CACHE: dict[int, "re.Pattern"] = {}


def _repeat_pattern(n: int):
    pat = _REPEAT_CACHE.get(n)
    if pat is None:
        pat = _REPEAT_CACHE[n] = re.compile(r"(.)\1{" + str(n) + ",}")
    return pat


# A rule-based English sentence splitter. PaddleNLP uses nltk's punkt model,
# which learns abbreviations from data; this one knows a fixed list, so the
# two can cut a few sentences differently (see split_sentences).
_ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt vs etc fig figs no nos vol vols inc ltd co corp dept est approx
jan feb mar apr jun jul aug sep sept oct nov dec gen col lt sgt capt rev hon gov sen rep
e.g i.e cf al ed eds p pp ch sec u.s u.k a.m p.m
""".split())
_SENTENCE_END = re.compile(r"""([.!?]+)(["')\]]*)(\s+)(?=["'(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """English sentences of ``text``.

    Cuts after ``.``, ``!`` or ``?`` (and any closing quotes or brackets) that
    are followed by whitespace and an upper-case letter or a digit, except
    after a known abbreviation (Mr., Dr., e.g., ...) or a single-letter
    initial; blank lines also end a sentence. Unlike nltk's punkt (which
    PaddleNLP uses) it has no trained model: expect the same cuts on ordinary
    prose and different ones around unusual abbreviations.
    """
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        start = 0
        for m in _SENTENCE_END.finditer(para):
            if m.group(1) == ".":
                word = para[start:m.start(1)].rsplit(None, 1)
                last = word[-1].lower().lstrip("\"'([") if word else ""
                if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
                    continue
            out.append(para[start:m.end(2)])
            start = m.end(3)
        out.append(para[start:])
    return [s for s in (x.strip() for x in out) if s]
