"""Benchmark of the grouped expert MLP (cuda/grouped_mlp: what llmpre_grouped_mlp runs on a
GPU), forward + backward, against PyTorch in the same run.

For an MoE layer's routed rows (tokens x top-k, gathered through the routing index), one
forward and one backward: 3 + 6 grouped GEMMs plus the gather, SwiGLU and the per-token sums.
FLOPs = 18 * rows * hidden * inter (dropped rows excluded). Baselines, on the same shapes:
- ``dense``: cuBLAS's TFLOP/s on one ``[rows, hidden] x [hidden, inter]`` bf16 matmul (the
  ceiling the grouped GEMMs aim at; issue 14's goal for the GEMM alone is >= 70% of it);
- ``loop``: the per-expert loop a framework without grouped kernels runs (index the expert's
  rows, three ``torch.matmul`` and ``silu`` per expert, autograd backward), in bf16.
Times are medians of CUDA-event timings after warm-up, each after an L2 flush. Writes
<out>/bench_grouped_mlp.{json,md}.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from bench_grouped_gemm import counts_for  # noqa: E402

# (name, experts, tokens, top_k, hidden, inter, routing)
SHAPES = [
    ("mixtral 8x7B, 4096 tokens top-2", 8, 4096, 2, 4096, 14336, "balanced"),
    ("dsv3, 64 local experts, 2048 tokens top-8", 64, 2048, 8, 7168, 2048, "balanced"),
    ("dsv3, 64 local experts, skewed routing", 64, 2048, 8, 7168, 2048, "skewed"),
    ("qwen2-moe 57B, 64 experts, 4096 tokens top-8", 64, 4096, 8, 3584, 2560, "balanced"),
]


def routing(rng, experts: int, tokens: int, top_k: int, kind: str):
    """index [rows] (each row's token, rows sorted by expert), offsets [E + 1], and the stable
    sort of index the backward takes (sorted, perm)."""
    rows = tokens * top_k
    counts = counts_for(rng, experts, rows, kind)
    expert_of_row = np.repeat(np.arange(experts), counts)
    pair_expert = rng.permutation(expert_of_row)               # each (token, slot) pair's expert
    order = np.argsort(pair_expert, kind="stable")
    index = (order // top_k).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    perm = np.argsort(index, kind="stable").astype(np.int64)
    return index, offsets, index[perm].copy(), perm


def time_llmpre(cu, experts, tokens, rows, hidden, inter, index, offsets, sorted_, perm, rng):
    bufs = []

    def dev(arr):
        buf = H.DeviceBuffer.of(cu, arr)
        bufs.append(buf)
        return buf

    def empty(shape):
        buf = H.DeviceBuffer(cu, shape, np.uint16)
        bufs.append(buf)
        return buf

    def weights(shape, scale):
        return [dev(H.to_bf16((rng.standard_normal(shape) * scale).astype(np.float32))) for _ in range(experts)]

    try:
        x = dev(H.to_bf16(rng.standard_normal((tokens, hidden)).astype(np.float32)))
        dout = dev(H.to_bf16(rng.standard_normal((rows, hidden)).astype(np.float32)))
        wg, wu = weights((hidden, inter), 0.02), weights((hidden, inter), 0.02)
        wd = weights((inter, hidden), 0.02)
        dwg, dwu, dwd = ([empty(w.shape) for w in ws] for ws in (wg, wu, wd))
        ptr = [dev(np.array([b.ptr for b in ws], dtype=np.uint64)) for ws in (wg, wu, wd, dwg, dwu, dwd)]
        di, ds, dp, doff = dev(index), dev(sorted_), dev(perm), dev(offsets)
        out, gate, up, dx = empty((rows, hidden)), empty((rows, inter)), empty((rows, inter)), empty((tokens, hidden))
        nbytes = max(cu.grouped_mlp_workspace_bytes(tokens, rows, hidden, inter, experts, True, b) for b in (False, True))
        work = H.DeviceBuffer(cu, (nbytes,), np.uint8)
        bufs.append(work)

        def step():
            cu.grouped_mlp_forward(x.ptr, di.ptr, doff.ptr, ptr[0].ptr, ptr[1].ptr, ptr[2].ptr, out.ptr, gate.ptr,
                                   up.ptr, work.ptr, nbytes, tokens, rows, hidden, inter, experts)
            cu.grouped_mlp_backward(x.ptr, di.ptr, ds.ptr, dp.ptr, doff.ptr, ptr[0].ptr, ptr[1].ptr, ptr[2].ptr,
                                    gate.ptr, up.ptr, dout.ptr, dx.ptr, ptr[3].ptr, ptr[4].ptr, ptr[5].ptr, work.ptr,
                                    nbytes, tokens, rows, hidden, inter, experts)

        return H.time_ms(cu, step, warmup=3, iters=10)
    finally:
        for buf in bufs:
            buf.free()


def time_torch(torch, cu, experts, tokens, rows, hidden, inter, index, offsets):
    """(dense matmul ms, per-expert loop forward + backward ms)."""
    dev = dict(device="cuda", dtype=torch.bfloat16)
    a = torch.randn(rows, hidden, **dev)
    w = torch.randn(hidden, inter, **dev) * 0.02
    dense = H.time_ms(cu, lambda: torch.matmul(a, w))
    x = torch.randn(tokens, hidden, **dev, requires_grad=True)
    ws = [[(torch.randn(*s, **dev) * 0.02).requires_grad_() for s in ((hidden, inter), (hidden, inter), (inter, hidden))]
          for _ in range(experts)]
    idx = torch.from_numpy(index).cuda()
    dout = torch.randn(rows, hidden, **dev)
    bounds = offsets.tolist()

    def loop():
        outs = []
        for e in range(experts):
            lo, hi = bounds[e], bounds[e + 1]
            if hi > lo:
                xe = x[idx[lo:hi]]
                g, u = xe @ ws[e][0], xe @ ws[e][1]
                outs.append((torch.nn.functional.silu(g) * u) @ ws[e][2])
        torch.cat(outs).backward(dout[:bounds[-1]])

    looped = H.time_ms(cu, loop, warmup=2, iters=5)
    del a, w, x, ws, dout
    return dense, looped


def run(out_dir: str) -> dict:
    cu = H.cuda_module()
    if not hasattr(cu, "grouped_mlp_forward"):
        return {"error": "llmpre._cuda was built without the grouped expert MLP (no CUTLASS headers)"}
    torch, why = H.torch_or_reason()
    device = cu.device_name(0)
    rng = np.random.default_rng(0)
    rows_out = []
    for name, experts, tokens, top_k, hidden, inter, kind in SHAPES:
        index, offsets, sorted_, perm = routing(rng, experts, tokens, top_k, kind)
        rows = index.size
        ms = time_llmpre(cu, experts, tokens, rows, hidden, inter, index, offsets, sorted_, perm, rng)
        flops = 18.0 * rows * hidden * inter
        row = {"shape": name, "experts": experts, "rows": rows, "hidden": hidden, "inter": inter, "routing": kind,
               "ms": ms, "tflops": flops / ms / 1e9}
        if torch:
            dense, looped = time_torch(torch, cu, experts, tokens, rows, hidden, inter, index, offsets)
            dense_tflops = 2.0 * rows * hidden * inter / dense / 1e9
            row.update(dense_tflops=dense_tflops, pct_of_dense=100.0 * row["tflops"] / dense_tflops, loop_ms=looped,
                       vs_loop=looped / ms)
            torch.cuda.empty_cache()
        rows_out.append(row)
        print(row, flush=True)
    torch_note = (f"PyTorch {torch.__version__} (cuBLAS) dense matmul and per-expert autograd loop" if torch
                  else f"No PyTorch baseline: {why}")

    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    table = H.markdown_table(
        ["shape", "experts", "rows x hidden x inter", "routing", "fwd+bwd ms", "TFLOP/s", "dense cuBLAS TFLOP/s",
         "% of dense", "per-expert loop ms", "vs loop"],
        [[r["shape"], r["experts"], f"{r['rows']}x{r['hidden']}x{r['inter']}", r["routing"], f(r["ms"], ".3f"),
          f(r["tflops"], ".0f"), f(r.get("dense_tflops"), ".0f"), f(r.get("pct_of_dense"), ".0f"),
          f(r.get("loop_ms"), ".3f"), "n/a" if r.get("vs_loop") is None else f"{r['vs_loop']:.2f}x"]
         for r in rows_out])
    md = f"### Grouped expert MLP, forward + backward (cuda/grouped_mlp)\n\n{device}. {torch_note}.\n\n{table}"
    result = {"device": device, "torch": torch_note, "rows": rows_out, "markdown": md}
    H.write_json(os.path.join(out_dir, "bench_grouped_mlp.json"), result)
    H.write_text(os.path.join(out_dir, "bench_grouped_mlp.md"), md)
    return result


if __name__ == "__main__":
    res = run(os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "out")))
    print(res.get("markdown", res))
