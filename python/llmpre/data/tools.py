"""Corpus tools: merge several corpora, inspect one, verify its files.

* :func:`merge` is PaddleNLP's ``merge_file_``: items and documents of each
  input in order, ``.bin`` bytes copied, dtypes must match.
* :func:`inspect` summarises a corpus (counts, lengths, largest id, a few
  documents decoded).
* :func:`verify` reads the files without trusting them and lists every
  problem it finds (the reader itself stops at the first).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from typing import Optional, Sequence

import numpy as np

from llmpre._core import DataError
from llmpre.data.corpus import corpus_files, open_corpus
from llmpre.data.leftovers import owner_tag
from llmpre.data.writer import DTYPE_CODES, _default_file_mode, index_bytes, remove_corpus_leftovers

__all__ = ["inspect", "merge", "verify"]

_CODE_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
                7: np.float32, 8: np.uint16, 9: np.uint32, 10: np.uint64}
_MAGIC = b"MMIDIDX\x00\x00"
_HEADER = 34
_COPY_CHUNK = 64 << 20


# ------------------------------------------------------------------------------ merge
def _token_bytes_contiguous(corpus) -> bool:
    """Items stored back to back from byte 0, as every writer does."""
    sizes = np.asarray(corpus.sizes, dtype=np.int64)
    pointers = np.asarray(corpus.pointers, dtype=np.int64) // corpus.pointer_unit
    expect = np.zeros_like(sizes)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], out=expect[1:])
    return bool(np.array_equal(pointers, expect)) and int(sizes.sum()) == corpus.num_tokens


def _token_array(prefix: str, corpus) -> np.ndarray:
    """All tokens of a corpus as a read-only array view of its data file."""
    if corpus.is_mmap:
        dt = np.dtype(corpus.dtype).newbyteorder("<")
        return np.memmap(prefix + ".bin", dtype=dt, mode="r") if corpus.num_tokens else np.zeros(0, dt)
    return np.load(prefix + "_ids.npy", mmap_mode="r", allow_pickle=False)


def merge(prefixes: Sequence[str], output_prefix: str) -> dict:
    """Concatenate corpora into ``output_prefix.bin/.idx``; returns counts."""
    if len(prefixes) < 1:
        raise DataError("merge: give at least one input prefix")
    out = os.path.abspath(os.fspath(output_prefix))
    for p in prefixes:
        if os.path.abspath(p) == out:
            raise DataError(f"merge: the output prefix {output_prefix} is also an input; "
                            "write the merged corpus to a new prefix")
    directory = os.path.dirname(out)
    if not os.path.isdir(directory):
        raise DataError(f"{output_prefix}: output directory {directory} does not exist; create it first")
    corpora = [open_corpus(p) for p in prefixes]
    dtype = corpora[0].dtype
    for p, c in zip(prefixes, corpora):
        if c.dtype != dtype:
            raise DataError(f"merge: {p} holds {c.dtype} tokens but {prefixes[0]} holds {dtype}; "
                            "PaddleNLP merges only corpora of one dtype (re-tokenize one of them)")
    if np.dtype(dtype) not in DTYPE_CODES:
        raise DataError(f"merge: {dtype} corpora cannot be written (token ids are integers)")
    sizes, docs, base = [], [np.zeros(1, np.int64)], 0
    for c in corpora:
        sizes.append(np.asarray(c.sizes, dtype=np.int32))
        docs.append(np.asarray(c.doc_idx, dtype=np.int64)[1:] + base)
        base += c.num_items
    all_sizes = np.concatenate(sizes)
    all_docs = np.concatenate(docs)
    itemsize = np.dtype(dtype).itemsize
    base_name = os.path.basename(out)
    fd, bin_tmp = tempfile.mkstemp(prefix=f".{base_name}.{owner_tag()}", suffix=".bin.tmp", dir=directory)
    idx_tmp = None
    try:
        with os.fdopen(fd, "wb") as f:
            for p, c in zip(prefixes, corpora):
                if c.is_mmap and _token_bytes_contiguous(c):
                    with open(p + ".bin", "rb") as src:
                        shutil.copyfileobj(src, f, _COPY_CHUNK)
                else:  # legacy layout, or items not stored back to back: item by item
                    tokens = _token_array(p, c)
                    offsets = np.asarray(c.pointers, dtype=np.int64) // c.pointer_unit
                    for start, n in zip(offsets, np.asarray(c.sizes)):
                        f.write(np.ascontiguousarray(tokens[start:start + n], dtype=np.dtype(dtype).newbyteorder("<")).tobytes())
            f.flush()
            os.fsync(f.fileno())
        fd2, idx_tmp = tempfile.mkstemp(prefix=f".{base_name}.{owner_tag()}", suffix=".idx.tmp",
                                        dir=directory)
        with os.fdopen(fd2, "wb") as f:
            f.write(index_bytes(dtype, all_sizes, all_docs))
            f.flush()
            os.fsync(f.fileno())
        expect = int(all_sizes.sum(dtype=np.int64)) * itemsize
        if os.path.getsize(bin_tmp) != expect:
            raise DataError(f"merge: wrote {os.path.getsize(bin_tmp)} token bytes, expected {expect}; "
                            "an input changed while merging")
        for t in (bin_tmp, idx_tmp):
            os.chmod(t, _default_file_mode())
        os.replace(bin_tmp, out + ".bin")
        bin_tmp = None
        os.replace(idx_tmp, out + ".idx")
        idx_tmp = None
    finally:
        for t in (bin_tmp, idx_tmp):
            if t is not None and os.path.exists(t):
                os.unlink(t)
    remove_corpus_leftovers(out)
    return {"inputs": len(prefixes), "documents": len(all_docs) - 1, "items": len(all_sizes),
            "tokens": int(all_sizes.sum(dtype=np.int64)), "dtype": dtype}


# ---------------------------------------------------------------------------- inspect
PERCENTILES = (0, 1, 5, 25, 50, 75, 95, 99, 100)


def inspect(prefix: str, tokenizer: Optional[str] = None, show: int = 0) -> dict:
    """Counts, document length percentiles, largest token id and the first
    ``show`` documents (decoded when a tokenizer is given, else their ids)."""
    c = open_corpus(prefix)
    sizes = np.asarray(c.sizes, dtype=np.int64)
    doc_idx = np.asarray(c.doc_idx, dtype=np.int64)
    item_cum = np.concatenate(([0], np.cumsum(sizes)))
    doc_tokens = item_cum[doc_idx[1:]] - item_cum[doc_idx[:-1]]
    out = {
        "prefix": prefix,
        "files": corpus_files(prefix),
        "format": "mmap .bin/.idx" if c.is_mmap else "legacy _ids.npy/_idx.npz",
        "dtype": c.dtype,
        "documents": int(c.num_docs),
        "items": int(c.num_items),
        "tokens": int(sizes.sum()),
        "max_token_id": int(c.max_token()),
        "doc_tokens": {},
        "item_tokens": {},
    }
    for key, arr in (("doc_tokens", doc_tokens), ("item_tokens", sizes)):
        if arr.size:
            out[key] = {"mean": round(float(arr.mean()), 2),
                        **{f"p{q}": int(np.percentile(arr, q, method="nearest")) for q in PERCENTILES}}
    docs = []
    if show > 0:
        tok = None
        if tokenizer is not None:
            from llmpre.data.text import load_tokenizer

            tok, _ = load_tokenizer(tokenizer)
        for d in range(min(show, c.num_docs)):
            ids = np.concatenate([c.read(i) for i in range(doc_idx[d], doc_idx[d + 1])] or [np.zeros(0, np.int64)])
            entry = {"document": d, "items": int(doc_idx[d + 1] - doc_idx[d]), "tokens": int(ids.size)}
            if tok is not None:
                entry["text"] = tok.decode(ids.tolist(), skip_special_tokens=False)
            else:
                entry["ids"] = ids[:64].tolist()
            docs.append(entry)
    out["shown"] = docs
    return out


# ----------------------------------------------------------------------------- verify
def verify(prefix: str, vocab_size: Optional[int] = None) -> tuple[list[str], dict]:
    """``(problems, facts)`` for the corpus at ``prefix``: every inconsistency
    found, each one line naming the file; an empty list means the files are
    consistent. Raises DataError only when no corpus exists at ``prefix``."""
    prefix = os.fspath(prefix)
    ids, idx = prefix + "_ids.npy", prefix + "_idx.npz"
    if os.path.exists(ids) and os.path.exists(idx):
        problems, facts = _verify_legacy(ids, idx)
    elif os.path.exists(prefix + ".idx") or os.path.exists(prefix + ".bin"):
        problems, facts = _verify_mmap(prefix)
    else:
        raise DataError(f"{prefix}: no corpus here (no {prefix}.idx/.bin or {ids}/{idx}); "
                        "give the data PREFIX")
    if not problems and facts.get("documents") == 0:
        problems.append(f"{prefix}: the corpus has 0 documents (the files are consistent but "
                        "empty); training and `llmpre data fingerprint` refuse it: re-run "
                        "`llmpre data preprocess` on input that has text under --json-key")
    if not problems and vocab_size is not None:
        biggest = int(open_corpus(prefix).max_token())
        facts["max_token_id"] = biggest
        if biggest >= vocab_size:
            problems.append(f"{prefix}: token id {biggest} is outside a vocabulary of {vocab_size}")
    return problems, facts


def _count(mask: np.ndarray) -> tuple[int, int]:
    hits = np.flatnonzero(mask)
    return len(hits), (int(hits[0]) if len(hits) else -1)


def _check_doc_idx(doc_idx: np.ndarray, n_items: int, where: str, problems: list[str]) -> None:
    if doc_idx.size == 0:
        problems.append(f"{where}: doc_idx is empty (it must start with 0 and end with the item count)")
        return
    if doc_idx[0] != 0:
        problems.append(f"{where}: doc_idx starts at {int(doc_idx[0])}, not 0")
    if doc_idx[-1] != n_items:
        problems.append(f"{where}: doc_idx ends at {int(doc_idx[-1])}, not at the item count {n_items}")
    n, first = _count(np.diff(doc_idx) < 0)
    if n:
        problems.append(f"{where}: doc_idx decreases {n} time(s), first between entries {first} and {first + 1}")
    n, first = _count((doc_idx < 0) | (doc_idx > n_items))
    if n:
        problems.append(f"{where}: {n} doc_idx entr(y/ies) outside [0, {n_items}], first at {first}")


def _verify_mmap(prefix: str) -> tuple[list[str], dict]:
    problems: list[str] = []
    facts: dict = {"format": "mmap"}
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.exists(path):
            problems.append(f"{path}: missing")
    if not os.path.exists(idx_path):
        return problems, facts
    raw = np.fromfile(idx_path, dtype=np.uint8)
    facts["idx_bytes"] = int(raw.size)
    if raw.size < _HEADER:
        problems.append(f"{idx_path}: {raw.size} bytes, shorter than the {_HEADER}-byte header")
        return problems, facts
    head = raw[:_HEADER].tobytes()
    if head[:9] != _MAGIC:
        problems.append(f"{idx_path}: magic is {head[:9]!r}, not {_MAGIC!r}")
    version, code, n, d = struct.unpack("<QBQQ", head[9:])
    facts.update(version=version, dtype_code=code, items=n, doc_idx_len=d)
    if version != 1:
        problems.append(f"{idx_path}: version {version}, only 1 exists")
    itemsize = None
    if code not in _CODE_DTYPES:
        problems.append(f"{idx_path}: unknown dtype code {code} (valid: 1..10)")
    else:
        itemsize = np.dtype(_CODE_DTYPES[code]).itemsize
        facts["dtype"] = np.dtype(_CODE_DTYPES[code]).name
    expect = _HEADER + 12 * n + 8 * d if n < 2**58 and d < 2**58 else None
    if expect != raw.size:
        problems.append(f"{idx_path}: the header's {n} items and {d} doc_idx entries need "
                        f"{expect if expect is not None else 'an impossible number of'} bytes, "
                        f"the file has {raw.size}")
        # Read what the file can hold so the other checks still run.
        n = min(n, (raw.size - _HEADER) // 12)
        d = max(0, min(d, (raw.size - _HEADER - 12 * n) // 8))
    body = raw[_HEADER:].tobytes()
    sizes = np.frombuffer(body, dtype="<i4", count=n).astype(np.int64)
    pointers = np.frombuffer(body, dtype="<i8", count=n, offset=4 * n)
    doc_idx = np.frombuffer(body, dtype="<i8", count=d, offset=12 * n)
    cnt, first = _count(sizes < 0)
    if cnt:
        problems.append(f"{idx_path}: {cnt} negative item size(s), first at item {first}")
    if itemsize is not None:
        expect_ptr = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(np.maximum(sizes[:-1], 0) * itemsize, out=expect_ptr[1:])
        cnt, first = _count(pointers != expect_ptr)
        if cnt:
            problems.append(f"{idx_path}: {cnt} pointer(s) disagree with the sizes and the "
                            f"{itemsize}-byte item size, first at item {first} ({int(pointers[first])} "
                            f"instead of {int(expect_ptr[first])})")
        cnt, first = _count(pointers % itemsize != 0)
        if cnt:
            problems.append(f"{idx_path}: {cnt} pointer(s) not a multiple of the item size "
                            f"{itemsize}, first at item {first}")
        if os.path.exists(bin_path):
            bin_bytes = os.path.getsize(bin_path)
            facts["bin_bytes"] = bin_bytes
            total = int(np.maximum(sizes, 0).sum()) * itemsize
            if bin_bytes % itemsize:
                problems.append(f"{bin_path}: {bin_bytes} bytes, not a multiple of the item size {itemsize}")
            if bin_bytes < total:
                problems.append(f"{bin_path}: {bin_bytes} bytes, but the items need {total}; "
                                "the data file is truncated")
            elif bin_bytes > total:
                problems.append(f"{bin_path}: {bin_bytes - total} bytes after the last item "
                                f"({bin_bytes} bytes, items need {total})")
            cnt, first = _count((pointers < 0) | (pointers + np.maximum(sizes, 0) * itemsize > bin_bytes))
            if cnt:
                problems.append(f"{idx_path}: {cnt} item(s) point outside {bin_path} "
                                f"({bin_bytes} bytes), first at item {first}")
    _check_doc_idx(doc_idx, n, idx_path, problems)
    facts["documents"] = max(int(d) - 1, 0)
    facts["tokens"] = int(np.maximum(sizes, 0).sum())
    return problems, facts


def _verify_legacy(ids_path: str, idx_path: str) -> tuple[list[str], dict]:
    problems: list[str] = []
    facts: dict = {"format": "legacy"}
    ids = None
    try:
        ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
        if ids.ndim != 1:
            problems.append(f"{ids_path}: token array has shape {ids.shape}, not 1-D")
        elif ids.dtype.kind not in "iu":
            problems.append(f"{ids_path}: token ids are {ids.dtype}, not integers")
        facts.update(dtype=ids.dtype.name, tokens_in_file=int(ids.size))
    except Exception as e:
        problems.append(f"{ids_path}: not a readable .npy array ({e})")
    try:
        with np.load(idx_path, allow_pickle=False) as z:
            missing = {"lens", "docs"} - set(z.files)
            if missing:
                problems.append(f"{idx_path}: missing key(s) {sorted(missing)}")
                return problems, facts
            lens = np.asarray(z["lens"]).astype(np.int64)
            docs = np.asarray(z["docs"]).astype(np.int64)
    except Exception as e:
        problems.append(f"{idx_path}: not a readable .npz index ({e})")
        return problems, facts
    facts.update(items=int(lens.size), documents=max(int(docs.size) - 1, 0))
    cnt, first = _count(lens < 0)
    if cnt:
        problems.append(f"{idx_path}: {cnt} negative length(s) in 'lens', first at {first}")
    if ids is not None and ids.ndim == 1:
        total = int(np.maximum(lens, 0).sum())
        if total > ids.size:
            problems.append(f"{idx_path}: 'lens' sum to {total} tokens but {ids_path} holds {ids.size}; "
                            "the token file is truncated or belongs to another index")
        elif total < ids.size:
            problems.append(f"{ids_path}: {ids.size - total} tokens after the last item "
                            f"('lens' sum to {total})")
    _check_doc_idx(docs, int(lens.size), f"{idx_path} 'docs'", problems)
    return problems, facts
