"""Write a tokenized corpus as PaddleNLP/Megatron ``PREFIX.bin`` + ``PREFIX.idx``.

The output is byte-identical to what PaddleNLP's ``MMapIndexedDatasetBuilder``
writes for the same calls (``add_item`` per sequence, ``end_document`` per
document), so corpora made here open in PaddleNLP and vice versa.

``.idx`` (little-endian)::

    9 bytes  magic b"MMIDIDX\\x00\\x00"
    <Q       version (1)
    <B       dtype code (see DTYPE_CODES)
    <Q       N = number of items (sequences)
    <Q       D = len(doc_idx) = number of documents + 1
    int32[N] sizes     tokens per item
    int64[N] pointers  byte offset of each item in .bin
    int64[D] doc_idx   first item of each document, then N

``.bin`` is the items' tokens back to back in the index dtype, no header.

Nothing is written under the final names until :meth:`CorpusWriter.finalize`:
tokens and index go to temporary files beside the target, which are renamed
into place at the end, so an interrupted or failed write leaves no half corpus.
The temporary names carry the writer's host and pid
(``.<name>.<host>.pid<pid>.<random>.bin.tmp``); a successful write removes
those of killed writers of the same prefix (:mod:`llmpre.data.leftovers`).
"""

from __future__ import annotations

import array
import os
import struct
import tempfile
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from llmpre._core import DataError
from llmpre.data.leftovers import owner_tag, remove_leftovers, suffixed_owner

__all__ = ["DTYPE_CODES", "CorpusWriter", "best_dtype", "index_bytes", "remove_corpus_leftovers",
           "write_corpus"]

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1

# PaddleNLP's dtype code table (indexed_dataset.dtypes). Only the integer types
# are accepted for writing: token ids are integers.
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.uint16): 8,
    np.dtype(np.uint32): 9,
    np.dtype(np.uint64): 10,
}

DTypeLike = Union[str, type, np.dtype]
Tokens = Union[Sequence[int], np.ndarray]


