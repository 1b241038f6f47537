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

import numpy as np

from llmpre import _core
from llmpre._core import DataError
from llmpre.data.corpus import open_corpus, require_tokens
from llmpre.data.index_cache import BuildPolicy, IndexCache

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


GPT_SUFFIXES = {
    "desc": ".dsc",
    "doc_idx": "_doc_idx.npy",
    "sample_idx": "_sample_idx.npy",
    "shuffle_idx": "_shuffle_idx.npy",
}


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
        cache: where index files are looked up and written, and which rank
            builds a missing index (:class:`llmpre.data.index_cache.IndexCache`).
        use_cache: False builds in memory and touches no file.
        threads: threads of the C++ builder (0: all cores, at most 8).
    """

    def __init__(self, corpus: _core.Corpus, prefix: str, name: str, begin: int, end: int,
                 num_samples: int, seq_length: int, seed: int, split: str,
                 cache: IndexCache | None = None, use_cache: bool = True, threads: int = 0):
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

        def build() -> dict[str, np.ndarray]:
            built = _core.build_gpt_index(corpus, self.begin, self.end, self.num_samples,
                                          self.seq_length, self.seed, threads)
            return {k: built[k] for k in ("doc_idx", "sample_idx", "shuffle_idx")}

        if not use_cache:
            arrays = build()
        else:
            cache = cache or IndexCache()
            what = f"the {name} index of {prefix}"
            self.cache_files, arrays = cache.obtain(prefix, self.desc_hash, GPT_SUFFIXES,
                                                    self.desc, build, what)
        if arrays is None:
            self._load(self.cache_files, plan)
            self.loaded_from_cache = True
        else:
            self.doc_idx = arrays["doc_idx"]
            self.sample_idx = arrays["sample_idx"]
            self.shuffle_idx = arrays["shuffle_idx"]

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
                       corpus: _core.Corpus | None = None, share_folder: bool = False,
                       policy: BuildPolicy | None = None,
                       threads: int = 0) -> dict[str, GPTDataset | None]:
    """train/valid/test datasets of one corpus, as PaddleNLP's
    ``build_train_valid_test_datasets`` makes them (``None`` for an empty split).

    ``policy`` (default: ranks from the environment, ``share_folder``) says
    which process builds a missing cache and how long the others wait."""
    num_samples = list(num_samples)
    if len(num_samples) != 3 or any(int(n) < 0 for n in num_samples):
        raise DataError(f"num_samples must be three non-negative counts, got {num_samples}")
    if seq_length <= 0:
        raise DataError(f"seq_length must be positive, got {seq_length}")
    corpus = corpus if corpus is not None else open_corpus(prefix)
    require_tokens(prefix, corpus)
    bounds = _core.split_ranges(split, corpus.num_items)
    cache = IndexCache(data_cache, policy or BuildPolicy(share_folder=share_folder))
    out: dict[str, GPTDataset | None] = {}
    for i, name in enumerate(SPLIT_NAMES):
        if bounds[i + 1] > bounds[i]:
            out[name] = GPTDataset(corpus, prefix, name, bounds[i], bounds[i + 1],
                                   int(num_samples[i]), seq_length, seed, split, cache,
                                   use_cache=use_cache, threads=threads)
        else:
            out[name] = None
    return out
