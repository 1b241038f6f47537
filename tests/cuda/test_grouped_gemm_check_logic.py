"""CPU test of bench/gpu/check_grouped_gemm.py: run with an emulated ``llmpre._cuda``
(device memory as numpy byte arrays, the grouped GEMM done in numpy), an ideal kernel
(fp32 accumulation, one bf16 rounding) passes every case and kernels with typical bugs
(rows past offsets[experts] left unwritten, a group multiplied by its neighbour's
matrix, bf16 accumulation) fail. No GPU, no CUDA build."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench" / "gpu"))
import check_grouped_gemm as cgg  # noqa: E402
import harness as H  # noqa: E402


class FakeCuda:
    """The parts of llmpre._cuda the check uses, over host memory; `bug` picks a fault."""

    def __init__(self, bug=None):
        self.mem, self.next, self.bug = {}, 1 << 20, bug

    def malloc(self, nbytes):
        ptr = self.next
        self.next += (int(nbytes) + 255) // 256 * 256 + 256
        self.mem[ptr] = np.zeros(max(int(nbytes), 1), np.uint8)
        return ptr

    def free(self, ptr):
        self.mem.pop(ptr, None)

    def _view(self, ptr):
        return self.mem[ptr]

    def upload(self, ptr, array):
        raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        self._view(ptr)[:raw.size] = raw

    def download(self, out, ptr):
        raw = out.view(np.uint8).reshape(-1)
        raw[:] = self._view(ptr)[:raw.size]

    def fill(self, ptr, pattern, count, stream=0):
        self._view(ptr)[:count] = np.frombuffer(pattern * count, np.uint8)[:count]

    def synchronize(self):
        pass

    def grouped_gemm_workspace_bytes(self, experts):
        return 64 * experts

    def grouped_gemm_bf16(self, a, b_pointers, c, offsets, workspace, workspace_bytes, rows, n, k, experts,
                          b_transposed=False, accumulate=False, stream=0):
        if n % 8 or k % 8:
            raise ValueError("grouped_gemm: n and k must be multiples of 8")
        offs = self._view(offsets)[:8 * (experts + 1)].view(np.int64)
        ptrs = self._view(b_pointers)[:8 * experts].view(np.uint64)
        av = H.from_bf16(self._view(a)[:2 * rows * k].view(np.uint16).reshape(rows, k))
        out = self._view(c)[:2 * rows * n].view(np.uint16).reshape(rows, n)
        for e in range(experts):
            lo, hi = int(offs[e]), int(offs[e + 1])
            src = ptrs[(e + 1) % experts] if self.bug == "wrong expert" and hi > lo else ptrs[e]
            b = H.from_bf16(self._view(int(src))[:2 * k * n].view(np.uint16).reshape((n, k) if b_transposed else (k, n)))
            if b_transposed:
                b = b.T if self.bug != "transpose ignored" else b.reshape(k, n)
            if self.bug == "bf16 accumulation":
                acc = np.zeros((hi - lo, n), np.float32)
                for j in range(0, k, 8):   # rounds the running sum every 8 terms
                    acc = H.rounder("bfloat16")(acc + av[lo:hi, j:j + 8] @ b[j:j + 8])
                res = acc
            else:
                res = av[lo:hi].astype(np.float32) @ b.astype(np.float32)
            if accumulate and self.bug != "accumulate ignored":
                res = res + H.from_bf16(out[lo:hi]).astype(np.float32)
            out[lo:hi] = H.to_bf16(res)
        if self.bug != "dropped rows unwritten" and not accumulate:
            out[int(offs[experts]):] = 0

    def grouped_gemm_weight_grad_bf16(self, a, b, c_pointers, offsets, workspace, workspace_bytes, rows, m, n,
                                      experts, stream=0):
        offs = self._view(offsets)[:8 * (experts + 1)].view(np.int64)
        ptrs = self._view(c_pointers)[:8 * experts].view(np.uint64)
        av = H.from_bf16(self._view(a)[:2 * rows * m].view(np.uint16).reshape(rows, m)).astype(np.float32)
        bv = H.from_bf16(self._view(b)[:2 * rows * n].view(np.uint16).reshape(rows, n)).astype(np.float32)
        for e in range(experts):
            lo, hi = int(offs[e]), int(offs[e + 1])
            if hi == lo and self.bug == "empty expert unwritten":
                continue
            out = self._view(int(ptrs[e]))[:2 * m * n].view(np.uint16).reshape(m, n)
            out[:] = H.to_bf16(av[lo:hi].T @ bv[lo:hi])


@pytest.fixture
def small_cases(monkeypatch):
    monkeypatch.setattr(cgg, "CASES", [c for c in cgg.CASES if c[3] * c[4] <= 1 << 20])   # keep it fast
    monkeypatch.setattr(cgg, "BACKWARD_CASES", [c for c in cgg.BACKWARD_CASES if c[3] * c[4] <= 1 << 20])


def test_ideal_kernel_passes(small_cases, tmp_path, monkeypatch):
    monkeypatch.setattr(H, "cuda_module", lambda: FakeCuda())
    res = cgg.run(str(tmp_path))
    assert res["passed"], res
    assert len(res["cases"]) == len(cgg.CASES) + 3 * len(cgg.BACKWARD_CASES) + 1


@pytest.mark.parametrize("bug", ["dropped rows unwritten", "wrong expert", "bf16 accumulation", "transpose ignored",
                                 "accumulate ignored", "empty expert unwritten"])
def test_buggy_kernels_fail(small_cases, tmp_path, monkeypatch, bug):
    monkeypatch.setattr(H, "cuda_module", lambda: FakeCuda(bug))
    res = cgg.run(str(tmp_path))
    assert not res["passed"]
    assert any(not r["passed"] for r in res["cases"] if "refused" not in r["name"])
