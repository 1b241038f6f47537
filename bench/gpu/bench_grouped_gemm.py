"""Benchmark of the grouped bf16 GEMM (cuda/grouped_gemm) against cuBLAS through PyTorch.

The goal (issue 14 item 3): the grouped GEMM at >= 70% of the TFLOP/s of one dense bf16
GEMM of the same total FLOPs (``torch.matmul`` of ``[rows, k] x [k, n]``, cuBLAS),
measured in the same run. Also timed: the per-expert loop a framework without a
grouped GEMM runs (one ``torch.matmul`` per expert on its slice). Shapes: MoE layers'
expert projections (Mixtral-8x7B gate/up and down at 4096 tokens x top-2; DeepSeek-V3
with 64 local experts at 8192 tokens x top-8, balanced and skewed routing).
FLOPs = 2 * rows * n * k (dropped rows excluded). Times are medians of CUDA-event
timings after warm-up, each after an L2 flush. Writes <out>/bench_grouped_gemm.{json,md}.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

# (name, experts, rows, n, k, routing): routing "balanced" or "skewed" (Zipf-like counts)
SHAPES = [
    ("mixtral gate/up", 8, 8192, 14336, 4096, "balanced"),
    ("mixtral down", 8, 8192, 4096, 14336, "balanced"),
    ("dsv3 gate/up, 64 local experts", 64, 65536, 2048, 7168, "balanced"),
    ("dsv3 down, 64 local experts", 64, 65536, 7168, 2048, "balanced"),
    ("dsv3 gate/up, skewed routing", 64, 65536, 2048, 7168, "skewed"),
]


def counts_for(rng, experts: int, rows: int, routing: str) -> np.ndarray:
    if routing == "balanced":
        weights = np.ones(experts)
    else:
        weights = 1.0 / np.arange(1, experts + 1) ** 0.8
        rng.shuffle(weights)
    counts = np.floor(rows * weights / weights.sum()).astype(np.int64)
    counts[0] += rows - counts.sum()
    return counts


def run(out_dir: str) -> dict:
    cu = H.cuda_module()
    if not hasattr(cu, "grouped_gemm_bf16"):
        return {"error": "llmpre._cuda was built without the grouped GEMM (no CUTLASS headers)"}
    torch, why = H.torch_or_reason()
    device = cu.device_name(0)
    rng = np.random.default_rng(0)
    rows_out = []
    for name, experts, rows, n, k, routing in SHAPES:
        counts = counts_for(rng, experts, rows, routing)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        a = H.DeviceBuffer.of(cu, H.to_bf16(rng.standard_normal((rows, k)).astype(np.float32)))
        bs = [H.DeviceBuffer.of(cu, H.to_bf16((rng.standard_normal((k, n)) * 0.02).astype(np.float32)))
              for _ in range(experts)]
        ptrs = H.DeviceBuffer.of(cu, np.array([b.ptr for b in bs], dtype=np.uint64))
        c = H.DeviceBuffer(cu, (rows, n), np.uint16)
        doff = H.DeviceBuffer.of(cu, offsets)
        ws_bytes = cu.grouped_gemm_workspace_bytes(experts)
        ws = H.DeviceBuffer(cu, (ws_bytes,), np.uint8)
        try:
            ms = H.time_ms(cu, lambda: cu.grouped_gemm_bf16(a.ptr, ptrs.ptr, c.ptr, doff.ptr, ws.ptr, ws_bytes,
                                                            rows, n, k, experts))
        finally:
            for buf in bs + [a, ptrs, c, doff, ws]:
                buf.free()
        flops = 2.0 * rows * n * k
        row = {"shape": name, "experts": experts, "rows": rows, "n": n, "k": k, "routing": routing,
               "ms": ms, "tflops": flops / ms / 1e9}
        if torch:
            ta = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            tb = torch.randn(k, n, device="cuda", dtype=torch.bfloat16) * 0.02
            dense = H.time_ms(cu, lambda: torch.matmul(ta, tb))
            tbs = [torch.randn(k, n, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(experts)]
            bounds = offsets.tolist()

            def loop():
                for e in range(experts):
                    if bounds[e + 1] > bounds[e]:
                        torch.matmul(ta[bounds[e]:bounds[e + 1]], tbs[e])

            looped = H.time_ms(cu, loop)
            row.update(dense_ms=dense, dense_tflops=flops / dense / 1e9, pct_of_dense=100.0 * dense / ms,
                       loop_ms=looped, vs_loop=looped / ms)
            del ta, tb, tbs
        rows_out.append(row)
        print(row, flush=True)
    torch_note = (f"PyTorch {torch.__version__} (cuBLAS) dense matmul and per-expert loop" if torch
                  else f"No PyTorch baseline: {why}")

    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    table = H.markdown_table(
        ["shape", "experts", "rows x n x k", "routing", "ms", "TFLOP/s", "dense cuBLAS TFLOP/s", "% of dense",
         "per-expert loop ms", "vs loop"],
        [[r["shape"], r["experts"], f"{r['rows']}x{r['n']}x{r['k']}", r["routing"], f(r["ms"], ".3f"),
          f(r["tflops"], ".0f"), f(r.get("dense_tflops"), ".0f"), f(r.get("pct_of_dense"), ".0f"),
          f(r.get("loop_ms"), ".3f"), "n/a" if r.get("vs_loop") is None else f"{r['vs_loop']:.2f}x"]
         for r in rows_out])
    md = f"### Grouped bf16 GEMM (cuda/grouped_gemm)\n\n{device}. {torch_note}.\n\n{table}"
    result = {"device": device, "torch": torch_note, "rows": rows_out, "markdown": md}
    H.write_json(os.path.join(out_dir, "bench_grouped_gemm.json"), result)
    H.write_text(os.path.join(out_dir, "bench_grouped_gemm.md"), md)
    return result


if __name__ == "__main__":
    print(run(os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "out")))["markdown"])
