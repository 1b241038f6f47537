"""A run's tokenizer saved beside its final weights, so that ``output_dir`` loads with
``transformers.AutoTokenizer.from_pretrained(output_dir)`` and PaddleNLP 2.8.1's
``AutoTokenizer.from_pretrained(output_dir)``.

    save_tokenizer("out/", "tok/")      # a tokenizer.json, or a directory holding one

What is written:

* ``tokenizer.json`` and, from a directory, the tokenizer files beside it
  (:data:`SIBLINGS`: vocab/merges, sentencepiece models, special-token maps, ...), as they are;
* ``vocab.json`` + ``merges.txt`` derived from a byte-level BPE ``tokenizer.json`` when
  the source has none: PaddleNLP 2.8.1 cannot build a tokenizer from ``tokenizer.json``
  alone (its fast tokenizers need another package), and its ``GPTTokenizer`` is the same
  byte-level BPE read from these two files;
* ``tokenizer_config.json``: the source's, with what is missing filled in:
  ``tokenizer_class: PreTrainedTokenizerFast`` (transformers builds it from
  ``tokenizer.json``), ``init_class: GPTTokenizer`` when the two BPE files were derived
  (PaddleNLP reads ``init_class`` before ``tokenizer_class``), and the EOS token the
  tokenizer declares or holds (:func:`llmpre.data.text.load_tokenizer`).

Each file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import List, Optional

from llmpre.data.text import load_tokenizer

__all__ = ["SIBLINGS", "save_tokenizer", "run_tokenizer"]

TOKENIZER = "tokenizer.json"
CONFIG = "tokenizer_config.json"
SIBLINGS = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
            "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "qwen.tiktoken")


def run_tokenizer(tokenizer_name_or_path: Optional[str], input_dir: Optional[str]) -> Optional[str]:
    """The tokenizer a run's data was made with: ``tokenizer_name_or_path``, else the bundled
    one when the run trains on the bundled corpus, else None (unknown)."""
    if tokenizer_name_or_path:
        return tokenizer_name_or_path
    if input_dir is None:
        from llmpre.data.default import default_tokenizer_path

        return default_tokenizer_path()
    return None


def _temp(path: str) -> str:
    """``.NAME.tmpPID`` beside ``path``: the trainer removes such leftovers of a dead writer."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")


def _write(path: str, text: str) -> None:
    tmp = _temp(path)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _copy(src: str, dst: str) -> None:
    tmp = _temp(dst)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _byte_level_bpe(spec: dict) -> bool:
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    kinds = [pre.get("type")] + [p.get("type") for p in pre.get("pretokenizers") or []]
    return model.get("type") == "BPE" and "ByteLevel" in kinds and isinstance(model.get("vocab"), dict)


def save_tokenizer(output_dir: str, source: str) -> List[str]:
    """Write the tokenizer ``source`` (a tokenizer.json or a directory holding one) into
    ``output_dir`` (see the module doc); returns the names of the files written."""
    _, info = load_tokenizer(source)     # a DataError names the file when it is not a tokenizer.json
    src_dir = os.path.dirname(info.path)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    same = os.path.realpath(src_dir) == os.path.realpath(output_dir)
    if not same:
        _copy(info.path, os.path.join(output_dir, TOKENIZER))
        written.append(TOKENIZER)
    from_dir = os.path.isdir(source)
    if from_dir and not same:
        for name in SIBLINGS:
            if os.path.isfile(os.path.join(src_dir, name)):
                _copy(os.path.join(src_dir, name), os.path.join(output_dir, name))
                written.append(name)
    config = {}
    if from_dir and os.path.isfile(os.path.join(src_dir, CONFIG)):
        with open(os.path.join(src_dir, CONFIG), encoding="utf-8") as fh:
            config = json.load(fh)
    with open(info.path, encoding="utf-8") as fh:
        spec = json.load(fh)
    has_bpe_files = all(os.path.isfile(os.path.join(output_dir, n)) for n in ("vocab.json", "merges.txt"))
    if _byte_level_bpe(spec) and not has_bpe_files:
        merges = spec["model"].get("merges") or []
        _write(os.path.join(output_dir, "vocab.json"), json.dumps(spec["model"]["vocab"], ensure_ascii=False))
        _write(os.path.join(output_dir, "merges.txt"), "#version: 0.2\n" + "".join(
            (" ".join(m) if isinstance(m, list) else m) + "\n" for m in merges))
        written += ["vocab.json", "merges.txt"]
        config.setdefault("init_class", "GPTTokenizer")
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    if info.eos_token is not None:
        config.setdefault("eos_token", info.eos_token)
        if config.get("init_class") == "GPTTokenizer":   # PaddleNLP's defaults name <|endoftext|>
            for key in ("unk_token", "bos_token", "pad_token"):
                config.setdefault(key, info.eos_token)
    _write(os.path.join(output_dir, CONFIG), json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return written + [CONFIG]
