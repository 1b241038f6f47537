"""JSON lines -> a tokenized ``.bin/.idx`` corpus, as PaddleNLP's
``create_pretraining_data.py`` writes it.

Per input line (a JSON object): take ``obj[json_key]``, collapse characters
repeated more than ``max_repeated_len`` times to one, optionally split into
sentences, strip each piece and tokenize it without special tokens (PaddleNLP's
``tokenize`` + ``convert_tokens_to_ids``), drop empty pieces, append the EOS id
to the last one with ``append_eos``, and write each piece as one item and the
line as one document. Token dtype: uint16 below 65535 ids, else int32.

Workers: with ``workers > 1`` batches of lines go to worker processes and come
back in input order, so the output does not depend on the number of workers.
Bad lines (invalid JSON or UTF-8, no such key, a value that is not a string,
nothing left to tokenize) are skipped and counted; ``strict`` makes the first
one an error naming its file and line. Blank lines are not documents and are
passed over silently. The corpus is written to temporary files that are
renamed only when everything succeeded.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from llmpre._core import DataError
from llmpre.data.text import input_files, load_tokenizer, open_lines, remove_repeated_chars, split_sentences
from llmpre.data.writer import CorpusWriter, best_dtype

__all__ = ["PreprocessOptions", "PreprocessStats", "preprocess"]

BATCH_LINES = 256  # lines per task sent to a worker (PaddleNLP's imap chunk)


@dataclass(frozen=True)
class PreprocessOptions:
    json_key: str = "text"
    append_eos: bool = False
    split_sentences: bool = False
    max_repeated_len: int = 100
    eos_id: Optional[int] = None
    dtype: str = "uint16"


@dataclass
class PreprocessStats:
    files: int = 0
    lines: int = 0  # documents read (non-blank lines)
    documents: int = 0  # documents written
    items: int = 0
    tokens: int = 0
    bytes: int = 0  # input bytes of the lines read
    seconds: float = 0.0
    bad: dict = field(default_factory=dict)  # reason -> count
    first_bad: dict = field(default_factory=dict)  # reason -> "file:line"
    skipped_files: list = field(default_factory=list)
    dtype: str = ""
    eos_id: Optional[int] = None

    def summary(self) -> str:
        rate = self.bytes / max(self.seconds, 1e-9) / 2**20
        lines = [f"{self.documents} documents, {self.items} items, {self.tokens} tokens "
                 f"({self.dtype}) from {self.lines} lines in {self.files} file(s); "
                 f"{self.bytes / 2**20:.1f} MB in {self.seconds:.1f}s ({rate:.2f} MB/s, "
                 f"{self.lines / max(self.seconds, 1e-9):.0f} docs/s)"]
        for reason, n in sorted(self.bad.items()):
            lines.append(f"skipped {n} line(s): {reason} (first at {self.first_bad[reason]})")
        for f in self.skipped_files:
            lines.append(f"skipped file {f} (not .jsonl or .zst)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- workers
_STATE: dict = {}


def _init_worker(tokenizer_file: str, options: PreprocessOptions, in_pool: bool = False) -> None:
    if in_pool:  # processes are the parallelism here, not the tokenizer's threads
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        # Ctrl-C reaches the whole process group: the parent stops the pool, a worker just ends
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    from tokenizers import Tokenizer

    _STATE["tok"] = Tokenizer.from_file(tokenizer_file)
    _STATE["opt"] = options


def _encode_batch(batch: tuple[int, list[int], list[bytes]]):
    """Tokenize one batch of lines; returns arrays and the bad lines."""
    file_index, line_numbers, lines = batch
    tok, opt = _STATE["tok"], _STATE["opt"]
    pieces: list[str] = []  # every sentence to tokenize, in order
    per_doc: list[int] = []  # pieces of each good document
    doc_lines: list[int] = []
    bad: list[tuple[int, str]] = []
    nbytes = 0
    for lineno, raw in zip(line_numbers, lines):
        nbytes += len(raw)
        try:
            obj = json.loads(raw)
        except UnicodeDecodeError:
            bad.append((lineno, "not valid UTF-8"))
            continue
        except ValueError:
            bad.append((lineno, "invalid JSON"))
            continue
        if not isinstance(obj, dict) or opt.json_key not in obj:
            bad.append((lineno, f"no '{opt.json_key}' key"))
            continue
        text = obj[opt.json_key]
        if not isinstance(text, str):
            bad.append((lineno, f"'{opt.json_key}' is not a string"))
            continue
        text = remove_repeated_chars(text, opt.max_repeated_len)
        parts = split_sentences(text) if opt.split_sentences else [text]
        parts = [p.strip() for p in parts]
        parts = [p for p in parts if p]
        if not parts:
            bad.append((lineno, "empty text"))
            continue
        pieces.extend(parts)
        per_doc.append(len(parts))
        doc_lines.append(lineno)
    # One call per piece: no tokenizer thread pool, so one worker is one core.
    ids: list[list[int]] = [tok.encode(p, add_special_tokens=False).ids for p in pieces]
    item_sizes: list[int] = []
    items_per_doc: list[int] = []
    flat: list[int] = []
    pos = 0
    for n, lineno in zip(per_doc, doc_lines):
        doc = [x for x in ids[pos:pos + n] if x]
        pos += n
        if not doc:  # every piece tokenized to nothing
            bad.append((lineno, "empty text"))
            continue
        if opt.append_eos:
            doc[-1] = doc[-1] + [opt.eos_id]
        for item in doc:
            flat.extend(item)
            item_sizes.append(len(item))
        items_per_doc.append(len(doc))
    bad.sort()
    # In the corpus dtype (fewer bytes to send back); numpy refuses an id that does not fit.
    return (file_index, np.asarray(flat, dtype=opt.dtype), np.asarray(item_sizes, dtype=np.int64),
            np.asarray(items_per_doc, dtype=np.int64), bad, nbytes, len(lines))


# --------------------------------------------------------------------------- driver
def _batches(files: list[str], max_docs: Optional[int]):
    """(file index, line numbers, lines) with at most BATCH_LINES non-blank lines each."""
    taken = 0
    for fi, path in enumerate(files):
        numbers: list[int] = []
        batch: list[bytes] = []
        for lineno, raw in enumerate(open_lines(path), start=1):
            if not raw.strip():
                continue
            numbers.append(lineno)
            batch.append(raw)
            taken += 1
            if len(batch) == BATCH_LINES:
                yield fi, numbers, batch
                numbers, batch = [], []
            if max_docs is not None and taken >= max_docs:
                break
        if batch:
            yield fi, numbers, batch
        if max_docs is not None and taken >= max_docs:
            return


def _results(batches, pool, workers: int):
    """Encoded batches in input order, from this process or from the pool's workers."""
    if pool is None:
        for b in batches:
            yield _encode_batch(b)
        return
    window: deque = deque()
    depth = 4 * workers  # a bounded window: input is read only a little ahead
    try:
        for b in batches:
            window.append(pool.submit(_encode_batch, b))
            if len(window) >= depth:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    except BrokenProcessPool as e:
        raise DataError(f"a tokenizer worker process died ({e}); was it killed, or out of memory? "
                        "Nothing was written; rerun, with fewer --workers if memory is short") from None


