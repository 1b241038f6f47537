"""PaddleNLP's ``GPTDataset``: fixed-length samples drawn across documents.

Item ``i`` of a split is exactly the ``seq_length + 1`` tokens PaddleNLP's
``paddlenlp.data.causal_dataset.GPTDataset`` returns for the same corpus, split
string, seed, sequence length and number of samples. The index arrays are
built in C++ (``llmpre._core.build_gpt_index``, bit-identical to PaddleNLP's
numpy ``RandomState`` shuffles) and cached under ``<data dir>/index-cache/``
with PaddleNLP's ``md5(desc)`` file names, so either tool reuses the other's
cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from llmpre import _core
from llmpre._core import DataError
from llmpre.data.corpus import open_corpus

__all__ = ["GPTDataset", "IndexCache", "build_gpt_datasets", "SPLIT_NAMES"]

SPLIT_NAMES = ("train", "valid", "test")


def gpt_desc(prefix: str, name: str, num_samples: int, seq_length: int, seed: int,
             split: str) -> str:
    """The text PaddleNLP hashes (md5) to name the cache files of one split."""
    return (
        f"GPT Dataset\n\nData prefix {prefix}\nDataset name {name}\n"
        f"Number of samples {num_samples}\nSequence length {seq_length}\n"
        f"Random seed {seed}\nSplit {split}\n"
    )


@dataclass(frozen=True)
class IndexCache:
    """Where index files live: PaddleNLP's lookup order, first hit wins.

    ``<dirname(prefix)>/index-cache`` is searched first, then ``data_cache``
    (PaddleNLP's ``--data_cache``). A new index is written to the last
    candidate: ``data_cache`` when given, else ``index-cache``.
    """

    data_cache: str | None = None

    def candidates(self, prefix: str) -> list[str]:
        dirs = [os.path.join(os.path.dirname(prefix), "index-cache")]
        if self.data_cache:
            dirs.append(self.data_cache)
        return dirs

    @staticmethod
    def files(directory: str, digest: str) -> dict[str, str]:
        base = os.path.join(directory, digest)
        return {
            "desc": base + ".dsc",
            "doc_idx": base + "_doc_idx.npy",
            "sample_idx": base + "_sample_idx.npy",
            "shuffle_idx": base + "_shuffle_idx.npy",
        }

    def find(self, prefix: str, digest: str) -> dict[str, str] | None:
        for d in self.candidates(prefix):
            f = self.files(d, digest)
            if all(os.path.isfile(p) for p in f.values()):
                return f
        return None

    def target(self, prefix: str, digest: str) -> dict[str, str]:
        return self.files(self.candidates(prefix)[-1], digest)


def _atomic_write(path: str, write) -> None:
    """Write through a temporary file in the same directory, then rename."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _save_index(files: dict[str, str], desc: str, arrays: dict[str, np.ndarray]) -> None:
    directory = os.path.dirname(files["desc"])
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create the index cache directory {directory} ({e}); "
            "pass a writable --data-cache directory"
        ) from None
    for key in ("doc_idx", "sample_idx", "shuffle_idx"):
        _atomic_write(files[key], lambda f, a=arrays[key]: np.save(f, a, allow_pickle=True))
    # The .dsc goes last: a reader that sees all four files sees complete arrays.
    _atomic_write(files["desc"], lambda f: f.write(desc.encode("utf-8")))


