"""GPU check of the grouped bf16 GEMM (cuda/grouped_gemm) through ``llmpre._cuda``.

For rows grouped by expert, ``c[r] = a[r] @ b[e]`` for rows ``offsets[e]..offsets[e+1]``
and ``c[r] = 0`` past ``offsets[experts]``. The house rule (STYLE.md item 4,
``harness.rule_result``) on c:

    max|kernel - truth| <= 2 * max|naive - truth| + atol

``truth`` is float64 math on the bf16 inputs; ``naive`` is fp32 accumulation rounded
once to bf16 (what a framework's bf16 matmul per expert produces). The output is
filled with NaN bytes first, so a row the kernel forgets fails. Cases: empty experts,
dropped tail rows, row counts off the 128-row tile, k off the 32-deep k-step, the
MoE shapes of Mixtral / DeepSeek (hidden 4096/7168, expert width 2048/1408).

The backward's layouts, on the same rule: ``b_transposed`` (``c[r] = a[r] @ b[e]^T`` with
``b[e]`` stored ``[n, k]``: the input gradients through an expert's own weight), ``accumulate``
(``c += ...``: the second term of the input gradient; naive = two bf16 products added in bf16)
and ``grouped_gemm_weight_grad_bf16`` (``c[e] = a_e^T b_e`` over the expert's rows: the weight
gradients; an expert without rows must get 0, not be left unwritten).
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

# (name, per-expert row counts, dropped rows, n, k)
CASES = [
    ("uneven", [37, 0, 129, 256, 1, 0, 90, 300], 50, 256, 264),
    ("one expert", [512], 0, 128, 64),
    ("all dropped", [0, 0, 0], 40, 64, 64),
    ("moe gate/up 4096->1408", [300, 517, 64, 0, 1000, 211, 7, 949], 0, 1408, 4096),
    ("moe down 1408->4096", [300, 517, 64, 0, 1000, 211, 7, 949], 0, 4096, 1408),
    ("dsv3 up 7168->2048", [128] * 8 + [0] * 8 + [77] * 16, 30, 2048, 7168),
]


def make_case(rng, counts, dropped, n, k):
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = int(offsets[-1]) + dropped
    a = H.to_bf16(rng.standard_normal((rows, k)).astype(np.float32))
    bs = [H.to_bf16((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)) for _ in counts]
    return offsets, a, bs


def reference(offsets, a, bs, n):
    """(truth float64, naive: fp32 accumulation rounded to bf16) for every row."""
    af = H.from_bf16(a).astype(np.float64)
    truth = np.zeros((a.shape[0], n))
    naive = np.zeros((a.shape[0], n))
    to_bf16 = H.rounder("bfloat16")
    for e, b in enumerate(bs):
        lo, hi = int(offsets[e]), int(offsets[e + 1])
        if hi > lo:
            bf = H.from_bf16(b).astype(np.float64)
            truth[lo:hi] = af[lo:hi] @ bf
            naive[lo:hi] = to_bf16(af[lo:hi].astype(np.float32) @ bf.astype(np.float32))
    return truth, naive


def launch(cu, offsets, a, bs, n):
    """Runs the kernel; returns c as float64 (and frees everything)."""
    rows, k = a.shape
    experts = len(bs)
    bufs = [H.DeviceBuffer.of(cu, b) for b in bs]
    ptrs = H.DeviceBuffer.of(cu, np.array([b.ptr for b in bufs], dtype=np.uint64))
    da = H.DeviceBuffer.of(cu, a)
    dc = H.DeviceBuffer(cu, (rows, n), np.uint16)
    cu.fill(dc.ptr, b"\xff", dc.nbytes, 0)                 # NaN bytes: unwritten rows fail
    doff = H.DeviceBuffer.of(cu, offsets)
    ws_bytes = cu.grouped_gemm_workspace_bytes(experts)
    ws = H.DeviceBuffer(cu, (max(ws_bytes, 16),), np.uint8)
    cu.grouped_gemm_bf16(da.ptr, ptrs.ptr, dc.ptr, doff.ptr, ws.ptr, ws_bytes, rows, n, k, experts)
    cu.synchronize()
    out = H.from_bf16(dc.numpy()).astype(np.float64)
    for b in bufs + [ptrs, da, dc, doff, ws]:
        b.free()
    return out


# (name, per-expert row counts, dropped rows, n, k)
BACKWARD_CASES = [
    ("uneven", [37, 0, 129, 256, 1, 0, 90, 300], 50, 256, 264),
    ("moe dgate 1408->4096", [300, 517, 64, 0, 1000, 211, 7, 949], 0, 4096, 1408),
]


def _nan(cu, shape):
    buf = H.DeviceBuffer(cu, shape, np.uint16)
    cu.fill(buf.ptr, b"\xff", buf.nbytes, 0)
    return buf


def _transposed_and_accumulated(cu, rng, name, counts, dropped, n, k) -> list:
    """c = a @ b[e]^T, then c += a2 @ b2[e]^T (b[e] stored [n, k])."""
    offsets, a, _ = make_case(rng, counts, dropped, n, k)
    a2 = H.to_bf16(rng.standard_normal(a.shape).astype(np.float32))
    bts = [H.to_bf16((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)) for _ in counts]
    b2ts = [H.to_bf16((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)) for _ in counts]
    t1, n1 = reference(offsets, a, [bt.T.copy() for bt in bts], n)
    t2, n2 = reference(offsets, a2, [bt.T.copy() for bt in b2ts], n)
    naive_sum = H.rounder("bfloat16")(n1.astype(np.float32) + n2.astype(np.float32))
    rows, experts = a.shape[0], len(counts)
    bufs = [H.DeviceBuffer.of(cu, b) for b in bts + b2ts]
    p1 = H.DeviceBuffer.of(cu, np.array([b.ptr for b in bufs[:experts]], dtype=np.uint64))
    p2 = H.DeviceBuffer.of(cu, np.array([b.ptr for b in bufs[experts:]], dtype=np.uint64))
    da, da2, doff = H.DeviceBuffer.of(cu, a), H.DeviceBuffer.of(cu, a2), H.DeviceBuffer.of(cu, offsets)
    dc = _nan(cu, (rows, n))
    ws_bytes = cu.grouped_gemm_workspace_bytes(experts)
    ws = H.DeviceBuffer(cu, (max(ws_bytes, 16),), np.uint8)
    try:
        cu.grouped_gemm_bf16(da.ptr, p1.ptr, dc.ptr, doff.ptr, ws.ptr, ws_bytes, rows, n, k, experts,
                             b_transposed=True)
        cu.synchronize()
        first = H.from_bf16(dc.numpy()).astype(np.float64)
        cu.grouped_gemm_bf16(da2.ptr, p2.ptr, dc.ptr, doff.ptr, ws.ptr, ws_bytes, rows, n, k, experts,
                             b_transposed=True, accumulate=True)
        cu.synchronize()
        summed = H.from_bf16(dc.numpy()).astype(np.float64)
    finally:
        for b in bufs + [p1, p2, da, da2, doff, dc, ws]:
            b.free()
    out = [H.rule_result(f"{name}: c = a b^T", first, t1, n1),
           H.rule_result(f"{name}: c += a2 b2^T", summed, t1 + t2, naive_sum)]
    kept = int(offsets[-1])
    for rec, got in zip(out, (first, summed)):
        if np.any(got[kept:] != 0):
            rec.update(passed=False, why="rows past offsets[experts] are not 0")
    return out


def _weight_grads(cu, rng, name, counts, dropped, n, k) -> dict:
    """c[e] [k, n] = a_e^T g_e: a [rows, k] (the layer input), g [rows, n] (its output gradient)."""
    offsets, a, _ = make_case(rng, counts, dropped, n, k)
    g = H.to_bf16(rng.standard_normal((a.shape[0], n)).astype(np.float32))
    af, gf = H.from_bf16(a).astype(np.float64), H.from_bf16(g).astype(np.float64)
    to_bf16 = H.rounder("bfloat16")
    truth, naive = [], []
    for e in range(len(counts)):
        lo, hi = int(offsets[e]), int(offsets[e + 1])
        truth.append(af[lo:hi].T @ gf[lo:hi])
        naive.append(to_bf16(af[lo:hi].T.astype(np.float32) @ gf[lo:hi].astype(np.float32)))
    experts, rows = len(counts), a.shape[0]
    outs = [_nan(cu, (k, n)) for _ in counts]
    ptrs = H.DeviceBuffer.of(cu, np.array([o.ptr for o in outs], dtype=np.uint64))
    da, dg, doff = H.DeviceBuffer.of(cu, a), H.DeviceBuffer.of(cu, g), H.DeviceBuffer.of(cu, offsets)
    ws_bytes = cu.grouped_gemm_workspace_bytes(experts)
    ws = H.DeviceBuffer(cu, (max(ws_bytes, 16),), np.uint8)
    try:
        cu.grouped_gemm_weight_grad_bf16(da.ptr, dg.ptr, ptrs.ptr, doff.ptr, ws.ptr, ws_bytes, rows, k, n, experts)
        cu.synchronize()
        got = [H.from_bf16(o.numpy()).astype(np.float64) for o in outs]
    finally:
        for b in outs + [ptrs, da, dg, doff, ws]:
            b.free()
    return H.rule_result(f"{name}: c[e] = a_e^T g_e", np.stack(got), np.stack(truth), np.stack(naive))


def backward_layouts(cu, rng) -> list:
    results = []
    for name, counts, dropped, n, k in BACKWARD_CASES:
        results += _transposed_and_accumulated(cu, rng, name, counts, dropped, n, k)
        results.append(_weight_grads(cu, rng, name, counts, dropped, n, k))
    return results


def run(out_dir: str) -> dict:
    cu = H.cuda_module()
    if not hasattr(cu, "grouped_gemm_bf16"):
        return {"passed": False, "error": "llmpre._cuda was built without the grouped GEMM (no CUTLASS headers: "
                                          "pip install nvidia-cutlass, or -DLLMPRE_CUTLASS_INCLUDE=...)"}
    rng = np.random.default_rng(2026)
    results = []
    for name, counts, dropped, n, k in CASES:
        offsets, a, bs = make_case(rng, counts, dropped, n, k)
        truth, naive = reference(offsets, a, bs, n)
        got = launch(cu, offsets, a, bs, n)
        rec = H.rule_result(f"{name}: c", got, truth, naive)
        kept = int(offsets[-1])
        if np.any(got[kept:] != 0):
            rec.update(passed=False, why="rows past offsets[experts] are not 0")
        rec["case"] = {"counts": counts, "dropped": dropped, "n": n, "k": k}
        results.append(rec)
    results += backward_layouts(cu, rng)
    # bad input: one clear error
    try:
        cu.grouped_gemm_bf16(0, 0, 0, 0, 0, 0, 10, 100, 64, 2)
        bad = {"name": "n % 8 != 0 refused", "passed": False, "why": "no error"}
    except ValueError as e:
        bad = {"name": "n % 8 != 0 refused", "passed": "multiples of 8" in str(e), "message": str(e)}
    results.append(bad)
    out = {"passed": all(r["passed"] for r in results), "cases": results}
    H.write_json(os.path.join(out_dir, "check_grouped_gemm.json"), out)
    return out


if __name__ == "__main__":
    res = run(os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "out")))
    print(res)
    sys.exit(0 if res["passed"] else 1)
