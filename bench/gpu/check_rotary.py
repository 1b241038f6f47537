"""GPU check of the rotary kernels (cuda/rotary) through ``llmpre._cuda``.

Every case rotates q and k in one launch (forward) and rotates their output
gradients back (``inverse=True``, the backward), and applies the house rule
(``harness.rule_result``) to q, k, dq and dk against a float64 rotation that
uses the fp32 tables; ``naive`` casts the tables to the storage dtype and
rounds every product and sum to it (what ``llmpre.ops.reference.rotary``
computes in bf16/fp16). Outputs are NaN-filled before each launch.

Cases: rotate_half and interleaved; GQA (heads_q != heads_k) and q alone;
partial rotary (rot_dim < head_dim, pass-through features copied); position
ids absent, shared by the batch ([1, seq]) or per sequence; head_dim and
rotated widths that are not multiples of 16 bytes and pointers that are not
16-byte aligned (element-wise path); in-place rotation; positions outside the
tables, which must give NaN in the rotated features of that token (the pass-
through ones still copied) instead of reading out of bounds.
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
    batch: int
    seq: int
    heads_q: int
    heads_k: int          # 0: q only
    head_dim: int
    rot_dim: int
    interleaved: bool
    ids: str              # "none", "shared" ([1, seq]), "batch" ([batch, seq]), "bad" (some out of range)
    dtype: str
    shift: int = 0        # bytes from a 256-byte boundary, every tensor buffer
    inplace: bool = False

    def label(self) -> str:
        return (f"{self.dtype} b{self.batch} s{self.seq} h{self.heads_q}/{self.heads_k} d{self.head_dim} "
                f"r{self.rot_dim} {'interleaved' if self.interleaved else 'rotate_half'} ids={self.ids}"
                + (f" shift={self.shift}" if self.shift else "") + (" inplace" if self.inplace else ""))


CASES = [
    Case(2, 256, 32, 8, 128, 128, False, "none", "bfloat16"),
    Case(2, 200, 8, 2, 128, 64, True, "batch", "bfloat16"),
    Case(1, 300, 28, 4, 128, 128, False, "shared", "float16"),
    Case(2, 64, 12, 0, 64, 64, False, "none", "float32"),
    Case(2, 64, 6, 2, 64, 32, True, "batch", "float32"),
    Case(1, 50, 4, 4, 80, 32, False, "none", "bfloat16"),
    Case(1, 50, 4, 2, 96, 40, False, "batch", "bfloat16"),
    Case(1, 33, 3, 1, 66, 66, True, "none", "float16"),
    Case(1, 33, 3, 1, 65, 64, True, "shared", "bfloat16"),
    Case(1, 33, 3, 1, 65, 64, False, "none", "float32"),
    Case(2, 128, 16, 4, 128, 128, False, "none", "bfloat16", shift=2),
    Case(2, 128, 8, 8, 128, 128, False, "batch", "bfloat16", inplace=True),
    Case(3, 17, 5, 3, 128, 96, True, "batch", "bfloat16", inplace=True),
    Case(1, 1, 1, 0, 2, 2, False, "none", "float32"),
    Case(2, 40, 4, 2, 128, 64, False, "bad", "bfloat16"),
    Case(2, 40, 4, 2, 64, 64, True, "bad", "float32"),
]


def tables(rot_dim: int, rows: int, base: float = 10000.0):
    """fp32 cos/sin [rows, rot_dim/2] of standard RoPE angles (computed in float64)."""
    inv_freq = base ** (-np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    ang = np.arange(rows, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def make_inputs(rng, c: Case) -> dict:
    q_ = lambda a: H.decode(H.encode(a, c.dtype), c.dtype)  # noqa: E731
    table_rows = c.seq + 3 if c.ids == "none" else 2 * c.seq + 5
    cos, sin = tables(c.rot_dim, table_rows)
    ids = None
    if c.ids == "shared":
        ids = rng.integers(0, table_rows, size=(1, c.seq))
    elif c.ids in ("batch", "bad"):
        ids = rng.integers(0, table_rows, size=(c.batch, c.seq))
        if c.ids == "bad":  # a few positions outside [0, table_rows)
            ids[0, 1] = table_rows
            ids[-1, -1] = -1
    shape_k = (c.batch, c.seq, c.heads_k, c.head_dim)
    return {"q": q_(rng.standard_normal((c.batch, c.seq, c.heads_q, c.head_dim))),
            "k": q_(rng.standard_normal(shape_k)),
            "gq": q_(rng.standard_normal((c.batch, c.seq, c.heads_q, c.head_dim))),
            "gk": q_(rng.standard_normal(shape_k)),
            "cos": cos, "sin": sin, "ids": None if ids is None else ids.astype(np.int64)}


def table_rows_for(cos, sin, seq: int, ids):
    """cos/sin rows per token, [b or 1, seq, 1, r/2] float64; NaN for positions
    outside the tables (the kernels' contract for them)."""
    n = cos.shape[0]
    pos = np.arange(seq)[None, :] if ids is None else np.asarray(ids).reshape(-1, seq)
    ok = (pos >= 0) & (pos < n)
    safe = np.where(ok, pos, 0)
    c = np.where(ok[..., None], cos[safe].astype(np.float64), np.nan)
    s = np.where(ok[..., None], sin[safe].astype(np.float64), np.nan)
    return c[:, :, None, :], s[:, :, None, :]


def rotate(x, c, s, interleaved: bool, rd=lambda a: a):
    """Pairs (a, b) -> (a c - b s, b c + a s) over the first 2 * c.shape[-1] features;
    `rd` rounds each product and sum (identity for the float64 truth)."""
    r = 2 * c.shape[-1]
    out = np.array(x, copy=True)
    if interleaved:
        a, b = x[..., 0:r:2], x[..., 1:r:2]
        out[..., 0:r:2], out[..., 1:r:2] = rd(rd(a * c) - rd(b * s)), rd(rd(b * c) + rd(a * s))
    else:
        a, b = x[..., : r // 2], x[..., r // 2: r]
        out[..., : r // 2], out[..., r // 2: r] = rd(rd(a * c) - rd(b * s)), rd(rd(b * c) + rd(a * s))
    return out


def truth(inp: dict, interleaved: bool) -> dict:
    c, s = table_rows_for(inp["cos"], inp["sin"], inp["q"].shape[1], inp["ids"])
    return {"q": rotate(inp["q"], c, s, interleaved), "k": rotate(inp["k"], c, s, interleaved),
            "dq": rotate(inp["gq"], c, -s, interleaved), "dk": rotate(inp["gk"], c, -s, interleaved)}


def naive(inp: dict, interleaved: bool, dtype: str) -> dict:
    rd = H.rounder(dtype)
    c, s = table_rows_for(inp["cos"], inp["sin"], inp["q"].shape[1], inp["ids"])
    c, s = rd(c), rd(s)  # the reference casts the tables to the input dtype
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    return {"q": rotate(f32(inp["q"]), c, s, interleaved, rd), "k": rotate(f32(inp["k"]), c, s, interleaved, rd),
            "dq": rotate(f32(inp["gq"]), c, -s, interleaved, rd),
            "dk": rotate(f32(inp["gk"]), c, -s, interleaved, rd)}


def rounded_truth_kernel(inp: dict, c: Case) -> dict:
    """An ideal kernel: the float64 truth rounded once to the storage dtype."""
    rd = H.rounder(c.dtype)
    return {k: rd(v) for k, v in truth(inp, c.interleaved).items()}


class GpuKernel:
    """Runs cuda/rotary forward on (q, k) and inverse on (dq_out, dk_out) on the device."""

    def __init__(self, cu):
        self.cu = cu

    def _rotate(self, a, b, inp, c: Case, inverse: bool):
        cu, dt = self.cu, c.dtype
        bufs = []

        def dev(arr, shift=c.shift):
            buf = H.ShiftedBuffer.of(cu, arr, shift)
            bufs.append(buf)
            return buf

        try:
            A, B = dev(H.encode(a, dt)), dev(H.encode(b, dt))
            if c.inplace:
                OA, OB = A, B
            else:
                OA = H.ShiftedBuffer(cu, a.shape, H.storage_numpy_dtype(dt), c.shift)
                OB = H.ShiftedBuffer(cu, b.shape, H.storage_numpy_dtype(dt), c.shift)
                bufs += [OA, OB]
                cu.fill(OA.ptr, b"\xff", OA.nbytes)
                cu.fill(OB.ptr, b"\xff", OB.nbytes)
            cos, sin = dev(inp["cos"], 0), dev(inp["sin"], 0)
            ids = dev(inp["ids"], 0) if inp["ids"] is not None else None
            hk = c.heads_k
            cu.rotary_apply(A.ptr, OA.ptr, B.ptr if hk else 0, OB.ptr if hk else 0, cos.ptr, sin.ptr,
                          ids.ptr if ids is not None else 0, c.batch, c.seq, c.heads_q, hk, c.head_dim, c.rot_dim,
                          inp["cos"].shape[0], 0 if ids is None else inp["ids"].shape[0], c.interleaved, inverse, dt)
            cu.synchronize()
            return H.decode(OA.numpy(), dt), H.decode(OB.numpy(), dt) if hk else np.zeros(b.shape)
        finally:
            for buf in bufs:
                buf.free()

    def __call__(self, inp: dict, c: Case) -> dict:
        q, k = self._rotate(inp["q"], inp["k"], inp, c, inverse=False)
        dq, dk = self._rotate(inp["gq"], inp["gk"], inp, c, inverse=True)
        return {"q": q, "k": k, "dq": dq, "dk": dk}


def check_case(kernel, c: Case, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, c.batch, c.seq, c.heads_q, c.heads_k, c.head_dim, c.rot_dim])
    inp = make_inputs(rng, c)
    t, nv = truth(inp, c.interleaved), naive(inp, c.interleaved, c.dtype)
    got = kernel(inp, c)
    results = [H.rule_result(k, got[k], t[k], nv[k]) for k in ("q", "k", "dq", "dk")]
    return {"case": c.label(), "passed": all(r["passed"] for r in results), "results": results}


def run(out_dir: str, kernel=None, cases=None) -> dict:
    if kernel is None:
        kernel = GpuKernel(H.cuda_module())
    checked = [check_case(kernel, c) for c in (CASES if cases is None else cases)]
    return H.summarize("rotary", checked, out_dir)