def _start_pool(workers: int, tokenizer_file: str, options: PreprocessOptions, tok):
    """A pool of tokenizer processes, or None when this process tokenizes.

    Workers start from a fresh interpreter (forkserver, else spawn), never by forking this one:
    a fork inherits whatever the parent loaded, Paddle's signal handlers among them (one of them
    allocates, so a worker stopped inside malloc deadlocks), and the locks of the parent's threads.
    The pool is shut down by letting its workers finish, never by signalling them.
    """
    if workers <= 1:  # this process tokenizes, with the tokenizer already loaded
        _STATE["tok"], _STATE["opt"] = tok, options
        return None
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(tokenizer_file, options, True))


def preprocess(input_path: str, tokenizer: str, output_prefix: str, *, json_key: str = "text",
               append_eos: bool = False, eos_token: Optional[str] = None, workers: int = 1,
               max_doc_num: Optional[int] = None, split: bool = False, strict: bool = False,
               max_repeated_len: int = 100, progress: bool = True) -> PreprocessStats:
    """Tokenize ``input_path`` into ``output_prefix.bin/.idx``; see the module doc."""
    if workers < 1:
        raise DataError(f"--workers {workers}: need at least 1")
    if max_doc_num is not None and max_doc_num < 1:
        raise DataError(f"--max-doc-num {max_doc_num}: need at least 1")
    files, skipped = input_files(input_path)
    tok, info = load_tokenizer(tokenizer, eos_token)
    if append_eos and info.eos_id is None:
        raise DataError(f"--append-eos: the tokenizer {info.path} has no recognisable EOS token "
                        "(none of tokenizer_config.json's eos_token, </s>, <|endoftext|>, ...); "
                        "name it with --eos-token TOKEN (or an integer id)")
    dtype = best_dtype(info.vocab_size)
    options = PreprocessOptions(json_key, append_eos, split, max_repeated_len,
                                info.eos_id if append_eos else None, dtype.name)
    stats = PreprocessStats(files=len(files), skipped_files=skipped, dtype=dtype.name,
                            eos_id=options.eos_id)
    pool = _start_pool(workers, info.path, options, tok)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit=" docs", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
                   total=max_doc_num, desc="tokenizing")
    start = time.perf_counter()
    try:
        with CorpusWriter(output_prefix, dtype) as writer:
            for fi, flat, sizes, per_doc, bad, nbytes, nlines in _results(
                    _batches(files, max_doc_num), pool, workers):
                for line, reason in bad:
                    if strict:
                        raise DataError(f"{files[fi]}:{line}: {reason} (--strict stops at the "
                                        "first bad line; drop it or run without --strict)")
                    stats.bad[reason] = stats.bad.get(reason, 0) + 1
                    stats.first_bad.setdefault(reason, f"{files[fi]}:{line}")
                if per_doc.size:
                    writer.add_documents(flat, sizes, per_doc)
                stats.lines += nlines
                stats.bytes += nbytes
                if bar is not None:
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix_str(f"{stats.bytes / elapsed / 2**20:.2f} MB/s", refresh=False)
                    bar.update(nlines)
            if writer.num_docs == 0:
                raise DataError(f"--input {input_path}: no document had any text to tokenize "
                                f"({sum(stats.bad.values())} bad line(s)); nothing written")
            stats.documents, stats.items, stats.tokens = writer.num_docs, writer.num_items, writer.num_tokens
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:  # each running batch is short; queued ones are dropped
            pool.shutdown(wait=True, cancel_futures=True)
    stats.seconds = time.perf_counter() - start
    return stats
