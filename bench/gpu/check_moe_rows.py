"""GPU check of the MoE row moves (cuda/moe_rows) through ``llmpre._cuda``.

``gather_rows`` (``dst[r] = src[index[r]]``) must copy exactly; ``segment_sum_rows``
(``dst[t] = sum src[perm[j]]`` over ``j`` in ``starts[t]..starts[t+1]``) is held to the
house rule (``harness.rule_result``) against a float64 sum, with ``naive`` adding the rows
one by one in the storage dtype (a framework's scatter-add in bf16). Outputs are
NaN-filled first. Cases: the top-k routings of a MoE layer (each token's rows scattered by
expert order), tokens with no rows (a zero row), tokens with many, the three storage
dtypes, widths that are not a multiple of the 16-byte pack and shifted pointers (the
element-wise path), and ids outside the source, which must give a NaN row. ``bucket_starts``
(the starts from the sorted ids, as the grouped MLP's backward makes them) must equal numpy's
searchsorted exactly, and ``write_pointers`` (the experts' weight pointers, 300 of them: two
argument chunks) must write every value.
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
    topk: int
    width: int
    dtype: str
    shift: int = 0
    bad: bool = False     # one gather index and one perm entry outside the source

    def label(self) -> str:
        return (f"{self.dtype} tokens{self.tokens} top{self.topk} w{self.width}" + (f" shift={self.shift}" if self.shift else "")
                + (" bad ids" if self.bad else ""))


CASES = [
    Case(300, 8, 512, "bfloat16"),
    Case(257, 2, 4096, "bfloat16"),
    Case(64, 6, 136, "float16"),
    Case(50, 3, 72, "float32"),
    Case(40, 4, 100, "bfloat16"),
    Case(33, 2, 64, "bfloat16", shift=2),
    Case(20, 3, 32, "float32", bad=True),
    Case(1, 1, 8, "bfloat16"),
]


POINTERS = (np.arange(300, dtype=np.uint64) * np.uint64(4096) + np.uint64(0x7F0000001000))   # values, never read


def make_inputs(rng, c: Case) -> dict:
    """src [tokens, width]; index [rows]: each (token, slot) pair's token, rows sorted by a
    random expert (the MoE order; some tokens drop slots so a few have none); perm/starts: the
    rows of each token in row order; drows [rows, width]: the rows' gradients."""
    q = lambda a: H.decode(H.encode(a, c.dtype), c.dtype)  # noqa: E731
    pairs = np.repeat(np.arange(c.tokens), c.topk)
    keep = rng.random(pairs.size) > 0.1
    if c.tokens > 2:
        keep[pairs == 1] = False                       # a token with no rows
    pairs = pairs[keep]
    experts = rng.integers(0, 16, size=pairs.size)
    index = pairs[np.argsort(experts, kind="stable")].astype(np.int64)
    perm = np.argsort(index, kind="stable").astype(np.int64)
    starts = np.searchsorted(index[perm], np.arange(c.tokens + 1)).astype(np.int64)
    if c.bad and index.size > 3:
        index[0] = c.tokens                            # outside src
        perm[2] = index.size + 5                       # outside drows
    return {"src": q(rng.standard_normal((c.tokens, c.width))), "index": index, "perm": perm, "starts": starts,
            "drows": q(rng.standard_normal((index.size, c.width)))}


def _valid(ids, n):
    return (ids >= 0) & (ids < n)


def truth(inp: dict) -> dict:
    src, index, drows = inp["src"], inp["index"], inp["drows"]
    ok = _valid(index, src.shape[0])
    gathered = np.where(ok[:, None], src[np.where(ok, index, 0)], np.nan)
    return {"gathered": gathered, "summed": _segment_sum(drows, inp["perm"], inp["starts"], lambda a: a, np.float64),
            "starts": np.searchsorted(np.sort(index), np.arange(src.shape[0] + 1)).astype(np.int64)}


def _segment_sum(rows, perm, starts, rd, dtype):
    out = np.zeros((starts.size - 1, rows.shape[1]), dtype=dtype)
    ok = _valid(perm, rows.shape[0])
    for t in range(starts.size - 1):
        for j in range(starts[t], starts[t + 1]):
            out[t] = rd(out[t] + rows[perm[j]]) if ok[j] else np.nan
    return out


