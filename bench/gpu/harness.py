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


# ---------------------------------------------------------------------------
# Storage dtypes, the error rule as a result record, HBM peaks, output files
# (added for the RMSNorm / RoPE / cross-entropy checks and benchmarks).

DTYPES = ("float32", "float16", "bfloat16")
EPS32 = 2.0 ** -23


def encode(x, dtype: str) -> np.ndarray:
    """Values -> the array to upload for `dtype` storage (bf16 as uint16 bits, round to nearest even)."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return np.ascontiguousarray(x)
    if dtype == "float16":
        return np.ascontiguousarray(x.astype(np.float16))
    if dtype == "bfloat16":
        return to_bf16(x)
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def decode(stored: np.ndarray, dtype: str) -> np.ndarray:
    """A downloaded `dtype` array -> float64 values."""
    if dtype == "bfloat16":
        return from_bf16(stored).astype(np.float64)
    return np.asarray(stored).astype(np.float64)


def storage_numpy_dtype(dtype: str):
    return {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]


def rounder(dtype: str):
    """Rounds float arrays to the nearest `dtype` value, returned as float32: the
    building block of the naive implementations (each elementary op rounded)."""
    if dtype == "float32":
        return lambda a: np.asarray(a, dtype=np.float32)
    if dtype == "float16":
        return lambda a: np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return lambda a: from_bf16(to_bf16(np.asarray(a, dtype=np.float32)).reshape(np.shape(a)))
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def rule_result(name: str, got, truth, naive, ulps: float = 2.0) -> dict:
    """The house rule for one output or gradient, as a record:
    max|got - truth| <= 2 * max|naive - truth| + atol, atol = `ulps` fp32 ulps of
    max|truth| (fp32 rounding noise; it only matters when the naive error is itself
    that small; callers that pass more than 2 say why). Non-finite kernel values where
    the truth is finite fail; a non-finite naive value counts as an infinite naive error."""
    got, truth, naive = (np.asarray(a, dtype=np.float64) for a in (got, truth, naive))
    if got.shape != truth.shape or naive.shape != truth.shape:
        return {"name": name, "passed": False,
                "why": f"shapes differ: kernel {got.shape}, truth {truth.shape}, naive {naive.shape}"}
    if got.size == 0:
        return {"name": name, "passed": True, "err_kernel": 0.0, "err_naive": 0.0, "atol": 0.0}
    finite = np.isfinite(truth)
    bad = int(np.count_nonzero(finite & ~np.isfinite(got)))
    err_k = float(np.max(np.abs(got - truth), where=finite, initial=0.0))
    err_n = float(np.max(np.nan_to_num(np.abs(naive - truth), nan=np.inf), where=finite, initial=0.0))
    atol = ulps * EPS32 * float(np.max(np.abs(truth), where=finite, initial=0.0))
    same_nonfinite = bool(np.all(np.isnan(got[~finite]) == np.isnan(truth[~finite])))
    passed = bad == 0 and same_nonfinite and within_rule(err_k, err_n, atol)
    out = {"name": name, "passed": passed, "err_kernel": err_k, "err_naive": err_n, "atol": atol}
    if bad:
        out["why"] = f"{bad} non-finite kernel values where the truth is finite"
    elif not same_nonfinite:
        out["why"] = "NaN pattern differs from the truth"
    elif not passed:
        out["why"] = f"kernel error {err_k:.3e} > 2 x naive {err_n:.3e} + atol {atol:.3e}"
    return out


def summarize(name: str, checked: list, out_dir: str | None) -> dict:
    """The verdict of one op's GPU check over its checked cases (each ``{"case", "passed",
    "results"}``): passed, the case count and the failed results; with ``out_dir`` the whole
    record goes to ``<out_dir>/check_<name>.json``."""
    summary = {"passed": all(c["passed"] for c in checked), "cases": len(checked),
               "failures": [{"case": c["case"], "results": [r for r in c["results"] if not r["passed"]]}
                            for c in checked if not c["passed"]]}
    if out_dir:
        write_json(os.path.join(out_dir, f"check_{name}.json"), {**summary, "details": checked})
    return summary


class ShiftedBuffer(DeviceBuffer):
    """A DeviceBuffer whose data starts `shift` bytes past a fresh (256-byte aligned)
    allocation, to drive the kernels' unaligned paths."""

    def __init__(self, cu, shape, dtype, shift: int):
        self.cu, self.shape, self.dtype = cu, tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._base = cu.malloc(self.nbytes + shift)
        self.ptr = self._base + shift

    @classmethod
    def of(cls, cu, array: np.ndarray, shift: int = 0) -> "ShiftedBuffer":
        array = np.ascontiguousarray(array)
        buf = cls(cu, array.shape, array.dtype, shift)
        cu.upload(buf.ptr, array)
        return buf

    def free(self) -> None:
        if getattr(self, "_base", 0):
            self.cu.free(self._base)
            self._base = 0
            self.ptr = 0


