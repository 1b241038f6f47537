"""Benchmark of the rotary kernels (cuda/rotary) against PyTorch on the same GPU.

One launch rotates q and k. Bytes that must move: read and write q and k
([batch, seq, heads, head_dim] each), plus the cos/sin rows of the positions
used once (seq x rot_dim x 4 bytes); the backward moves the same for dq, dk.
PyTorch baseline (when importable): Hugging Face's formula
q * cos + rotate_half(q) * sin (full-width cos/sin in the activation dtype) for
full rotate_half rotary, the same pairwise formula written with slicing for
the interleaved / partial layouts; backward through autograd.
Writes <out>/bench_rotary.{json,md} and updates <out>/summary_kernels_i.md; run by
bench/gpu/run.sh after its check.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

SUMMARY = ("rms_norm", "rotary", "cross_entropy")  # benchmarks in <out>/summary_kernels_i.md
from check_rotary import tables  # noqa: E402

# (batch, seq, heads_q, heads_k, head_dim, rot_dim, interleaved, label)
SHAPES = [
    (4, 4096, 32, 8, 128, 128, False, "Llama-3-8B"),
    (4, 4096, 32, 32, 128, 128, False, "Llama-2-7B"),
    (4, 4096, 28, 4, 128, 128, False, "Qwen2-7B"),
    (4, 4096, 32, 2, 128, 64, True, "ChatGLM3-6B"),
    (8, 2048, 16, 16, 64, 64, False, "head_dim 64"),
]
DTYPE = "bfloat16"


def bytes_moved(b, s, hq, hk, d, r, e) -> int:
    return 2 * b * s * (hq + hk) * d * e + s * r * 4


def _torch_rotary(torch, x, c, s, interleaved: bool, r: int):
    """c, s: [1, seq, 1, r/2] in x's dtype."""
    if not interleaved and r == x.shape[-1]:  # Hugging Face's apply_rotary_pos_emb
        cf, sf = torch.cat((c, c), -1), torch.cat((s, s), -1)
        x1, x2 = x[..., : r // 2], x[..., r // 2:]
        return x * cf + torch.cat((-x2, x1), -1) * sf
    rot, rest = x[..., :r], x[..., r:]
    if interleaved:
        a, b = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((a * c - b * s, b * c + a * s), -1).flatten(-2)
    else:
        a, b = rot[..., : r // 2], rot[..., r // 2:]
        out = torch.cat((a * c - b * s, b * c + a * s), -1)
    return out if rest.shape[-1] == 0 else torch.cat((out, rest), -1)


def _torch_times(torch, cu, b, s, hq, hk, d, r, interleaved, cos, sin):
    td = torch.bfloat16
    q = torch.randn(b, s, hq, d, device="cuda", dtype=td)
    k = torch.randn(b, s, hk, d, device="cuda", dtype=td)
    c = torch.from_numpy(cos[:s]).to("cuda", td)[None, :, None, :]
    sn = torch.from_numpy(sin[:s]).to("cuda", td)[None, :, None, :]
    fwd = H.time_ms(cu, lambda: (_torch_rotary(torch, q, c, sn, interleaved, r),
                                 _torch_rotary(torch, k, c, sn, interleaved, r)))
    qr, kr = q.clone().requires_grad_(), k.clone().requires_grad_()
    qo, ko = _torch_rotary(torch, qr, c, sn, interleaved, r), _torch_rotary(torch, kr, c, sn, interleaved, r)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    bwd = H.time_ms(cu, lambda: torch.autograd.grad((qo, ko), (qr, kr), (gq, gk), retain_graph=True))
    return fwd, bwd


def run(out_dir: str) -> dict:
    cu = H.cuda_module()
    device = cu.device_name(0)
    peak, peak_label = H.hbm_peak(device)
    torch, why = H.torch_or_reason()
    rng = np.random.default_rng(0)
    rows_out = []
    for b, s, hq, hk, d, r, inter, label in SHAPES:
        cos, sin = tables(r, s)
        st = H.storage_numpy_dtype(DTYPE)
        bufs = {"q": H.DeviceBuffer.of(cu, H.encode(rng.standard_normal((b, s, hq, d), dtype=np.float32), DTYPE)),
                "k": H.DeviceBuffer.of(cu, H.encode(rng.standard_normal((b, s, hk, d), dtype=np.float32), DTYPE)),
                "qo": H.DeviceBuffer(cu, (b, s, hq, d), st), "ko": H.DeviceBuffer(cu, (b, s, hk, d), st),
                "cos": H.DeviceBuffer.of(cu, cos), "sin": H.DeviceBuffer.of(cu, sin)}
        p = {k: v.ptr for k, v in bufs.items()}

        def call(inverse: bool):
            cu.rotary_apply(p["q"], p["qo"], p["k"], p["ko"], p["cos"], p["sin"], 0, b, s, hq, hk, d, r, s, 0,
                          inter, inverse, DTYPE)

        try:
            fwd = H.time_ms(cu, lambda: call(False))
            bwd = H.time_ms(cu, lambda: call(True))  # the backward is the inverse rotation of (dq, dk)
        finally:
            for v in bufs.values():
                v.free()
        t_fwd, t_bwd = _torch_times(torch, cu, b, s, hq, hk, d, r, inter, cos, sin) if torch else (None, None)
        shape = f"{label}: {b}x{s} h{hq}/{hk} d{d} r{r}{' interleaved' if inter else ''}"
        nbytes = bytes_moved(b, s, hq, hk, d, r, 2)
        rows_out.append(H.bandwidth_row("forward", DTYPE, shape, nbytes, fwd, peak, t_fwd))
        rows_out.append(H.bandwidth_row("backward", DTYPE, shape, nbytes, bwd, peak, t_bwd))
        print(rows_out[-2], rows_out[-1], sep="\n", flush=True)
    torch_note = (f"PyTorch {torch.__version__}: q*cos + rotate_half(q)*sin (HF), autograd backward." if torch
                  else f"No PyTorch baseline: {why}.")
    md = H.bandwidth_markdown("RoPE (cuda/rotary), q and k in one launch", device, peak_label, rows_out,
                              "Bytes: q, k read and written, plus seq x rot_dim x 4 of tables.", torch_note)
    result = {"device": device, "peak": peak_label, "torch": torch_note, "rows": rows_out, "markdown": md}
    H.write_json(os.path.join(out_dir, "bench_rotary.json"), result)
    H.write_text(os.path.join(out_dir, "bench_rotary.md"), md)
    H.write_summary(out_dir, SUMMARY, "summary_kernels_i.md", "CUDA kernels I: RMSNorm, RoPE, cross-entropy")
    return result
