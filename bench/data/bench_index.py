"""llmpre's GPT index build against PaddleNLP's, on synthetic corpora.

    .venv/bin/python bench/data/bench_index.py [--docs 1M,10M,40M] [--seq-length 2048]
        [--baseline-python /work/benchvenv/bin/python] [--workdir DIR] [--repeat 2]

For each corpus size: writes a synthetic ``.idx`` (document lengths
``RandomState(2026).randint(50, 1000)``, one item per document) and a sparse
``.bin`` of the right length (index building never reads tokens), then builds
the train index for one epoch's worth of samples (``(tokens-1)//seq_length``)
both ways:

* PaddleNLP: ``paddlenlp_path.py`` in a separate venv holding numpy and PyPI's
  ``fast-dataindex`` (the compiled helpers PaddleNLP imports), never a project
  dependency: create it with
  ``python -m venv /work/benchvenv && /work/benchvenv/bin/pip install numpy fast-dataindex``;
* llmpre: ``llmpre.data.open_corpus`` + ``llmpre._core.build_gpt_index``.

Verifies first (the three arrays must be equal, dtype and shape included),
then reports the best of ``--repeat`` timings of each, the phase breakdown and
the speed-up. "build" is from an opened corpus to the three arrays in memory;
"open" is opening the corpus (llmpre checks every item, PaddleNLP maps lazily).
llmpre's phases: "draws+shuffle_idx" is when the generator thread finished (the
random draws for doc_idx, then all of shuffle_idx), "doc_idx" when the doc_idx
swaps finished (both from the start), "sample_idx" the parallel fill after.
Nothing is written to the index cache. Needs ~1.5 GB of RAM and 1 GB of disk
at 40M documents.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_count(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def write_synthetic(prefix: str, num_docs: int) -> int:
    """A corpus of `num_docs` one-item documents; returns its token count."""
    sizes = np.random.RandomState(2026).randint(50, 1000, num_docs).astype(np.int32)
    tokens = int(sizes.sum(dtype=np.int64))
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, num_docs, num_docs + 1))
        f.write(sizes.tobytes())
        pointers = np.zeros(num_docs, dtype=np.int64)
        np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= 2
        f.write(pointers.tobytes())
        del pointers
        f.write(np.arange(num_docs + 1, dtype=np.int64).tobytes())
    with open(prefix + ".bin", "wb") as f:
        f.truncate(tokens * 2)  # sparse: uint16 tokens that are never read
    return tokens


def run_paddlenlp(python: str, prefix: str, num_samples: int, seq: int, seed: int,
                  out_dir: str) -> dict:
    proc = subprocess.run([python, os.path.join(HERE, "paddlenlp_path.py"), prefix,
                           str(num_samples), str(seq), str(seed), out_dir],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"PaddleNLP path failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_llmpre(prefix: str, num_samples: int, seq: int, seed: int, threads: int):
    from llmpre import _core
    from llmpre.data import open_corpus

    t0 = time.perf_counter()
    corpus = open_corpus(prefix)
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    built = _core.build_gpt_index(corpus, 0, corpus.num_items, num_samples, seq, seed, threads)
    t_build = time.perf_counter() - t0
    phases = {f"phase {k}": v for k, v in built["timings"].items()}
    return {"open": t_open, "build": t_build, **phases}, built


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", default="1M,10M,40M")
    ap.add_argument("--seq-length", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=0, help="llmpre threads (0: all cores)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--baseline-python", default="/work/benchvenv/bin/python")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if not os.path.exists(args.baseline_python):
        sys.exit(f"{args.baseline_python}: no benchmark venv; see this script's docstring")

    work = args.workdir or tempfile.mkdtemp(prefix="llmpre-bench-index-")
    os.makedirs(work, exist_ok=True)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               "load_before": os.getloadavg(), "seq_length": args.seq_length, "rows": []}
    try:
        for count in [parse_count(c) for c in args.docs.split(",")]:
            prefix = os.path.join(work, f"synthetic_{count}")
            tokens = write_synthetic(prefix, count)
            num_samples = (tokens - 1) // args.seq_length
            np.fromfile(prefix + ".idx", dtype=np.uint8).sum()  # warm the page cache

            best_p, best_l = None, None
            for rep in range(args.repeat):
                out_dir = tempfile.mkdtemp(dir=work)
                p = run_paddlenlp(args.baseline_python, prefix, num_samples, args.seq_length,
                                  args.seed, out_dir)
                t_l, built = run_llmpre(prefix, num_samples, args.seq_length, args.seed,
                                        args.threads)
                if rep == 0:  # verify before trusting any timing
                    for key in ("doc_idx", "sample_idx", "shuffle_idx"):
                        ref = np.load(os.path.join(out_dir, f"paddlenlp_{key}.npy"), mmap_mode="r")
                        ours = built[key]
                        if ref.dtype != ours.dtype or ref.shape != ours.shape or not np.array_equal(ref, ours):
                            sys.exit(f"{count} docs: {key} differs from PaddleNLP's "
                                     f"({ref.dtype}{ref.shape} vs {ours.dtype}{ours.shape})")
                del built
                shutil.rmtree(out_dir)
                if best_p is None or p["timings"]["build"] < best_p["timings"]["build"]:
                    best_p = p
                if best_l is None or t_l["build"] < best_l["build"]:
                    best_l = t_l
            tp = best_p["timings"]
            row = {
                "docs": count, "tokens": tokens, "samples": num_samples,
                "epochs": best_p["epochs"],
                "paddlenlp": {k: round(v, 4) for k, v in tp.items()},
                "llmpre": {k: round(v, 4) for k, v in best_l.items()},
                "speedup_build": round(tp["build"] / best_l["build"], 2),
                "speedup_open_build": round((tp["open"] + tp["build"]) /
                                            (best_l["open"] + best_l["build"]), 2),
            }
            results["rows"].append(row)
            print(f"{count:>11,d} docs {tokens / 1e9:6.2f}B tok {num_samples:>11,d} samples | "
                  f"PaddleNLP build {tp['build']:7.3f}s (doc {tp['doc_idx']:.3f} sample "
                  f"{tp['sample_idx']:.3f} shuffle {tp['shuffle_idx']:.3f}) | llmpre build "
                  f"{best_l['build']:7.3f}s (draws+shuffle_idx {best_l['phase draws+shuffle_idx']:.3f} "
                  f"doc {best_l['phase doc_idx']:.3f} sample {best_l['phase sample_idx']:.3f}) "
                  f"open {best_l['open']:.3f}s | "
                  f"x{row['speedup_build']:.2f} (open+build x{row['speedup_open_build']:.2f})  "
                  "arrays equal", flush=True)
            for suffix in (".idx", ".bin"):
                os.unlink(prefix + suffix)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
