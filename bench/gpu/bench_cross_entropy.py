"""Benchmark of the fused cross-entropy kernels (cuda/cross_entropy) against
PyTorch on the same GPU.

Bytes that must move: forward reads the logits once ([rows, vocab]) plus
labels (int64), writes loss and stats (fp32); backward reads the logits and
writes dlogits, plus labels, stats and dloss. Rows whose label is ignored
(5% here) still count their full row in both (the kernels skip reading them,
which is their gain).
PyTorch baseline (when importable): torch.nn.functional.cross_entropy(...,
reduction="none", ignore_index=-100) and its autograd backward with a per-row
upstream gradient.
Writes <out>/bench_cross_entropy.{json,md} and updates <out>/summary_kernels_i.md; run by
bench/gpu/run.sh after its check.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

SUMMARY = ("rms_norm", "rotary", "cross_entropy")  # benchmarks in <out>/summary_kernels_i.md

IGNORE = -100
SHAPES = [(8192, 151936, "bfloat16"), (8192, 128256, "bfloat16"), (8192, 50257, "bfloat16"),
          (4096, 151936, "float32")]


def bytes_forward(rows: int, vocab: int, e: int) -> int:
    return rows * vocab * e + rows * (8 + 4 + 8)


def bytes_backward(rows: int, vocab: int, e: int) -> int:
    return 2 * rows * vocab * e + rows * (8 + 8 + 4)


def _device_inputs(cu, rng, rows, vocab, dtype):
    # Logits generated in row chunks: a float64 [8192, 151936] array would need 10 GB.
    st = H.storage_numpy_dtype(dtype)
    x = H.DeviceBuffer(cu, (rows, vocab), st)
    step = max(1, (64 << 20) // (vocab * 8))
    for r0 in range(0, rows, step):
        chunk = H.encode(rng.standard_normal((min(step, rows - r0), vocab), dtype=np.float32) * 2, dtype)
        cu.upload(x.ptr + r0 * vocab * np.dtype(st).itemsize, chunk)
    labels = rng.integers(0, vocab, size=rows).astype(np.int64)
    labels[rng.random(rows) < 0.05] = IGNORE
    return x, labels


def _torch_times(torch, cu, labels_np, rows, vocab, dtype):
    F = torch.nn.functional
    td = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    logits = torch.randn(rows, vocab, device="cuda", dtype=td) * 2
    labels = torch.from_numpy(labels_np).cuda()
    fwd = H.time_ms(cu, lambda: F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE))
    lr = logits.clone().requires_grad_()
    loss = F.cross_entropy(lr, labels, reduction="none", ignore_index=IGNORE)
    dloss = torch.rand(rows, device="cuda", dtype=loss.dtype)
    bwd = H.time_ms(cu, lambda: torch.autograd.grad(loss, lr, dloss, retain_graph=True))
    return fwd, bwd


def run(out_dir: str) -> dict:
    cu = H.cuda_module()
    device = cu.device_name(0)
    peak, peak_label = H.hbm_peak(device)
    torch, why = H.torch_or_reason()
    rng = np.random.default_rng(0)
    rows_out = []
    for rows, vocab, dtype in SHAPES:
        e = 4 if dtype == "float32" else 2
        x, labels = _device_inputs(cu, rng, rows, vocab, dtype)
        bufs = {"x": x, "labels": H.DeviceBuffer.of(cu, labels),
                "dloss": H.DeviceBuffer.of(cu, rng.random(rows).astype(np.float32)),
                "loss": H.DeviceBuffer(cu, (rows,), np.float32), "stats": H.DeviceBuffer(cu, (rows, 2), np.float32),
                "dx": H.DeviceBuffer(cu, (rows, vocab), H.storage_numpy_dtype(dtype))}
        p = {k: v.ptr for k, v in bufs.items()}
        try:
            fwd = H.time_ms(cu, lambda: cu.cross_entropy_forward(p["x"], p["labels"], p["loss"], p["stats"], rows,
                                                                 vocab, IGNORE, dtype))
            bwd = H.time_ms(cu, lambda: cu.cross_entropy_backward(p["x"], p["labels"], p["stats"], p["dloss"],
                                                                  p["dx"], rows, vocab, IGNORE, dtype))
        finally:
            for v in bufs.values():
                v.free()
        t_fwd, t_bwd = _torch_times(torch, cu, labels, rows, vocab, dtype) if torch else (None, None)
        if torch:
            torch.cuda.empty_cache()
        shape = f"{rows}x{vocab}"
        rows_out.append(H.bandwidth_row("forward", dtype, shape, bytes_forward(rows, vocab, e), fwd, peak, t_fwd))
        rows_out.append(H.bandwidth_row("backward", dtype, shape, bytes_backward(rows, vocab, e), bwd, peak, t_bwd))
        print(rows_out[-2], rows_out[-1], sep="\n", flush=True)
    torch_note = (f"PyTorch {torch.__version__}: F.cross_entropy(reduction='none'), autograd backward." if torch
                  else f"No PyTorch baseline: {why}.")
    md = H.bandwidth_markdown("Fused cross-entropy (cuda/cross_entropy)", device, peak_label, rows_out,
                              "Bytes: logits once (+ dlogits in the backward), labels, loss/stats, dloss.",
                              torch_note)
    result = {"device": device, "peak": peak_label, "torch": torch_note, "rows": rows_out, "markdown": md}
    H.write_json(os.path.join(out_dir, "bench_cross_entropy.json"), result)
    H.write_text(os.path.join(out_dir, "bench_cross_entropy.md"), md)
    H.write_summary(out_dir, SUMMARY, "summary_kernels_i.md", "CUDA kernels I: RMSNorm, RoPE, cross-entropy")
    return result