def best_dtype(vocab_size: int) -> np.dtype:
    """The token dtype PaddleNLP's preprocessor picks for ``vocab_size``.

    uint16 when ``vocab_size < 65535``, int32 otherwise.
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size < 65535 else np.dtype(np.int32)


def index_bytes(dtype: DTypeLike, sizes: np.ndarray, doc_idx: np.ndarray) -> bytes:
    """The whole ``.idx`` file for items of ``sizes`` tokens (stored back to
    back in ``.bin``) grouped by ``doc_idx``."""
    dt = _check_dtype(dtype)
    sizes = np.asarray(sizes)
    pointers = np.zeros(len(sizes), dtype="<i8")
    if len(sizes) > 1:
        np.cumsum(sizes[:-1].astype(np.int64) * dt.itemsize, out=pointers[1:])
    header = MAGIC + struct.pack("<QBQQ", VERSION, DTYPE_CODES[dt], len(sizes), len(doc_idx))
    return b"".join((header, sizes.astype("<i4").tobytes(), pointers.tobytes(),
                     np.asarray(doc_idx).astype("<i8").tobytes()))


def _check_dtype(dtype: DTypeLike) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in DTYPE_CODES:
        names = ", ".join(str(d) for d in DTYPE_CODES)
        raise ValueError(f"corpus dtype must be one of {names}; got {dtype!r}")
    return dt


class CorpusWriter:
    """Build ``PREFIX.bin`` + ``PREFIX.idx`` item by item.

    Use as a context manager: a clean exit finalizes (if :meth:`finalize` was
    not already called), an exception discards the temporary files and leaves
    any existing corpus at ``prefix`` untouched::

        with CorpusWriter("data/wiki", np.uint16) as w:
            for doc in docs:
                w.add_document(doc)

    A document is one or more items (sentences) followed by
    :meth:`end_document`. Empty items and empty documents are refused:
    PaddleNLP's preprocessor drops them, and they only confuse sampling.
    """

    def __init__(self, prefix: Union[str, os.PathLike], dtype: DTypeLike):
        self.prefix = os.path.abspath(os.fspath(prefix))
        self.dtype = _check_dtype(dtype)
        self._info = np.iinfo(self.dtype)
        for suffix in (".bin", ".idx"):
            if self.prefix.endswith(suffix):
                raise ValueError(
                    f"{self.prefix}: give the output PREFIX without '{suffix}' "
                    f"(e.g. {self.prefix[: -len(suffix)]})"
                )
        self.bin_path = self.prefix + ".bin"
        self.idx_path = self.prefix + ".idx"
        directory = os.path.dirname(self.prefix)
        if not os.path.isdir(directory):
            raise DataError(
                f"{self.prefix}: output directory {directory} does not exist; create it first"
            )
        base = os.path.basename(self.prefix)
        self._sizes = array.array("i")  # int32, as in the index
        self._doc_idx = array.array("q", [0])  # int64
        self._num_tokens = 0
        self._done = False
        self._bin_tmp: Optional[str] = None
        self._idx_tmp: Optional[str] = None
        self._bin = None
        try:
            fd, self._bin_tmp = tempfile.mkstemp(prefix=f".{base}.{owner_tag()}", suffix=".bin.tmp",
                                                 dir=directory)
            self._bin = os.fdopen(fd, "wb")
        except OSError as e:
            self._discard()
            raise DataError(f"{self.bin_path}: cannot create a temporary file in {directory} ({e})") from None

    # ------------------------------------------------------------------ stats
    @property
    def num_items(self) -> int:
        return len(self._sizes)

    @property
    def num_docs(self) -> int:
        return len(self._doc_idx) - 1

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    # ---------------------------------------------------------------- writing
    def _check_open(self) -> None:
        if self._done:
            raise DataError(f"{self.prefix}: the writer is finalized or aborted; open a new CorpusWriter")

    def add_item(self, tokens: Tokens) -> None:
        """Append one item (a sentence, or a whole document) of token ids."""
        self._check_open()
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise DataError(f"{self.prefix}: an item must be a 1-D sequence of token ids, got shape {arr.shape}")
        if arr.size == 0:
            raise DataError(
                f"{self.prefix}: empty item (document {self.num_docs}); drop empty "
                "sentences/documents before writing"
            )
        if arr.dtype.kind not in "iu":
            raise DataError(f"{self.prefix}: token ids must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < self._info.min or hi > self._info.max:
            bad = lo if lo < self._info.min else hi
            raise DataError(
                f"{self.prefix}: token id {bad} does not fit {self.dtype.name} "
                f"[{self._info.min}, {self._info.max}] (document {self.num_docs}); "
                f"write with a wider dtype (best_dtype(vocab_size) picks PaddleNLP's)"
            )
        if arr.size > np.iinfo(np.int32).max:
            raise DataError(f"{self.prefix}: item of {arr.size} tokens exceeds the int32 size field; split it")
        data = np.ascontiguousarray(arr, dtype=self.dtype.newbyteorder("<"))
        try:
            self._bin.write(data.tobytes())
        except OSError as e:
            raise DataError(f"{self._bin_tmp}: write failed ({e})") from None
        self._sizes.append(int(arr.size))
        self._num_tokens += int(arr.size)

    def end_document(self) -> None:
        """Close the current document (all items since the last call)."""
        self._check_open()
        if len(self._sizes) == self._doc_idx[-1]:
            raise DataError(
                f"{self.prefix}: end_document() with no item since the last document; "
                "empty documents are not written"
            )
        self._doc_idx.append(len(self._sizes))

    def add_document(self, tokens: Tokens) -> None:
        """One item that is a whole document (PaddleNLP without --split_sentences)."""
        self.add_item(tokens)
        self.end_document()

    def add_documents(self, tokens: np.ndarray, item_sizes: np.ndarray,
                      items_per_doc: np.ndarray) -> None:
        """Many documents at once: ``tokens`` is their items back to back,
        ``item_sizes`` the length of each item and ``items_per_doc`` how many
        items each document has. Same result as the matching add_item /
        end_document calls, one write."""
        self._check_open()
        tokens = np.asarray(tokens)
        sizes = np.asarray(item_sizes, dtype=np.int64)
        per_doc = np.asarray(items_per_doc, dtype=np.int64)
        if tokens.ndim != 1 or sizes.ndim != 1 or per_doc.ndim != 1:
            raise DataError(f"{self.prefix}: add_documents takes 1-D arrays")
        if len(self._sizes) != self._doc_idx[-1]:
            raise DataError(f"{self.prefix}: add_documents() after an unfinished document; "
                            "call end_document() first")
        if int(sizes.sum()) != tokens.size or int(per_doc.sum()) != sizes.size:
            raise DataError(f"{self.prefix}: add_documents: {tokens.size} tokens, item sizes "
                            f"summing to {int(sizes.sum())}, {sizes.size} items and documents "
                            f"holding {int(per_doc.sum())}; they must agree")
        if sizes.size and (sizes.min() <= 0 or sizes.max() > np.iinfo(np.int32).max):
            raise DataError(f"{self.prefix}: items must hold 1 to 2**31-1 tokens")
        if per_doc.size and per_doc.min() <= 0:
            raise DataError(f"{self.prefix}: empty documents are not written")
        if tokens.size:
            if tokens.dtype.kind not in "iu":
                raise DataError(f"{self.prefix}: token ids must be integers, got dtype {tokens.dtype}")
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < self._info.min or hi > self._info.max:
                bad = lo if lo < self._info.min else hi
                raise DataError(
                    f"{self.prefix}: token id {bad} does not fit {self.dtype.name} "
                    f"[{self._info.min}, {self._info.max}]; write with a wider dtype")
            data = np.ascontiguousarray(tokens, dtype=self.dtype.newbyteorder("<"))
            try:
                self._bin.write(data.tobytes())
            except OSError as e:
                raise DataError(f"{self._bin_tmp}: write failed ({e})") from None
        base = len(self._sizes)
        self._sizes.extend(sizes.astype(np.int32).tolist())
        self._doc_idx.extend((base + np.cumsum(per_doc)).tolist())
        self._num_tokens += int(tokens.size)

    def _index_bytes(self) -> bytes:
        sizes = np.frombuffer(self._sizes, dtype=np.int32) if len(self._sizes) else np.zeros(0, np.int32)
        return index_bytes(self.dtype, sizes, np.frombuffer(self._doc_idx, dtype=np.int64))

    def finalize(self) -> None:
        """Write the index and move both files onto ``PREFIX.bin`` / ``PREFIX.idx``."""
        self._check_open()
        trailing = len(self._sizes) - self._doc_idx[-1]
        if trailing:
            raise DataError(
                f"{self.prefix}: {trailing} item(s) after the last end_document(); "
                "call end_document() before finalize()"
            )
        directory = os.path.dirname(self.prefix)
        try:
            self._bin.flush()
            os.fsync(self._bin.fileno())
            self._bin.close()
            fd, self._idx_tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(self.prefix)}.{owner_tag()}", suffix=".idx.tmp", dir=directory
            )
            with os.fdopen(fd, "wb") as f:
                f.write(self._index_bytes())
                f.flush()
                os.fsync(f.fileno())
            mode = _default_file_mode()
            os.chmod(self._bin_tmp, mode)
            os.chmod(self._idx_tmp, mode)
            # .idx last: a reader that finds the new index also finds its data.
            os.replace(self._bin_tmp, self.bin_path)
            self._bin_tmp = None
            os.replace(self._idx_tmp, self.idx_path)
            self._idx_tmp = None
        except OSError as e:
            self._discard()
            raise DataError(f"{self.prefix}: cannot write the corpus files ({e})") from None
        self._done = True
        remove_corpus_leftovers(self.prefix)

    def abort(self) -> None:
        """Drop everything written so far; the target files are not touched."""
        self._discard()

    def _discard(self) -> None:
        self._done = True
        if self._bin is not None and not self._bin.closed:
            self._bin.close()
        for path in (self._bin_tmp, self._idx_tmp):
            if path is not None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        self._bin_tmp = self._idx_tmp = None

    def __enter__(self) -> "CorpusWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
        elif not self._done:
            self.finalize()

    def __del__(self):  # a writer dropped without finalize leaves no litter
        try:
            if not self._done:
                self._discard()
        except Exception:  # interpreter shutdown: attributes may be gone
            pass


def remove_corpus_leftovers(prefix: Union[str, os.PathLike]) -> list[str]:
    """Remove the ``.<name>.*.bin.tmp`` / ``.idx.tmp`` files of earlier writers of ``prefix``
    that were killed (see :mod:`llmpre.data.leftovers`); returns their paths."""
    prefix = os.path.abspath(os.fspath(prefix))
    start = f".{os.path.basename(prefix)}."
    return remove_leftovers(os.path.dirname(prefix),
                            lambda name: suffixed_owner(name, start, (".bin.tmp", ".idx.tmp")),
                            f"write of {prefix}.bin/.idx")


def _default_file_mode() -> int:
    """0o666 minus the umask: what open() would have given (mkstemp uses 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_corpus(
    prefix: Union[str, os.PathLike], documents: Iterable[Tokens], dtype: DTypeLike
) -> tuple[int, int]:
    """Write each document as one item; return ``(num_docs, num_tokens)``."""
    with CorpusWriter(prefix, dtype) as w:
        for doc in documents:
            w.add_document(doc)
    return w.num_docs, w.num_tokens
