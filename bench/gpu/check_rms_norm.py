"""GPU check of the RMSNorm kernels (cuda/rms_norm) through ``llmpre._cuda``.

Every case runs the forward and the backward and applies the house rule
(STYLE.md item 4, ``harness.rule_result``) to y, inv_rms, dx and dweight:

    max|kernel - truth| <= 2 * max|naive - truth| + atol

``truth`` is float64 math on the dtype-rounded inputs; ``naive`` is the same
math computed in the storage dtype, every elementary op rounded to it and
sums accumulated in fp32 and rounded once (what a framework composing
x*x, mean, rsqrt, mul in bf16/fp16/fp32 would produce). Outputs and the
backward's workspace are filled with NaN bytes first, so an element a kernel
forgets to write fails the check.

Cases reach every kernel shape: the five register-tiled shapes (hidden 1024,
2048, 4096, 5120, 8192/16384 in bf16; fp32 reaches 8192 tiled), the looped
kernel for long rows (20480 bf16, 16384 fp32) and the element-wise looped
kernel for odd hidden sizes (4095, 127) and for pointers that are not 16-byte
aligned; row counts that are not multiples of the rows per CTA; zero rows.
The numpy parts import without a GPU: tests/cuda/test_gpu_check_logic.py runs
them on the CPU with emulated kernels.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

EPS = 1e-6

# (rows, hidden, dtype, shift in bytes of every buffer from a 256-byte boundary)
CASES = [
    (1000, 1024, "bfloat16", 0),
    (129, 2048, "bfloat16", 0),
    (300, 4096, "bfloat16", 0),
    (77, 5120, "bfloat16", 0),
    (64, 8192, "bfloat16", 0),
    (131, 16384, "bfloat16", 0),
    (24, 20480, "bfloat16", 0),
    (40, 4095, "bfloat16", 0),
    (300, 4096, "bfloat16", 2),
    (3, 127, "bfloat16", 0),
    (0, 1024, "bfloat16", 0),
    (257, 4096, "float16", 0),
    (33, 16384, "float16", 0),
    (45, 5119, "float16", 0),
    (500, 1024, "float32", 0),
    (129, 4096, "float32", 0),
    (65, 8192, "float32", 0),
    (40, 16384, "float32", 0),
    (21, 4099, "float32", 4),
]


def make_inputs(rng, rows: int, hidden: int, dtype: str):
    """x, weight, dy as float64 arrays of values representable in `dtype`."""
    q = lambda a: H.decode(H.encode(a, dtype), dtype)  # noqa: E731
    x = q(rng.standard_normal((rows, hidden)) * 1.5 + 0.1)
    w = q(1.0 + 0.25 * rng.standard_normal(hidden))
    g = q(rng.standard_normal((rows, hidden)))
    return x, w, g


def truth(x, w, g, eps: float) -> dict:
    """float64 forward and backward of y = w * x / rms(x)."""
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)  # [rows, 1]
    n = x * r
    dn = w * g
    dx = r * (dn - n * (dn * n).mean(-1, keepdims=True))
    return {"y": w * n, "inv_rms": r[:, 0], "dx": dx, "dweight": (g * n).sum(0)}


def naive(x, w, g, eps: float, dtype: str) -> dict:
    """The same math in `dtype`: each elementary op rounded, sums in fp32 rounded once."""
    rd = H.rounder(dtype)
    x, w, g = (np.asarray(a, dtype=np.float32) for a in (x, w, g))
    ms = rd(rd(x * x).mean(-1, keepdims=True, dtype=np.float32))
    r = rd(np.float32(1.0) / np.sqrt(rd(ms + np.float32(eps))))
    n = rd(x * r)
    dn = rd(w * g)
    m = rd(rd(dn * n).mean(-1, keepdims=True, dtype=np.float32))
    return {"y": rd(w * n), "inv_rms": r[:, 0], "dx": rd(r * rd(dn - rd(n * m))),
            "dweight": rd(rd(g * n).sum(0, dtype=np.float32))}


def rounded_truth_kernel(x, w, g, eps: float, dtype: str, shift: int = 0) -> dict:
    """An ideal kernel: the float64 truth rounded once to each output's storage type
    (inv_rms is fp32). The CPU tests use it as the kernel that must pass."""
    t = truth(x, w, g, eps)
    rd = H.rounder(dtype)
    return {"y": rd(t["y"]), "inv_rms": t["inv_rms"].astype(np.float32), "dx": rd(t["dx"]),
            "dweight": rd(t["dweight"])}


class GpuKernel:
    """Runs cuda/rms_norm forward then backward on the device (backward with the
    device's own inv_rms, as in training); returns float64 outputs."""

    def __init__(self, cu):
        self.cu = cu

    def __call__(self, x, w, g, eps: float, dtype: str, shift: int = 0) -> dict:
        cu = self.cu
        rows, hidden = x.shape
        xs, ws, gs = (H.encode(a, dtype) for a in (x, w, g))
        bufs = {k: H.ShiftedBuffer.of(cu, a, shift) for k, a in (("x", xs), ("w", ws), ("g", gs))}
        for k, like in (("y", xs), ("dx", xs), ("dw", ws)):
            bufs[k] = H.ShiftedBuffer(cu, like.shape, like.dtype, shift)
        bufs["inv"] = H.DeviceBuffer(cu, (rows,), np.float32)
        ws_bytes = cu.rms_norm_backward_workspace_bytes(rows, hidden, dtype)
        bufs["ws"] = H.DeviceBuffer(cu, (max(ws_bytes, 4) // 4,), np.float32)
        try:
            for k in ("y", "dx", "dw", "inv", "ws"):  # NaN bytes: unwritten outputs show up
                cu.fill(bufs[k].ptr, b"\xff", bufs[k].nbytes)
            b = bufs
            cu.rms_norm_forward(b["x"].ptr, b["w"].ptr, b["y"].ptr, b["inv"].ptr, rows, hidden, eps, dtype)
            cu.rms_norm_backward(b["x"].ptr, b["w"].ptr, b["inv"].ptr, b["g"].ptr, b["dx"].ptr, b["dw"].ptr,
                                b["ws"].ptr, ws_bytes, rows, hidden, dtype)
            cu.synchronize()
            return {"y": H.decode(b["y"].numpy(), dtype), "inv_rms": b["inv"].numpy().astype(np.float64),
                    "dx": H.decode(b["dx"].numpy(), dtype), "dweight": H.decode(b["dw"].numpy(), dtype)}
        finally:
            for buf in bufs.values():
                buf.free()


def check_case(kernel, rows: int, hidden: int, dtype: str, shift: int = 0, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, rows, hidden, H.DTYPES.index(dtype), shift])
    x, w, g = make_inputs(rng, rows, hidden, dtype)
    t, nv = truth(x, w, g, EPS), naive(x, w, g, EPS, dtype)
    got = kernel(x, w, g, EPS, dtype, shift)
    results = [H.rule_result(k, got[k], t[k], nv[k]) for k in ("y", "inv_rms", "dx", "dweight")]
    return {"case": f"{dtype} rows={rows} hidden={hidden} shift={shift}",
            "passed": all(r["passed"] for r in results), "results": results}


def run(out_dir: str, kernel=None, cases=None) -> dict:
    if kernel is None:
        kernel = GpuKernel(H.cuda_module())
    checked = [check_case(kernel, *c) for c in (CASES if cases is None else cases)]
    return H.summarize("rms_norm", checked, out_dir)
