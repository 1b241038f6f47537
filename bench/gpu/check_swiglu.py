"""GPU check of the SwiGLU kernels (cuda/swiglu) through ``llmpre._cuda``.

``out = silu(g) * u`` and its gradients ``dgate``, ``dup`` against float64 math on the
stored inputs, with the house rule (``harness.rule_result``): ``naive`` rounds every
elementary op to the storage dtype, as ``llmpre.ops.reference.swiglu`` does in bf16/fp16
(silu, then the product; in the backward each product and sum). Outputs are NaN-filled
before each launch, so an element the kernel forgets fails.

Cases: the three storage dtypes; sizes that are not a multiple of the 16-byte pack (the
element-wise tail); pointers 2 bytes off a 16-byte boundary (the element-wise path); gate
values far into sigmoid's tails (+-30, +-100: silu -> g and -> 0 without a NaN); n = 1.
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
    n: int
    dtype: str
    shift: int = 0        # bytes past a 256-byte boundary, every buffer

    def label(self) -> str:
        return f"{self.dtype} n{self.n}" + (f" shift={self.shift}" if self.shift else "")


CASES = [
    Case(4096 * 11, "bfloat16"),
    Case(1408 * 37 + 5, "bfloat16"),
    Case(1000, "float16"),
    Case(777, "float32"),
    Case(520, "bfloat16", shift=2),
    Case(333, "float32", shift=4),
    Case(1, "bfloat16"),
]


def make_inputs(rng, c: Case) -> dict:
    q = lambda a: H.decode(H.encode(a, c.dtype), c.dtype)  # noqa: E731
    g = rng.standard_normal(c.n) * 3.0
    if c.n >= 8:
        g[:4] = [30.0, -30.0, 100.0, -100.0]
    return {"gate": q(g), "up": q(rng.standard_normal(c.n)), "dout": q(rng.standard_normal(c.n))}


def _formulas(g, u, d, rd):
    """out, dgate, dup with `rd` applied to every elementary result (identity: the truth)."""
    s = rd(1.0 / (1.0 + np.exp(-g)))
    silu = rd(g * s)
    out = rd(silu * u)
    dup = rd(d * silu)
    dgate = rd(rd(d * u) * rd(s + rd(silu * rd(1.0 - s))))
    return {"out": out, "dgate": dgate, "dup": dup}


def truth(inp: dict) -> dict:
    with np.errstate(over="ignore"):
        return _formulas(inp["gate"], inp["up"], inp["dout"], lambda a: a)


def naive(inp: dict, dtype: str) -> dict:
    rd = H.rounder(dtype)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    with np.errstate(over="ignore"):
        return _formulas(f32(inp["gate"]), f32(inp["up"]), f32(inp["dout"]), rd)


def rounded_truth_kernel(inp: dict, c: Case) -> dict:
    """An ideal kernel: the float64 truth rounded once to the storage dtype."""
    rd = H.rounder(c.dtype)
    return {k: rd(v) for k, v in truth(inp).items()}


class GpuKernel:
    """Runs cuda/swiglu forward and backward on the device."""

    def __init__(self, cu):
        self.cu = cu

    def __call__(self, inp: dict, c: Case) -> dict:
        cu, dt, bufs = self.cu, c.dtype, []

        def dev(arr):
            buf = H.ShiftedBuffer.of(cu, H.encode(arr, dt), c.shift)
            bufs.append(buf)
            return buf

        def out():
            buf = H.ShiftedBuffer(cu, (c.n,), H.storage_numpy_dtype(dt), c.shift)
            bufs.append(buf)
            cu.fill(buf.ptr, b"\xff", buf.nbytes)
            return buf

        try:
            g, u, d = dev(inp["gate"]), dev(inp["up"]), dev(inp["dout"])
            o, dg, du = out(), out(), out()
            cu.swiglu_forward(g.ptr, u.ptr, o.ptr, c.n, dt)
            cu.swiglu_backward(g.ptr, u.ptr, d.ptr, dg.ptr, du.ptr, c.n, dt)
            cu.synchronize()
            return {"out": H.decode(o.numpy(), dt), "dgate": H.decode(dg.numpy(), dt), "dup": H.decode(du.numpy(), dt)}
        finally:
            for buf in bufs:
                buf.free()


def check_case(kernel, c: Case, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, c.n, c.shift])
    inp = make_inputs(rng, c)
    t, nv = truth(inp), naive(inp, c.dtype)
    got = kernel(inp, c)
    results = [H.rule_result(k, got[k], t[k], nv[k]) for k in ("out", "dgate", "dup")]
    return {"case": c.label(), "passed": all(r["passed"] for r in results), "results": results}


def run(out_dir: str, kernel=None, cases=None) -> dict:
    if kernel is None:
        kernel = GpuKernel(H.cuda_module())
    checked = [check_case(kernel, c) for c in (CASES if cases is None else cases)]
    return H.summarize("swiglu", checked, out_dir)


if __name__ == "__main__":
    res = run(os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "out")))
    print(res)
    sys.exit(0 if res["passed"] else 1)
