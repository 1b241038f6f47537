"""GPU check of the MoE combine kernels (cuda/moe_combine) through ``llmpre._cuda``.

``out[t] = sum_j w[t, j] * y[pos[t, j]]`` and its gradients ``dy`` (``w[t, j] * dout[t]``
at each pair's row, 0 in rows no pair reads) and ``dw`` (``<dout[t], y[pos[t, j]]>``, fp32)
against float64 math on the stored inputs, with the house rule (``harness.rule_result``).
``naive`` is ``llmpre.ops.reference.moe_combine`` in the storage dtype, each op rounded
once to it: the weights cast to the dtype, the gather exact, the batched product
``[1, k] x [k, h]`` (and its backward ``w^T dout``, ``dout back^T``) accumulated in fp32 and
rounded once, as a framework's bf16/fp16 matmul does; dw then cast back to fp32.
Outputs are NaN-filled before each launch, so an element the kernel forgets fails (dy's
rows no pair reads must be written with 0).

Cases: the three storage dtypes; a dropless layer (every row read) and layers with dropped
rows (rows no pair reads); each token's slots on rows far apart (token 0 reads the first,
a middle and the last row); hidden sizes whose rows are not a multiple of 16 bytes and
pointers 2 or 4 bytes off a 16-byte boundary (the element-wise path); top-1; no tokens at
all (dy all 0); positions outside ``[0, rows)``, which must give NaN for the token's out
row and the pair's dw and write no dy row. The numpy parts import without a GPU
(tests/cuda/test_gpu_check_logic.py).
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
    slots: int
    rows: int             # >= tokens * slots; the rest are rows no pair reads
    hidden: int
    dtype: str
    shift: int = 0        # bytes past a 256-byte boundary: y, out, dout, dy
    bad: bool = False     # two positions outside [0, rows)

    def label(self) -> str:
        return (f"{self.dtype} tokens{self.tokens} top{self.slots} rows{self.rows} h{self.hidden}"
                + (f" shift={self.shift}" if self.shift else "") + (" bad pos" if self.bad else ""))


CASES = [
    Case(300, 8, 2400, 512, "bfloat16"),          # dropless: every row read
    Case(64, 6, 420, 4096, "bfloat16"),           # 36 dropped rows, a large hidden
    Case(40, 4, 200, 136, "float16"),             # 272-byte rows: whole packs
    Case(37, 3, 120, 20, "float32"),              # 9 dropped rows; 80-byte rows
    Case(29, 2, 70, 100, "bfloat16"),             # 200-byte rows: element-wise
    Case(23, 4, 92, 33, "float32"),               # 132-byte rows: element-wise
    Case(33, 2, 80, 64, "bfloat16", shift=2),
    Case(20, 4, 100, 36, "float32", shift=4),
    Case(5, 1, 5, 512, "float16"),                # top-1
    Case(0, 2, 10, 16, "bfloat16"),               # no tokens: dy all 0
    Case(20, 3, 70, 32, "float32", bad=True),
    Case(12, 2, 30, 24, "bfloat16", bad=True),
]


def make_inputs(rng, c: Case) -> dict:
    """y [rows, hidden], dout [tokens, hidden] (storage values), pos [tokens, slots] int64
    (distinct rows of a random permutation; token 0 reads the first, a middle and the last
    row), w [tokens, slots] fp32 routing weights."""
    q = lambda a: H.decode(H.encode(a, c.dtype), c.dtype)  # noqa: E731
    pos = rng.permutation(c.rows)[:c.tokens * c.slots].reshape(c.tokens, c.slots).astype(np.int64)
    if c.tokens > 0:
        for j, row in enumerate(list(dict.fromkeys((0, c.rows - 1, c.rows // 2)))[:c.slots]):
            other = np.argwhere(pos == row)
            if other.size:                      # swap, keeping pos distinct
                pos[tuple(other[0])] = pos[0, j]
            pos[0, j] = row
    if c.bad and c.tokens > 2:
        pos[1, 0] = -1
        pos[2, c.slots - 1] = c.rows + 5
    w = rng.uniform(0.0, 1.0, size=(c.tokens, c.slots)).astype(np.float32)
    return {"y": q(rng.standard_normal((c.rows, c.hidden))), "pos": pos, "w": w.astype(np.float64),
            "dout": q(rng.standard_normal((c.tokens, c.hidden)))}


def _formulas(y, pos, w, dout, rd, acc):
    """out, dy, dw with products and sums in `acc` (float64 or float32) and `rd` applied to
    each result the reference op stores."""
    rows = y.shape[0]
    ok = (pos >= 0) & (pos < rows)                                    # [tokens, slots]
    back = np.where(ok[..., None], y[np.where(ok, pos, 0)], np.nan).astype(acc)   # [tokens, slots, h]
    out = rd(np.einsum("tj,tjh->th", w.astype(acc), back))
    dback = rd(w.astype(acc)[..., None] * dout.astype(acc)[:, None, :])          # [tokens, slots, h]
    dy = np.zeros(y.shape, dtype=np.float64)
    dy[pos[ok]] = dback[ok]
    dw = rd(np.einsum("th,tjh->tj", dout.astype(acc), back))
    return {"out": out, "dy": dy, "dw": dw}


def truth(inp: dict) -> dict:
    return _formulas(inp["y"], inp["pos"], inp["w"], inp["dout"], lambda a: np.asarray(a, np.float64), np.float64)


def naive(inp: dict, dtype: str) -> dict:
    rd = H.rounder(dtype)
    f = _formulas(inp["y"], inp["pos"], rd(inp["w"]), inp["dout"], rd, np.float32)
    f["dw"] = np.asarray(f["dw"], np.float32)                          # the cast back to fp32 weights
    return f


def rounded_truth_kernel(inp: dict, c: Case) -> dict:
    """An ideal kernel: the float64 truth rounded once (out, dy to the storage dtype, dw to fp32)."""
    t = truth(inp)
    rd = H.rounder(c.dtype)
    return {"out": rd(t["out"]), "dy": rd(t["dy"]), "dw": np.asarray(t["dw"], np.float32)}


class GpuKernel:
    """Runs cuda/moe_combine forward and backward on the device."""

    def __init__(self, cu):
        self.cu = cu

    def __call__(self, inp: dict, c: Case) -> dict:
        cu, dt, bufs = self.cu, c.dtype, []

        def dev(arr, shift):
            buf = H.ShiftedBuffer.of(cu, arr, shift)
            bufs.append(buf)
            return buf

        def out(shape, dtype, shift):
            buf = H.ShiftedBuffer(cu, shape, dtype, shift)
            bufs.append(buf)
            cu.fill(buf.ptr, b"\xff", buf.nbytes)
            return buf

        try:
            store = H.storage_numpy_dtype(dt)
            y, dout = dev(H.encode(inp["y"], dt), c.shift), dev(H.encode(inp["dout"], dt), c.shift)
            pos, w = dev(inp["pos"], 0), dev(inp["w"].astype(np.float32), 0)
            o = out((c.tokens, c.hidden), store, c.shift)
            dy = out((c.rows, c.hidden), store, c.shift)
            dw = out((c.tokens, c.slots), np.float32, 0)
            args = (c.tokens, c.slots, c.rows, c.hidden, dt)
            cu.moe_combine_forward(y.ptr, pos.ptr, w.ptr, o.ptr, *args)
            cu.moe_combine_backward(y.ptr, pos.ptr, w.ptr, dout.ptr, dy.ptr, dw.ptr, *args)
            cu.synchronize()
            return {"out": H.decode(o.numpy(), dt), "dy": H.decode(dy.numpy(), dt),
                    "dw": dw.numpy().astype(np.float64)}
        finally:
            for buf in bufs:
                buf.free()


def check_case(kernel, c: Case, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, c.tokens, c.slots, c.rows, c.hidden, c.shift])
    inp = make_inputs(rng, c)
    t, nv = truth(inp), naive(inp, c.dtype)
    got = kernel(inp, c)
    results = [H.rule_result(k, got[k], t[k], nv[k]) for k in ("out", "dy", "dw")]
    return {"case": c.label(), "passed": all(r["passed"] for r in results), "results": results}


def run(out_dir: str, kernel=None, cases=None) -> dict:
    if kernel is None:
        kernel = GpuKernel(H.cuda_module())
    checked = [check_case(kernel, c) for c in (CASES if cases is None else cases)]
    return H.summarize("moe_combine", checked, out_dir)


if __name__ == "__main__":
    res = run(os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "out")))
    print(res)
    sys.exit(0 if res["passed"] else 1)
