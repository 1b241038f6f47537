"""GPU check of the grouped expert MLP (cuda/grouped_mlp: the launches llmpre_grouped_mlp's
GPU path runs) through ``llmpre._cuda``.

Forward ``out`` and the backward's ``dx``, ``dWGate``, ``dWUp``, ``dWDown`` against float64
math on the bf16 inputs (``truth``), with the house rule (``harness.rule_result``): ``naive``
is what the reference op (``llmpre.ops.reference.grouped_mlp``) computes in bf16, every matmul
accumulated in fp32 and rounded to bf16, every elementwise op rounded, the token sums added in
bf16. Outputs are NaN-filled first, so anything the kernels forget fails. Cases: rows gathered
through a top-k routing index (tokens with several rows, one with none), experts without rows
(their weight gradients must be 0), rows dropped past ``offsets[E]`` (output 0, no gradient),
no index, and a Mixtral-like width.
The numpy parts import without a GPU (tests/cuda/test_gpu_check_logic.py).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


@dataclass(frozen=True)
class Case:
    tokens: int
    topk: int             # 0: no index (rows = tokens, one row per token)
    hidden: int
    inter: int
    experts: int
    dropped: int = 0      # rows past offsets[E]
    empty: int = 1        # experts that get no rows

    def label(self) -> str:
        return (f"tokens{self.tokens} top{self.topk} h{self.hidden} i{self.inter} E{self.experts}"
                + (f" dropped{self.dropped}" if self.dropped else ""))


CASES = [
    Case(96, 2, 64, 32, 8),
    Case(64, 0, 128, 64, 4, empty=1),
    Case(200, 4, 256, 128, 16, dropped=37, empty=3),
    Case(512, 2, 1024, 512, 8, empty=0),
]


def make_inputs(rng, c: Case) -> dict:
    bf = lambda a: H.from_bf16(H.to_bf16(np.asarray(a, dtype=np.float32))).astype(np.float64)  # noqa: E731
    if c.topk:
        pairs = np.repeat(np.arange(c.tokens), c.topk)
        pairs = pairs[pairs != 1]                                    # token 1 has no rows
    else:
        pairs = np.arange(c.tokens)
    live = np.arange(c.empty, c.experts)                             # experts 0..empty-1 get none
    key = rng.choice(live, size=pairs.size)
    if c.dropped:
        key[rng.choice(pairs.size, size=c.dropped, replace=False)] = c.experts   # past offsets[E]
    order = np.argsort(key, kind="stable")
    offsets = np.searchsorted(key[order], np.arange(c.experts + 1)).astype(np.int64)
    index = pairs[order].astype(np.int64) if c.topk else None
    rows = pairs.size   # without an index the rows are x's own, taken as already in expert order
    scale_h, scale_i = 1 / np.sqrt(c.hidden), 1 / np.sqrt(c.inter)
    return {
        "x": bf(rng.standard_normal((c.tokens, c.hidden))), "index": index, "offsets": offsets,
        "wg": [bf(rng.standard_normal((c.hidden, c.inter)) * scale_h) for _ in range(c.experts)],
        "wu": [bf(rng.standard_normal((c.hidden, c.inter)) * scale_h) for _ in range(c.experts)],
        "wd": [bf(rng.standard_normal((c.inter, c.hidden)) * scale_i) for _ in range(c.experts)],
        "dout": bf(rng.standard_normal((rows, c.hidden))),
    }


def _mlp(inp: dict, rd, mm):
    """out, dx, dwg, dwu, dwd with `rd` rounding stored results and `mm` the matmul."""
    x, index, offsets, dout = inp["x"], inp["index"], inp["offsets"], inp["dout"]
    a = x[index] if index is not None else x
    rows, hidden = a.shape
    experts = len(inp["wg"])
    inter = inp["wg"][0].shape[1]
    out = np.zeros((rows, hidden))
    da = np.zeros((rows, hidden))
    dws = {k: [np.zeros_like(w) for w in inp[k]] for k in ("wg", "wu", "wd")}
    for e in range(experts):
        lo, hi = int(offsets[e]), int(offsets[e + 1])
        if hi == lo:
            continue
        ae, de = a[lo:hi], dout[lo:hi]
        g, u = rd(mm(ae, inp["wg"][e])), rd(mm(ae, inp["wu"][e]))
        s = rd(1 / (1 + np.exp(-g)))
        silu = rd(g * s)
        h = rd(silu * u)
        out[lo:hi] = rd(mm(h, inp["wd"][e]))
        dws["wd"][e] = rd(mm(h.T, de))
        dh = rd(mm(de, inp["wd"][e].T))
        dup = rd(dh * silu)
        dgate = rd(rd(dh * u) * rd(s + rd(silu * rd(1 - s))))
        dws["wg"][e] = rd(mm(ae.T, dgate))
        dws["wu"][e] = rd(mm(ae.T, dup))
        da[lo:hi] = rd(rd(mm(dgate, inp["wg"][e].T)) + rd(mm(dup, inp["wu"][e].T)))
    if index is None:
        dx = da
    else:
        dx = np.zeros_like(x)
        for r in range(rows):                        # row order, as the kernel sums
            dx[index[r]] = rd(dx[index[r]] + da[r])
    return {"out": out, "dx": dx, "dwg": dws["wg"], "dwu": dws["wu"], "dwd": dws["wd"]}


def truth(inp: dict) -> dict:
    return _mlp(inp, lambda a: a, lambda a, b: a @ b)


def naive(inp: dict) -> dict:
    rd = H.rounder("bfloat16")
    f32 = lambda a, b: a.astype(np.float32) @ b.astype(np.float32)  # noqa: E731
    return _mlp(inp, lambda a: rd(a).astype(np.float64), f32)


def rounded_truth_kernel(inp: dict, c: Case) -> dict:
    """An ideal kernel: every output the float64 truth rounded once to bf16."""
    rd = H.rounder("bfloat16")
    return {k: ([rd(w).astype(np.float64) for w in v] if isinstance(v, list) else rd(v).astype(np.float64))
            for k, v in truth(inp).items()}


class GpuKernel:
    """Runs cuda/grouped_mlp forward and backward on the device."""

    def __init__(self, cu):
        self.cu = cu

    def __call__(self, inp: dict, c: Case) -> dict:
        cu, bufs = self.cu, []
        rows = inp["dout"].shape[0]

        def dev(arr):
            buf = H.DeviceBuffer.of(cu, arr)
            bufs.append(buf)
            return buf

        def bf16(arr):
            return dev(H.to_bf16(np.asarray(arr, dtype=np.float32)))

        def nan(shape):
            buf = H.DeviceBuffer(cu, shape, np.uint16)
            bufs.append(buf)
            cu.fill(buf.ptr, b"\xff", buf.nbytes)
            return buf

        def pointers(items):
            return dev(np.array([b.ptr for b in items], dtype=np.uint64))

        try:
            x, offsets, dout = bf16(inp["x"]), dev(inp["offsets"]), bf16(inp["dout"])
            ws = {k: [bf16(w) for w in inp[k]] for k in ("wg", "wu", "wd")}
            dws = {k: [nan(w.shape) for w in inp[k]] for k in ("wg", "wu", "wd")}
            ptr = {k: pointers(v) for k, v in ws.items()}
            dptr = {k: pointers(v) for k, v in dws.items()}
            index = sorted_ = perm = 0
            if inp["index"] is not None:
                order = np.argsort(inp["index"], kind="stable").astype(np.int64)
                index, sorted_, perm = (dev(inp["index"]).ptr, dev(inp["index"][order]).ptr, dev(order).ptr)
            out, gate, up = nan((rows, c.hidden)), nan((rows, c.inter)), nan((rows, c.inter))
            dx = nan((c.tokens, c.hidden))
            nbytes = max(cu.grouped_mlp_workspace_bytes(c.tokens, rows, c.hidden, c.inter, c.experts, bool(index),
                                                        backward) for backward in (False, True))
            work = H.DeviceBuffer(cu, (max(nbytes, 16),), np.uint8)
            bufs.append(work)
            cu.grouped_mlp_forward(x.ptr, index, offsets.ptr, ptr["wg"].ptr, ptr["wu"].ptr, ptr["wd"].ptr, out.ptr,
                                   gate.ptr, up.ptr, work.ptr, nbytes, c.tokens, rows, c.hidden, c.inter, c.experts)
            cu.grouped_mlp_backward(x.ptr, index, sorted_, perm, offsets.ptr, ptr["wg"].ptr, ptr["wu"].ptr,
                                    ptr["wd"].ptr, gate.ptr, up.ptr, dout.ptr, dx.ptr, dptr["wg"].ptr,
                                    dptr["wu"].ptr, dptr["wd"].ptr, work.ptr, nbytes, c.tokens, rows, c.hidden,
                                    c.inter, c.experts)
            cu.synchronize()
            dec = lambda b: H.from_bf16(b.numpy()).astype(np.float64)  # noqa: E731
            return {"out": dec(out), "dx": dec(dx), "dwg": [dec(b) for b in dws["wg"]],
                    "dwu": [dec(b) for b in dws["wu"]], "dwd": [dec(b) for b in dws["wd"]]}
        finally:
            for buf in bufs:
                buf.free()


def check_case(kernel, c: Case, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, c.tokens, c.topk, c.hidden, c.experts, c.dropped])
    inp = make_inputs(rng, c)
    t, nv = truth(inp), naive(inp)
    got = kernel(inp, c)
    results = [H.rule_result(k, got[k], t[k], nv[k]) for k in ("out", "dx")]
    for k in ("dwg", "dwu", "dwd"):
        results.append(H.rule_result(k, np.stack(got[k]), np.stack(t[k]), np.stack(nv[k])))
    kept = int(inp["offsets"][-1])
    if np.any(got["out"][kept:] != 0):
        results.append({"name": "dropped rows", "passed": False, "why": "rows past offsets[E] are not 0"})
    return {"case": c.label(), "passed": all(r["passed"] for r in results), "results": results}


def run(out_dir: str, kernel=None, cases=None) -> dict:
    if kernel is None:
        cu = H.cuda_module()
        if not hasattr(cu, "grouped_mlp_forward"):
            return {"passed": False, "error": "llmpre._cuda was built without the grouped expert MLP (no CUTLASS "
                                              "headers: pip install nvidia-cutlass, or -DLLMPRE_CUTLASS_INCLUDE=...)"}
        kernel = GpuKernel(cu)
    checked = [check_case(kernel, c) for c in (CASES if cases is None else cases)]
    return H.summarize("grouped_mlp", checked, out_dir)


if __name__ == "__main__":
    res = run(os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "out")))
    print(res)
    sys.exit(0 if res["passed"] else 1)
