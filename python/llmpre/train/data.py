"""Batches for training and evaluation, in PaddleNLP's order.

PaddleNLP requests these many samples per split (``run_pretrain.py``):
    train = batch * dp_world * max_steps * grad_acc
    valid = eval_batch * dp_world * eval_iters * (max_steps // eval_steps + 1)
    test  = eval_batch * dp_world * eval_iters * 10
and reads them with a non-shuffling ``DistributedBatchSampler``: global batch
``k`` is samples ``[k*B*W, (k+1)*B*W)`` and rank ``r`` takes the slice
``[r*B, (r+1)*B)`` of it. Randomness comes only from the dataset's
shuffle_idx, so the position in the data is just a batch counter, and resuming
at step ``s`` continues with batch ``s * grad_acc``.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from llmpre.data import DataSpec, build_datasets, open_corpus, parse_data_spec
from llmpre.errors import ConfigError


def resolve_data(spec: str | None) -> DataSpec:
    """What ``input_dir`` names: one corpus, a directory of corpora (equal
    weights when it holds several) or ``"w1 prefix1 w2 prefix2 ..."``; the
    bundled corpus when unset."""
    if spec is None:
        from llmpre.data.default import default_corpus_prefix

        return DataSpec((default_corpus_prefix(),))
    return parse_data_spec(spec, what="input_dir")


def resolve_data_prefix(spec: str | None) -> str:
    """The corpus prefix for ``input_dir`` when it names a single corpus."""
    data = resolve_data(spec)
    if data.is_blend:
        raise ConfigError(f"input_dir '{spec}' names a blend of {len(data.prefixes)} corpora, "
                          "not one prefix")
    return data.prefixes[0]


def check_vocab(corpora: dict, vocab_size: int) -> None:
    """Every token id must index the model's embedding: checked before training."""
    for prefix, corpus in corpora.items():
        biggest = corpus.max_token()
        if biggest >= vocab_size:
            raise ConfigError(
                f"corpus {prefix} holds token id {biggest}, but the model's vocabulary has "
                f"{vocab_size} entries; use the tokenizer the corpus was made with (set "
                "tokenizer_name_or_path) or a model with a larger vocab_size")


def requested_samples(args, world: int = 1) -> list[int]:
    eval_batches = args.eval_iters * (args.max_steps // args.effective_eval_steps + 1)
    return [
        args.per_device_train_batch_size * world * args.max_steps * args.gradient_accumulation_steps,
        args.per_device_eval_batch_size * world * eval_batches if args.do_eval else 0,
        args.per_device_eval_batch_size * world * args.eval_iters * 10 if args.do_predict else 0,
    ]


class BatchReader:
    """Batch ``k`` of one split for rank ``rank`` of ``world``, as int64 tokens
    ``[batch, seq_length + 1]``; optionally prefetched by background threads."""

    def __init__(self, dataset, batch_size: int, world: int = 1, rank: int = 0):
        self.dataset, self.batch_size, self.world, self.rank = dataset, batch_size, world, rank

    def num_batches(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world)

    def batch(self, k: int) -> np.ndarray:
        start = (k * self.world + self.rank) * self.batch_size
        return self.dataset.gather(np.arange(start, start + self.batch_size, dtype=np.int64))

    def iterate(self, first: int, count: int, workers: int = 0):
        """Batches ``first .. first+count-1`` in order."""
        if workers <= 0:
            for k in range(first, first + count):
                yield self.batch(k)
            return
        yield from _prefetch(self.batch, range(first, first + count), workers)


def _prefetch(fn, ks, workers: int, depth: int = 4):
    """Ordered ``fn(k)`` for ``ks``, computed up to ``depth`` ahead by ``workers``
    threads (the C++ gather releases the GIL)."""
    it = iter(ks)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmpre-data") as pool:
        pending = deque(pool.submit(fn, k) for k in itertools.islice(it, depth))
        while pending:
            future = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield future.result()


class TrainData:
    """The datasets of a run and readers over them."""

    def __init__(self, args, vocab_size: int, world: int = 1, rank: int = 0):
        self.spec = resolve_data(args.input_dir)
        self.prefix = self.spec.describe()
        corpora = {p: open_corpus(p) for p in self.spec.prefixes}
        check_vocab(corpora, vocab_size)
        self.num_samples = requested_samples(args, world)
        data_cache = args.data_cache
        if args.input_dir is None and data_cache is None:
            # The bundled corpus may sit in a read-only site-packages: index it in the run dir.
            data_cache = os.path.join(args.output_dir, "index-cache")
        self.datasets = build_datasets(self.spec, args.split, self.num_samples,
                                       args.max_seq_length, args.seed, data_cache=data_cache,
                                       share_folder=args.share_folder, corpora=corpora)
        if self.datasets["train"] is None:
            raise ConfigError(f"split '{args.split}' leaves the train split of {self.prefix} "
                              "empty; give train a positive share")
        for name, wanted in (("valid", args.do_eval), ("test", args.do_predict)):
            if wanted and self.datasets[name] is None:
                flag = "do_eval" if name == "valid" else "do_predict"
                raise ConfigError(f"{flag} is set but split '{args.split}' leaves the {name} "
                                  f"split of {self.prefix} empty; change split or unset {flag}")
        self.train = BatchReader(self.datasets["train"], args.per_device_train_batch_size, world, rank)
        self.valid = (BatchReader(self.datasets["valid"], args.per_device_eval_batch_size, world, rank)
                      if self.datasets["valid"] is not None else None)
        self.test = (BatchReader(self.datasets["test"], args.per_device_eval_batch_size, world, rank)
                     if self.datasets["test"] is not None else None)