class GPTDataset:
    """One split of a corpus as PaddleNLP samples it.

    Args:
        corpus: an opened corpus (:func:`llmpre.data.open_corpus`).
        prefix: the data prefix string exactly as the user gave it (PaddleNLP
            hashes it into the cache name).
        name: ``"train"``, ``"valid"`` or ``"test"``.
        begin, end: the split's item range.
        num_samples: samples requested; the dataset holds at least that many.
        seq_length: tokens per training sequence; items are ``seq_length + 1`` long.
        seed: PaddleNLP's ``seed`` (one ``RandomState(seed)`` per split).
        split: the split string, e.g. ``"949,50,1"`` (part of the cache name).
        cache: where index files are looked up and written.
    """

    def __init__(self, corpus: _core.Corpus, prefix: str, name: str, begin: int, end: int,
                 num_samples: int, seq_length: int, seed: int, split: str,
                 cache: IndexCache | None = None, use_cache: bool = True):
        self.corpus = corpus
        self.prefix = prefix
        self.name = name
        self.begin, self.end = int(begin), int(end)
        self.num_samples = int(num_samples)
        self.seq_length = int(seq_length)
        self.seed = int(seed)
        self.split = split
        self.desc = gpt_desc(prefix, name, self.num_samples, self.seq_length, self.seed, split)
        self.desc_hash = hashlib.md5(self.desc.encode("utf-8")).hexdigest()
        tokens = corpus.count_tokens(self.begin, self.end)
        plan = _core.plan_gpt_index(tokens, self.seq_length, self.num_samples)
        self.tokens_per_epoch = plan["tokens_per_epoch"]
        self.num_epochs = plan["num_epochs"]
        self.separate_last_epoch = plan["separate_last_epoch"]
        self.samples_from_epochs_minus_one = plan["samples_from_epochs_minus_one"]
        self.cache_files: dict[str, str] | None = None
        self.loaded_from_cache = False

        cache = cache or IndexCache()
        found = cache.find(prefix, self.desc_hash) if use_cache else None
        if found is not None:
            self._load(found, plan)
            self.cache_files, self.loaded_from_cache = found, True
        else:
            built = _core.build_gpt_index(corpus, self.begin, self.end, self.num_samples,
                                          self.seq_length, self.seed)
            self.doc_idx = built["doc_idx"]
            self.sample_idx = built["sample_idx"]
            self.shuffle_idx = built["shuffle_idx"]
            if use_cache:
                target = cache.target(prefix, self.desc_hash)
                _save_index(target, self.desc, {"doc_idx": self.doc_idx,
                                                "sample_idx": self.sample_idx,
                                                "shuffle_idx": self.shuffle_idx})
                self.cache_files = target

    def _load(self, files: dict[str, str], plan: dict) -> None:
        try:
            self.doc_idx = np.load(files["doc_idx"], mmap_mode="r", allow_pickle=True)
            self.sample_idx = np.load(files["sample_idx"], mmap_mode="r", allow_pickle=True)
            self.shuffle_idx = np.load(files["shuffle_idx"], mmap_mode="r", allow_pickle=True)
        except Exception as e:
            raise DataError(f"index cache {files['desc']}: unreadable ({e}); delete the "
                            f"{self.desc_hash}* files and run again") from None
        n = plan["total_samples"]
        docs = (self.end - self.begin) * plan["num_epochs"]
        ok = (self.doc_idx.shape == (docs,) and self.sample_idx.shape == (n + 1, 2)
              and self.shuffle_idx.shape == (n,))
        if not ok:
            raise DataError(
                f"index cache {files['desc']}: array shapes {self.doc_idx.shape}, "
                f"{self.sample_idx.shape}, {self.shuffle_idx.shape} do not match this corpus "
                f"(expected ({docs},), ({n + 1}, 2), ({n},)); the cache belongs to other data "
                f"with the same prefix name: delete the {self.desc_hash}* files"
            )

    def __len__(self) -> int:
        return int(self.shuffle_idx.shape[0])

    def gather(self, indices) -> np.ndarray:
        """Samples at ``indices`` as an int64 array ``[len(indices), seq_length + 1]``."""
        return _core.gather_samples(self.corpus, self.doc_idx, self.sample_idx,
                                    self.shuffle_idx, np.asarray(indices, dtype=np.int64),
                                    self.seq_length)

    def __getitem__(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self)
        return self.gather([i])[0]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "documents": [self.begin, self.end],
            "num_samples": self.num_samples,
            "len": len(self),
            "num_epochs": self.num_epochs,
            "separate_last_epoch": self.separate_last_epoch,
            "tokens_per_epoch": self.tokens_per_epoch,
        }


def build_gpt_datasets(prefix: str, split: str, num_samples, seq_length: int, seed: int,
                       data_cache: str | None = None, use_cache: bool = True,
                       corpus: _core.Corpus | None = None) -> dict[str, GPTDataset | None]:
    """train/valid/test datasets of one corpus, as PaddleNLP's
    ``build_train_valid_test_datasets`` makes them (``None`` for an empty split)."""
    num_samples = list(num_samples)
    if len(num_samples) != 3 or any(int(n) < 0 for n in num_samples):
        raise DataError(f"num_samples must be three non-negative counts, got {num_samples}")
    if seq_length <= 0:
        raise DataError(f"seq_length must be positive, got {seq_length}")
    corpus = corpus if corpus is not None else open_corpus(prefix)
    bounds = _core.split_ranges(split, corpus.num_items)
    cache = IndexCache(data_cache)
    out: dict[str, GPTDataset | None] = {}
    for i, name in enumerate(SPLIT_NAMES):
        if bounds[i + 1] > bounds[i]:
            out[name] = GPTDataset(corpus, prefix, name, bounds[i], bounds[i + 1],
                                   int(num_samples[i]), seq_length, seed, split, cache,
                                   use_cache=use_cache)
        else:
            out[name] = None
    return out
