"""Preprocessing throughput: `llmpre data preprocess` with 1 and 2 workers
against a plain single-process loop using the same tokenizer.

    .venv/bin/python bench/data/bench_preprocess.py [--mb 4] [--repeat 3] [--tokenizer tokenizer.json]

Input: English prose (the bundled Jane Austen corpus decoded back to text),
repeated to about ``--mb`` MB of JSON lines. The plain loop reads each line,
``json.loads`` it, strips the text, tokenizes it (HF ``tokenizers``, no
special tokens, one call per document) and appends the ids to a uint16 file;
that is the floor any preprocessor pays. Both sides must produce the same
token stream (checked), then MB/s of input JSON and documents/s are reported,
best of ``--repeat``, with the CPU seconds used (this process and the worker
processes): on a busy machine wall-clock MB/s depends on free cores, MB per
CPU-second does not. ``TOKENIZERS_PARALLELISM=false`` everywhere so one worker
is one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"

import numpy as np  # noqa: E402


def make_input(path: str, megabytes: float, tokenizer_path: str) -> int:
    from tokenizers import Tokenizer

    from llmpre.data import open_corpus
    from llmpre.data.default import default_corpus_prefix

    tok = Tokenizer.from_file(tokenizer_path)
    corpus = open_corpus(default_corpus_prefix())
    lines = []
    for d in range(corpus.num_docs):
        ids = corpus.read(d).tolist()
        text = tok.decode(ids, skip_special_tokens=True)
        lines.append(json.dumps({"text": text, "id": d}) + "\n")
    with open(path, "wb") as f:
        written, k = 0, 0
        while written < megabytes * 2**20:
            line = lines[k % len(lines)].encode("utf-8")
            f.write(line)
            written += len(line)
            k += 1
    return os.path.getsize(path)


def plain_loop(src: str, out: str, tokenizer_path: str) -> int:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    docs = 0
    with open(src, "rb") as f, open(out, "wb") as o:
        for line in f:
            text = json.loads(line)["text"].strip()
            ids = tok.encode(text, add_special_tokens=False).ids
            np.asarray(ids, dtype=np.uint16).tofile(o)
            docs += 1
    return docs


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (the workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    from llmpre.data import open_corpus
    from llmpre.data.default import default_tokenizer_path
    from llmpre.data.preprocess import preprocess

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--tokenizer", default=default_tokenizer_path())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="llmpre-bench-pre-")
    try:
        src = os.path.join(work, "input.jsonl")
        nbytes = make_input(src, args.mb, args.tokenizer)
        open(src, "rb").read()  # warm the page cache
        results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                   "input_bytes": nbytes, "load_before": os.getloadavg(), "runs": {}}
        timings: dict[str, float] = {}
        cpu: dict[str, float] = {}
        docs = 0

        def record(key, t0, c0):
            wall, used = time.perf_counter() - t0, cpu_seconds() - c0
            if wall < timings.get(key, 1e9):
                timings[key], cpu[key] = wall, used

        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), cpu_seconds()
            docs = plain_loop(src, os.path.join(work, "plain.bin"), args.tokenizer)
            record("plain loop", t0, c0)
            for workers in (1, 2):
                prefix = os.path.join(work, f"w{workers}")
                t0, c0 = time.perf_counter(), cpu_seconds()
                stats = preprocess(src, args.tokenizer, prefix, workers=workers, progress=False)
                record(f"llmpre workers={workers}", t0, c0)
                assert stats.documents == docs
        plain = np.fromfile(os.path.join(work, "plain.bin"), dtype=np.uint16)
        for workers in (1, 2):
            c = open_corpus(os.path.join(work, f"w{workers}"))
            tokens = np.memmap(os.path.join(work, f"w{workers}.bin"), dtype=np.uint16, mode="r")
            if c.num_docs != docs or not np.array_equal(tokens, plain):
                sys.exit(f"workers={workers}: the corpus differs from the plain loop's tokens")
        print(f"input {nbytes / 2**20:.1f} MB, {docs} documents, tokens equal across all runs")
        for key, t in timings.items():
            mbs = nbytes / t / 2**20
            per_cpu = nbytes / max(cpu[key], 1e-9) / 2**20
            results["runs"][key] = {"seconds": round(t, 3), "MB_per_s": round(mbs, 3),
                                    "docs_per_s": round(docs / t, 1), "cpu_seconds": round(cpu[key], 3),
                                    "MB_per_cpu_s": round(per_cpu, 3)}
            print(f"  {key:20s} {t:7.2f} s  {mbs:6.2f} MB/s  {docs / t:8.1f} docs/s  "
                  f"x{timings['plain loop'] / t:.2f} vs plain loop | CPU {cpu[key]:6.2f} s, "
                  f"{per_cpu:.2f} MB per CPU-second")
        results["load_after"] = os.getloadavg()
        print(f"load average before {results['load_before']}, after {results['load_after']}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
