"""llmpre's CPU flash attention (llmpre_flash_attention) against Paddle's composed
attention (llmpre.ops.reference.attention_math: matmul + softmax + matmul),
forward + backward.

    python bench/ops/bench_attention.py                         # seq 512/1024/2048, 8k tokens, 2 threads
    python bench/ops/bench_attention.py --seqs 1024 --no-causal --kv-heads 2 --json out.json

For every sequence length (batch = tokens // seq): verify first (the output and
dq, dk, dv of both agree within fp32 tolerance), then time one forward +
backward (``paddle.grad`` with a fixed upstream gradient) of each, alternating
the two so that background load hits both alike, and report medians and their
ratio measured in the same run. "GFLOP/s" counts the attention matmuls the
flash kernel does (forward 2, backward 5 per visible query-key pair).

Memory: each (implementation, seq) pair runs once more in a fresh subprocess
that allocates its inputs, resets the peak-RSS counter (/proc/self/clear_refs)
and reports the peak resident memory above that point over two forward +
backward calls: everything the op and its gradient allocate, outputs included.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqs", default="512,1024,2048", help="comma-separated sequence lengths")
    p.add_argument("--tokens", type=int, default=8192, help="batch * seq for every case")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--no-causal", dest="causal", action="store_false")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for Paddle and the kernel")
    p.add_argument("--reps", type=int, default=3, help="timed calls of each implementation per case")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the RSS subprocesses")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--memory-worker", nargs=2, metavar=("IMPL", "SEQ"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.kv_heads = args.kv_heads or args.heads
    return args


def load_average() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.M).group(1))


def setup(args, seq):
    """Paddle, the two implementations and the inputs of one case."""
    from llmpre.runtime import configure_threads, import_paddle

    configure_threads(args.threads)
    paddle = import_paddle()
    import llmpre.ops as ops
    from llmpre.ops import reference

    if not ops.available("llmpre_flash_attention"):
        sys.exit(f"bench_attention: this build lacks llmpre_flash_attention: {ops.status()['unavailable']}")
    paddle.seed(seq)
    batch = max(1, args.tokens // seq)

    def leaf(*shape):
        t = paddle.randn(list(shape))
        t.stop_gradient = False
        return t

    q = leaf(batch, seq, args.heads, args.head_dim)
    k = leaf(batch, seq, args.kv_heads, args.head_dim)
    v = leaf(batch, seq, args.kv_heads, args.head_dim)
    dout = paddle.randn(q.shape)
    impls = {
        "flash": lambda: ops.flash_attention(q, k, v, causal=args.causal),
        "composed": lambda: reference.attention_math(q, k, v, causal=args.causal),
    }

    def fwd_bwd(name):
        out = impls[name]()
        return [out, *paddle.grad([out], [q, k, v], [dout])]

    return paddle, ops, batch, fwd_bwd


def memory_worker(args, impl, seq):
    paddle, _, _, fwd_bwd = setup(args, seq)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    base = _status_kb("VmRSS")
    for _ in range(2):
        res = fwd_bwd(impl)
        del res
    print(json.dumps({"peak_mb": round((_status_kb("VmHWM") - base) / 1024, 1)}))


def measure_memory(args, impl, seq):
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", impl, str(seq),
           "--tokens", str(args.tokens), "--heads", str(args.heads), "--kv-heads", str(args.kv_heads),
           "--head-dim", str(args.head_dim), "--threads", str(args.threads)]
    if not args.causal:
        cmd.append("--no-causal")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"bench_attention: memory run {impl} seq {seq} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


def main():
    args = parse_args()
    if args.memory_worker:
        memory_worker(args, args.memory_worker[0], int(args.memory_worker[1]))
        return
    seqs = [int(s) for s in args.seqs.split(",")]
    results = []
    header = None
    for seq in seqs:
        paddle, ops, batch, fwd_bwd = setup(args, seq)
        if header is None:
            header = (f"CPU flash attention vs composed attention_math: {args.threads} threads, cpu_isa "
                      f"{ops.status()['cpu_isa']}, Paddle {paddle.__version__}, MKL_DEBUG_CPU_TYPE="
                      f"{os.environ.get('MKL_DEBUG_CPU_TYPE', 'unset')}, heads {args.heads}/{args.kv_heads}, "
                      f"head_dim {args.head_dim}, {'causal' if args.causal else 'non-causal'}, fp32, "
                      f"load average at start {load_average()}")
            print(header)
            print(f"{'seq':>5s} {'batch':>5s} {'flash ms':>9s} {'composed ms':>12s} {'speedup':>8s} "
                  f"{'flash GF/s':>10s} {'flash MB':>9s} {'composed MB':>12s} {'mem ratio':>9s}")
        got, want = fwd_bwd("flash"), fwd_bwd("composed")
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
            err = float((a - b).abs().max()) / max(1e-30, float(b.abs().max()))
            if not err < 1e-4:
                sys.exit(f"bench_attention: seq {seq}: flash and composed {name} differ (relative {err:.2e})")
        del got, want
        times = {"flash": [], "composed": []}
        for _ in range(args.reps):
            for name in ("flash", "composed"):
                t0 = time.perf_counter()
                res = fwd_bwd(name)
                times[name].append(time.perf_counter() - t0)
                del res
        tf, tc = statistics.median(times["flash"]), statistics.median(times["composed"])
        pairs = batch * args.heads * (seq * (seq + 1) / 2 if args.causal else seq * seq)
        flops = 2 * args.head_dim * pairs * (2 + 5)
        row = {"seq": seq, "batch": batch, "flash_ms": round(tf * 1e3, 1), "composed_ms": round(tc * 1e3, 1),
               "speedup": round(tc / tf, 2), "flash_gflops": round(flops / tf / 1e9, 1)}
        del fwd_bwd
        if args.memory:
            row["flash_mb"] = measure_memory(args, "flash", seq)
            row["composed_mb"] = measure_memory(args, "composed", seq)
            row["memory_ratio"] = round(row["composed_mb"] / max(row["flash_mb"], 0.1), 1)
        results.append(row)
        mem = (f"{row['flash_mb']:9.1f} {row['composed_mb']:12.1f} {row['memory_ratio']:8.1f}x"
               if args.memory else "")
        print(f"{seq:5d} {batch:5d} {row['flash_ms']:9.1f} {row['composed_ms']:12.1f} {row['speedup']:7.2f}x "
              f"{row['flash_gflops']:10.1f} {mem}", flush=True)
    print(f"load average at end {load_average()}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"header": header, "args": vars(args), "results": results}, fh, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