# Peak HBM bandwidth (bytes/s) by device name, first match wins; datasheet values.
HBM_PEAKS = (
    ("GH200", 4.0e12, "GH200 (96 GB HBM3) 4.0 TB/s"),
    ("H100 PCIe", 2.0e12, "H100 PCIe 2.0 TB/s"),
    ("H100 NVL", 3.9e12, "H100 NVL 3.9 TB/s"),
    ("H100", 3.35e12, "H100 SXM 3.35 TB/s"),
    ("H200", 4.8e12, "H200 4.8 TB/s"),
    ("A100-SXM4-80GB", 2.039e12, "A100 SXM 80GB 2.04 TB/s"),
    ("A100 80GB PCIe", 1.935e12, "A100 PCIe 80GB 1.94 TB/s"),
    ("A100", 1.555e12, "A100 40GB 1.56 TB/s"),
    ("B200", 8.0e12, "B200 8.0 TB/s"),
    ("L40S", 0.864e12, "L40S 864 GB/s"),
)


def hbm_peak(device_name: str | None):
    """(bytes/s, label) of the device's peak memory bandwidth, or (None, why)."""
    name = device_name or ""
    for key, peak, label in HBM_PEAKS:
        if key in name:
            return peak, label
    return None, f"no peak known for {name!r}; % of peak not reported"


def write_text(path: str, text: str) -> None:
    """Write to a temp name, then rename (never a half-written result file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    import json

    write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def torch_or_reason():
    """(torch, None) when torch with CUDA is importable, else (None, why): the
    benchmarks' PyTorch baselines are optional."""
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means no baseline
        return None, f"torch not importable ({type(e).__name__}: {e})"
    if not torch.cuda.is_available():
        return None, "torch has no CUDA device"
    return torch, None


def bandwidth_row(op: str, dtype: str, shape: str, nbytes: int, ms: float, peak, torch_ms=None) -> dict:
    """One benchmark row: GB/s of the bytes that must move, % of the HBM peak, and
    PyTorch's time for the same work in the same run (speedup = torch_ms / ms)."""
    gbs = nbytes / (ms * 1e-3) / 1e9
    row = {"op": op, "dtype": dtype, "shape": shape, "mbytes": nbytes / 1e6, "ms": ms, "gbs": gbs,
           "pct_peak": 100.0 * gbs * 1e9 / peak if peak else None}
    if torch_ms is not None:
        row.update(torch_ms=torch_ms, torch_gbs=nbytes / (torch_ms * 1e-3) / 1e9, speedup=torch_ms / ms)
    return row


def bandwidth_markdown(title: str, device: str, peak_label: str, rows, bytes_note: str, torch_note: str) -> str:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    table = markdown_table(
        ["op", "dtype", "shape", "MB moved", "ms", "GB/s", "% of peak", "torch ms", "torch GB/s", "vs torch"],
        [[r["op"], r["dtype"], r["shape"], f(r["mbytes"], ".1f"), f(r["ms"], ".4f"), f(r["gbs"], ".0f"),
          f(r["pct_peak"], ".1f"), f(r.get("torch_ms"), ".4f"), f(r.get("torch_gbs"), ".0f"),
          "n/a" if r.get("speedup") is None else f"{r['speedup']:.2f}x"] for r in rows])
    return (f"### {title}\n\n{device}; peak used: {peak_label}. {bytes_note} {torch_note} Times are medians "
            f"of CUDA-event timings after warm-up, each run after an L2 flush.\n\n{table}")


def write_summary(out_dir: str, names, filename: str, title: str) -> str:
    """One compact markdown table over the bench_<name>.json files present in
    out_dir (each benchmark calls it after writing its own, so the last one
    leaves the complete table), ready to paste into bench/RESULTS.md."""
    import json

    rows, device, peak = [], None, None
    for name in names:
        path = os.path.join(out_dir, f"bench_{name}.json")
        if not os.path.exists(path):
            continue
        with open(path) as fh:
            res = json.load(fh)
        device, peak = res["device"], res["peak"]
        for r in res["rows"]:
            rows.append([name, r["op"], r["dtype"], r["shape"], f"{r['gbs']:.0f}",
                         "n/a" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}",
                         "n/a" if r.get("speedup") is None else f"{r['speedup']:.2f}x"])
    import datetime

    text = (f"### {title}\n\n{device}, {datetime.date.today().isoformat()}; % of peak against {peak}; "
            f"'vs torch' = PyTorch time / ours in the same run.\n\n"
            + markdown_table(["kernel", "pass", "dtype", "shape", "GB/s", "% of peak", "vs torch"], rows))
    write_text(os.path.join(out_dir, filename), text)
    return text
