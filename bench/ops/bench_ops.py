"""llmpre's fused CPU ops against Paddle's composed ops (llmpre.ops.reference), forward + backward.

    python bench/ops/bench_ops.py                    # all ops, OMP_NUM_THREADS=2
    python bench/ops/bench_ops.py --threads 1 --ops rms_norm,cross_entropy --json out.json

For every op and shape: verify first (outputs and gradients of the fused op
agree with the reference within fp32 tolerance), then time one forward +
backward (``paddle.grad`` with a fixed upstream gradient) of each, alternating
fused and composed calls so that background load hits both alike, and report
the median times and their ratio measured in the same run. "GB/s" is the
fused op's minimum memory traffic (every input read once, every output and
gradient written once, forward + backward) over its time. Flash attention is
benchmarked separately (bench/ops/bench_attention.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time



def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for Paddle and the kernels")
    p.add_argument("--ops", default="rms_norm,rotary,swiglu,cross_entropy")
    p.add_argument("--reps", type=int, default=15, help="timed calls of each implementation")
    p.add_argument("--quick", action="store_true", help="only the end-to-end model's shapes")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


def load_average() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def main():
    args = parse_args()
    from llmpre.runtime import configure_threads, import_paddle

    configure_threads(args.threads)
    paddle = import_paddle()

    import llmpre.ops as ops
    from llmpre.ops import fused, reference

    st = ops.status()
    missing = [op for op in ("llmpre_rms_norm", "llmpre_rotary", "llmpre_swiglu", "llmpre_cross_entropy")
               if op not in st["ops"]]
    if missing:
        sys.exit(f"bench_ops: this build lacks {missing}: {st['unavailable']}")
    paddle.seed(0)

    def leaf(shape, scale=1.0):
        t = paddle.randn(shape) * scale
        t.stop_gradient = False
        return t

    def rope_tables(positions, rot):
        inv = 1.0 / (10000.0 ** (paddle.arange(0, rot, 2, dtype="float32") / rot))
        ang = paddle.arange(positions, dtype="float32").unsqueeze(1) * inv.unsqueeze(0)
        return ang.cos(), ang.sin()

    cases = []  # (op, shape label, fused fn, reference fn, differentiable inputs, bytes moved by fused)

    def add_rms(rows, hidden):
        x, w = leaf([rows, hidden]), leaf([hidden])
        cases.append(("rms_norm", f"x [{rows}, {hidden}]", lambda: fused.rms_norm(x, w, 1e-6),
                      lambda: reference.rms_norm(x, w, 1e-6), [x, w],
                      4 * (2 * rows * hidden + hidden + 3 * rows * hidden + hidden)))

    def add_rope(b, s, h, kv, d):
        q, k = leaf([b, s, h, d]), leaf([b, s, kv, d])
        cos, sin = rope_tables(max(2048, s), d)
        n = b * s * (h + kv) * d
        cases.append(("rotary", f"q [{b}, {s}, {h}, {d}] kv_heads {kv}", lambda: fused.rotary(q, k, cos, sin),
                      lambda: reference.rotary(q, k, cos, sin), [q, k], 4 * 4 * n))

    def add_swiglu(rows, inter):
        g, u = leaf([rows, inter], 2.0), leaf([rows, inter])
        n = rows * inter
        cases.append(("swiglu", f"gate [{rows}, {inter}]", lambda: fused.swiglu(g, u),
                      lambda: reference.swiglu(g, u), [g, u], 4 * (3 * n + 5 * n)))

    def add_ce(rows, vocab):
        logits = leaf([rows, vocab], 2.0)
        labels = paddle.randint(0, vocab, [rows])
        n = rows * vocab
        cases.append(("cross_entropy", f"logits [{rows}, {vocab}]",
                      lambda: fused.cross_entropy(logits, labels),
                      lambda: reference.cross_entropy(logits, labels), [logits], 4 * 3 * n))

    wanted = set(args.ops.split(","))
    # the end-to-end model (hidden 256, 4 heads x 64, intermediate 688, vocab 32000, batch 4 x 256)
    if "rms_norm" in wanted:
        add_rms(1024, 256)
        if not args.quick:
            add_rms(2048, 4096)
            add_rms(16, 16384)
    if "rotary" in wanted:
        add_rope(4, 256, 4, 4, 64)
        if not args.quick:
            add_rope(1, 2048, 32, 8, 128)
    if "swiglu" in wanted:
        add_swiglu(1024, 688)
        if not args.quick:
            add_swiglu(1024, 11008)
    if "cross_entropy" in wanted:
        add_ce(1024, 32000)
        if not args.quick:
            add_ce(128, 151936)

    def fwd_bwd(fn, inputs, upstream):
        out = fn()
        out = out if isinstance(out, tuple) else (out,)
        if upstream[0] is None:
            upstream[0] = [paddle.randn(o.shape).astype(o.dtype) for o in out]
        return out, paddle.grad(list(out), inputs, upstream[0])

    print(f"llmpre fused CPU ops vs Paddle composed ops: {args.threads} threads, cpu_isa {st['cpu_isa']}, "
          f"Paddle {paddle.__version__}, load average at start {load_average()}")
    print(f"{'op':14s} {'shape':32s} {'fused ms':>9s} {'composed ms':>12s} {'ratio':>7s} {'fused GB/s':>11s}")
    results = []
    for op, label, fused_fn, ref_fn, inputs, nbytes in cases:
        upstream = [None]
        got, got_g = fwd_bwd(fused_fn, inputs, upstream)
        want, want_g = fwd_bwd(ref_fn, inputs, upstream)
        for a, b in zip(list(got) + list(got_g), list(want) + list(want_g)):
            scale = max(1e-30, float(b.abs().max()))
            err = float((a - b).abs().max()) / scale
            if not err < 1e-4:
                sys.exit(f"bench_ops: {op} {label}: fused and composed differ (relative error {err:.2e})")
        times = {"fused": [], "composed": []}
        for _ in range(3):  # warm-up
            fwd_bwd(fused_fn, inputs, upstream)
            fwd_bwd(ref_fn, inputs, upstream)
        for _ in range(args.reps):
            for name, fn in (("fused", fused_fn), ("composed", ref_fn)):
                t0 = time.perf_counter()
                fwd_bwd(fn, inputs, upstream)
                times[name].append(time.perf_counter() - t0)
        tf, tr = statistics.median(times["fused"]), statistics.median(times["composed"])
        row = {"op": op, "shape": label, "fused_ms": round(tf * 1e3, 3), "composed_ms": round(tr * 1e3, 3),
               "ratio": round(tr / tf, 2), "fused_gb_s": round(nbytes / tf / 1e9, 1)}
        results.append(row)
        print(f"{op:14s} {label:32s} {row['fused_ms']:9.3f} {row['composed_ms']:12.3f} "
              f"{row['ratio']:6.2f}x {row['fused_gb_s']:11.1f}")
        del got, got_g, want, want_g
    print(f"load average at end {load_average()}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"threads": args.threads, "cpu_isa": st["cpu_isa"], "paddle": paddle.__version__,
                       "results": results}, fh, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