def naive(inp: dict, dtype: str) -> dict:
    t = truth(inp)
    rows = np.asarray(inp["drows"], dtype=np.float32)
    return {"gathered": t["gathered"], "summed": _segment_sum(rows, inp["perm"], inp["starts"], H.rounder(dtype), np.float32)}


def rounded_truth_kernel(inp: dict, c: Case) -> dict:
    """An ideal kernel: exact gathers, the float64 sums rounded once."""
    t = truth(inp)
    return {"gathered": t["gathered"], "summed": H.rounder(c.dtype)(t["summed"]), "starts": t["starts"],
            "pointers": POINTERS.copy()}


class GpuKernel:
    """Runs cuda/moe_rows gather and segment sum on the device."""

    def __init__(self, cu):
        self.cu = cu

    def __call__(self, inp: dict, c: Case) -> dict:
        cu, dt, bufs = self.cu, c.dtype, []
        rows = inp["index"].size

        def dev(arr, shift):
            buf = H.ShiftedBuffer.of(cu, arr, shift)
            bufs.append(buf)
            return buf

        def out(n):
            buf = H.ShiftedBuffer(cu, (n, c.width), H.storage_numpy_dtype(dt), c.shift)
            bufs.append(buf)
            cu.fill(buf.ptr, b"\xff", buf.nbytes)
            return buf

        try:
            src, drows = dev(H.encode(inp["src"], dt), c.shift), dev(H.encode(inp["drows"], dt), c.shift)
            index, perm, starts = dev(inp["index"], 0), dev(inp["perm"], 0), dev(inp["starts"], 0)
            gathered, summed = out(rows), out(c.tokens)
            cu.gather_rows(src.ptr, index.ptr, gathered.ptr, rows, c.tokens, c.width, dt)
            cu.segment_sum_rows(drows.ptr, perm.ptr, starts.ptr, summed.ptr, rows, c.tokens, c.width, dt)
            srt = dev(np.sort(inp["index"]), 0)
            got_starts = H.DeviceBuffer(cu, (c.tokens + 1,), np.int64)
            bufs.append(got_starts)
            cu.fill(got_starts.ptr, b"\xff", got_starts.nbytes)
            cu.bucket_starts(srt.ptr, got_starts.ptr, rows, c.tokens)
            ptrs = H.DeviceBuffer(cu, (POINTERS.size,), np.uint64)
            bufs.append(ptrs)
            cu.fill(ptrs.ptr, b"\xff", ptrs.nbytes)
            cu.write_pointers(ptrs.ptr, [int(v) for v in POINTERS])
            cu.synchronize()
            return {"gathered": H.decode(gathered.numpy(), dt), "summed": H.decode(summed.numpy(), dt),
                    "starts": got_starts.numpy(), "pointers": ptrs.numpy()}
        finally:
            for buf in bufs:
                buf.free()


def check_case(kernel, c: Case, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, c.tokens, c.topk, c.width, c.shift])
    inp = make_inputs(rng, c)
    t, nv = truth(inp), naive(inp, c.dtype)
    got = kernel(inp, c)
    results = [H.rule_result("summed", got["summed"], t["summed"], nv["summed"])]
    exact = got["gathered"].shape == t["gathered"].shape and bool(
        np.array_equal(got["gathered"], t["gathered"], equal_nan=True))
    results.append({"name": "gathered", "passed": exact, **({} if exact else {"why": "not an exact copy (or no NaN row for a bad index)"})})
    same = bool(np.array_equal(got["pointers"], POINTERS))
    results.append({"name": "write_pointers", "passed": same, **({} if same else {"why": "values differ"})})
    same = bool(np.array_equal(got["starts"], t["starts"]))
    results.append({"name": "bucket starts", "passed": same, **({} if same else {"why": "differ from searchsorted"})})
    return {"case": c.label(), "passed": all(r["passed"] for r in results), "results": results}


def run(out_dir: str, kernel=None, cases=None) -> dict:
    if kernel is None:
        kernel = GpuKernel(H.cuda_module())
    checked = [check_case(kernel, c) for c in (CASES if cases is None else cases)]
    return H.summarize("moe_rows", checked, out_dir)


if __name__ == "__main__":
    res = run(os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "out")))
    print(res)
    sys.exit(0 if res["passed"] else 1)
