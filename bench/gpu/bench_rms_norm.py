"""Benchmark of the RMSNorm kernels (cuda/rms_norm) against PyTorch on the same GPU.

Bytes that must move (the GB/s and % of peak count only these; the backward's
fp32 workspace traffic is overhead it pays, not credit):
  forward:  read x, write y ([rows, hidden] each), read weight, write inv_rms (fp32)
  backward: read x and dy, write dx, read weight, write dweight, read inv_rms
PyTorch baseline (when importable): torch.nn.functional.rms_norm forward, and
the backward of it through autograd (dx and dweight) with the graph kept.
Writes <out>/bench_rms_norm.{json,md} and updates <out>/summary_kernels_i.md (the three
kernels of this series in one table, for bench/RESULTS.md); run by bench/gpu/run.sh after its check.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

SUMMARY = ("rms_norm", "rotary", "cross_entropy")  # benchmarks in <out>/summary_kernels_i.md

EPS = 1e-6
ROWS = 16384  # e.g. batch 4 x seq 4096 tokens
SHAPES = [(ROWS, h, "bfloat16") for h in (1024, 2048, 4096, 5120, 8192, 16384)] + [
    (ROWS, 4096, "float16"), (ROWS, 4096, "float32"), (ROWS, 8192, "float32")]


def bytes_forward(rows: int, hidden: int, e: int) -> int:
    return 2 * rows * hidden * e + hidden * e + 4 * rows


def bytes_backward(rows: int, hidden: int, e: int) -> int:
    return 3 * rows * hidden * e + 2 * hidden * e + 4 * rows


def _torch_times(torch, cu, rows, hidden, dtype):
    F = torch.nn.functional
    if not hasattr(F, "rms_norm"):
        return None, None
    td = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    x = torch.randn(rows, hidden, device="cuda", dtype=td)
    w = (1 + 0.1 * torch.randn(hidden, device="cuda")).to(td)
    dy = torch.randn(rows, hidden, device="cuda", dtype=td)
    fwd = H.time_ms(cu, lambda: F.rms_norm(x, (hidden,), w, EPS))
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = F.rms_norm(xr, (hidden,), wr, EPS)
    bwd = H.time_ms(cu, lambda: torch.autograd.grad(y, (xr, wr), dy, retain_graph=True))
    return fwd, bwd


def run(out_dir: str) -> dict:
    cu = H.cuda_module()
    device = cu.device_name(0)
    peak, peak_label = H.hbm_peak(device)
    torch, why = H.torch_or_reason()
    rng = np.random.default_rng(0)
    rows_out = []
    for rows, hidden, dtype in SHAPES:
        e = 4 if dtype == "float32" else 2
        st = H.storage_numpy_dtype(dtype)
        bufs = {"x": H.DeviceBuffer.of(cu, H.encode(rng.standard_normal((rows, hidden), dtype=np.float32), dtype)),
                "w": H.DeviceBuffer.of(cu, H.encode(1 + 0.1 * rng.standard_normal(hidden), dtype)),
                "dy": H.DeviceBuffer.of(cu, H.encode(rng.standard_normal((rows, hidden), dtype=np.float32), dtype)),
                "y": H.DeviceBuffer(cu, (rows, hidden), st), "dx": H.DeviceBuffer(cu, (rows, hidden), st),
                "dw": H.DeviceBuffer(cu, (hidden,), st), "inv": H.DeviceBuffer(cu, (rows,), np.float32)}
        ws_bytes = cu.rms_norm_backward_workspace_bytes(rows, hidden, dtype)
        bufs["ws"] = H.DeviceBuffer(cu, (max(ws_bytes, 4) // 4,), np.float32)
        b = {k: v.ptr for k, v in bufs.items()}
        try:
            fwd = H.time_ms(cu, lambda: cu.rms_norm_forward(b["x"], b["w"], b["y"], b["inv"], rows, hidden, EPS,
                                                           dtype))
            bwd = H.time_ms(cu, lambda: cu.rms_norm_backward(b["x"], b["w"], b["inv"], b["dy"], b["dx"], b["dw"],
                                                            b["ws"], ws_bytes, rows, hidden, dtype))
        finally:
            for v in bufs.values():
                v.free()
        t_fwd, t_bwd = _torch_times(torch, cu, rows, hidden, dtype) if torch else (None, None)
        shape = f"{rows}x{hidden}"
        rows_out.append(H.bandwidth_row("forward", dtype, shape, bytes_forward(rows, hidden, e), fwd, peak, t_fwd))
        rows_out.append(H.bandwidth_row("backward", dtype, shape, bytes_backward(rows, hidden, e), bwd, peak,
                                        t_bwd))
        print(rows_out[-2], rows_out[-1], sep="\n", flush=True)
    torch_note = (f"PyTorch {torch.__version__}: F.rms_norm, autograd backward." if torch
                  else f"No PyTorch baseline: {why}.")
    md = H.bandwidth_markdown("RMSNorm (cuda/rms_norm)", device, peak_label, rows_out,
                              "Bytes: x and y (+ dy, dx in the backward), weight, dweight, inv_rms.", torch_note)
    result = {"device": device, "peak": peak_label, "torch": torch_note, "rows": rows_out, "markdown": md}
    H.write_json(os.path.join(out_dir, "bench_rms_norm.json"), result)
    H.write_text(os.path.join(out_dir, "bench_rms_norm.md"), md)
    H.write_summary(out_dir, SUMMARY, "summary_kernels_i.md", "CUDA kernels I: RMSNorm, RoPE, cross-entropy")
    return result
