"""Framework-free GPU harness: device buffers from/to numpy, timing with CUDA
events (warm-up, L2 flush, median), and the error rule every kernel check uses.

Kernels are called through ``llmpre._cuda`` with device pointers as ints; no
Paddle, torch or CuPy is needed (torch, when present, only provides the
comparison baselines of the benchmarks).
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys

import numpy as np


def cuda_module():
    """``llmpre._cuda``: from the build tree bench/gpu/run.sh made, else the installed package."""
    where = os.environ.get("LLMPRE_CUDA_MODULE_DIR")
    if where:
        sys.path.insert(0, where)
        return importlib.import_module("_cuda")
    return importlib.import_module("llmpre._cuda")


def device_info(cu) -> dict:
    n = cu.device_count()
    return {"count": n, "name": cu.device_name(0) if n else None}


class DeviceBuffer:
    """A device allocation holding a numpy array's bytes."""

    def __init__(self, cu, shape, dtype):
        self.cu, self.shape, self.dtype = cu, tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.ptr = cu.malloc(self.nbytes)

    @classmethod
    def of(cls, cu, array: np.ndarray) -> "DeviceBuffer":
        array = np.ascontiguousarray(array)
        buf = cls(cu, array.shape, array.dtype)
        cu.upload(buf.ptr, array)
        return buf

    def numpy(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        self.cu.download(out, self.ptr)
        return out

    def zero(self) -> "DeviceBuffer":
        self.cu.fill(self.ptr, b"\0", self.nbytes)
        return self

    def free(self) -> None:
        if self.ptr:
            self.cu.free(self.ptr)
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


def time_ms(cu, fn, warmup: int = 5, iters: int = 20, flush_bytes: int = 256 << 20) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` runs, each after an L2 flush,
    timed with CUDA events around the kernel only."""
    scratch = cu.malloc(flush_bytes)
    start, stop = cu.event_create(), cu.event_create()
    try:
        for _ in range(warmup):
            fn()
        cu.synchronize()
        times = []
        for _ in range(iters):
            cu.flush_l2(scratch, flush_bytes)
            cu.event_record(start)
            fn()
            cu.event_record(stop)
            times.append(cu.event_elapsed_ms(start, stop))
        return statistics.median(times)
    finally:
        cu.event_destroy(start)
        cu.event_destroy(stop)
        cu.free(scratch)


# bf16 has no numpy dtype: stored as uint16 (the top half of an fp32).
def to_bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.uint32) << 16).view(np.float32)


def max_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0


def within_rule(err_kernel: float, err_naive: float, atol: float = 0.0) -> bool:
    """The house rule: the kernel's error against the fp32/fp64 reference is at most
    twice the error of a naive low-precision implementation (plus a stated atol)."""
    return err_kernel <= 2.0 * err_naive + atol
