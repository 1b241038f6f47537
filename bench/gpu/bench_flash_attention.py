"""Benchmark of the CUDA flash attention against PyTorch's
``scaled_dot_product_attention`` (flash and cuDNN backends) on the same GPU in
the same run.

Shapes follow the FlashAttention papers: bf16, batch * seq = 16k tokens,
heads * head_dim = 2048, seq 512 .. 16k, head_dim 64 and 128, causal and not.
Both llmpre kernel sets are timed: the portable (mma.sync) kernels
everywhere, the Hopper (wgmma/TMA) ones where the device is sm_90 and the
build has them.
TFLOP/s use FlashAttention's convention (benchmarks/benchmark_flash_attention.py):
forward 4 * B * S^2 * H * D, halved when causal; backward 2.5x the forward.
Times: median of 20 runs after 5 warm-ups, each after an L2 flush, CUDA
events around the kernels only (harness.time_ms). Our backward is timed from
saved out/lse (as autograd would run it), torch's as ``out.backward(dout)``.

Before timing, each shape's outputs are compared with torch's (flash backend,
else math): the largest difference must stay within the same 2x-naive rule
scale as the check, or the row is marked. Writes flash_attention_bench.md (a
markdown table) and returns the rows.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import cuda_module, device_info, time_ms  # noqa: E402

TOKENS = 16 * 1024
HIDDEN = 2048
SEQS = (512, 1024, 2048, 4096, 8192, 16384)


def flops_fwd(batch: int, seq: int, heads: int, d: int, causal: bool) -> float:
    f = 4.0 * batch * seq * seq * heads * d
    return f / 2 if causal else f


def tflops(flop: float, ms: float) -> float | None:
    return None if ms is None or ms <= 0 else flop / (ms * 1e-3) / 1e12


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.0f}"


def run(out_dir: str) -> dict:
    cu = cuda_module()
    if cu.device_count() == 0:
        return {"error": "no CUDA device"}
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:  # the baselines need torch; without it there is nothing to compare with
        return {"error": f"torch is needed for the baselines and the inputs: {e!r}"}

    dev = device_info(cu)
    # Kernel sets that failed bench/gpu/check_flash_attention.py in this run are not timed.
    checked = {}
    try:
        with open(os.path.join(out_dir, "flash_attention_check.json")) as fh:
            checked = json.load(fh).get("kernels_passed", {})
    except (OSError, ValueError):
        pass
    backends = {"torch-flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    rows = []
    for d in (64, 128):
        if not cu.flash_attention_head_dim_compiled(d):
            continue
        heads = HIDDEN // d
        for causal in (False, True):
            for seq in SEQS:
                batch = TOKENS // seq
                torch.manual_seed(0)
                shape = (batch, seq, heads, d)
                q, k, v, dout = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
                out = torch.empty_like(q)
                lse = torch.empty((batch, heads, seq), device="cuda", dtype=torch.float32)
                dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
                common = dict(batch=batch, seq_q=seq, seq_k=seq, heads=heads, kv_heads=heads, head_dim=d,
                              causal=causal, window=-1, scale=1.0 / math.sqrt(d), dtype="bf16")
                ws_bytes = {det: cu.flash_attention_bwd_workspace_bytes(deterministic=det, **common)
                            for det in (False, True)}
                ws = torch.empty(max(max(ws_bytes.values()), 1), device="cuda", dtype=torch.uint8)

                def fwd(kernel="portable"):
                    cu.flash_attention_forward(q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), out=out.data_ptr(),
                                          lse=lse.data_ptr(), kernel=kernel, **common)

                def bwd(det=False, kernel="portable"):
                    cu.flash_attention_backward(q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), out=out.data_ptr(),
                                           lse=lse.data_ptr(), dout=dout.data_ptr(), dq=dq.data_ptr(),
                                           dk=dk.data_ptr(), dv=dv.data_ptr(), workspace=ws.data_ptr(),
                                           workspace_bytes=ws.numel(), deterministic=det, kernel=kernel, **common)

                kernels = ["portable"]
                if cu.flash_attention_selected_kernel(**common, backward=False) == "hopper":
                    kernels.append("hopper")
                kernels = [k for k in kernels if checked.get(k, True)]
                f_fwd = flops_fwd(batch, seq, heads, d, causal)
                row = {"head_dim": d, "causal": causal, "seq": seq, "batch": batch, "heads": heads}
                # Verify before timing: agreement with torch on this shape.
                qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
                with torch.no_grad():
                    try:
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            want = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).transpose(1, 2)
                    except RuntimeError:
                        want = F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float(),
                                                              is_causal=causal).transpose(1, 2)
                scale = want.float().abs().max().item()
                row["agrees"] = True
                for kern in kernels:
                    out.fill_(float("nan"))
                    fwd(kern)
                    torch.cuda.synchronize()
                    diff = (out.float() - want.float()).abs().max().item()
                    row[f"max_diff_vs_torch_{kern}"] = diff
                    # Two bf16 implementations differ by a few bf16 ulps of max|out|; 2^-6 relative flags a bug.
                    row["agrees"] &= bool(diff <= scale * 2.0 ** -6)
                del want

                for kern in kernels:
                    row[f"{kern}_fwd"] = tflops(f_fwd, time_ms(cu, lambda: fwd(kern)))
                    fwd(kern)  # the backward reads this kernel's out and lse
                    row[f"{kern}_bwd"] = tflops(2.5 * f_fwd, time_ms(cu, lambda: bwd(False, kern)))
                    row[f"{kern}_bwd_det"] = tflops(2.5 * f_fwd, time_ms(cu, lambda: bwd(True, kern)))
                for name, backend in backends.items():
                    try:
                        with sdpa_kernel(backend):
                            qg, kg, vg = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
                            with torch.no_grad():
                                ms_f = time_ms(cu, lambda: F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal))
                            o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                            g = dout.transpose(1, 2)

                            def tb():
                                qg.grad = kg.grad = vg.grad = None
                                o.backward(g, retain_graph=True)

                            ms_b = time_ms(cu, tb)
                        row[f"{name}_fwd"] = tflops(f_fwd, ms_f)
                        row[f"{name}_bwd"] = tflops(2.5 * f_fwd, ms_b)
                        del o
                    except Exception as e:  # a backend that refuses this shape/GPU is reported, not fatal
                        row[f"{name}_fwd"] = row[f"{name}_bwd"] = None
                        row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                rows.append(row)
                print(f"d={d} causal={causal} seq={seq}: fwd portable {_fmt(row.get('portable_fwd'))} "
                      f"hopper {_fmt(row.get('hopper_fwd'))} (flash {_fmt(row.get('torch-flash_fwd'))}, "
                      f"cudnn {_fmt(row.get('cudnn_fwd'))}), bwd portable {_fmt(row.get('portable_bwd'))} "
                      f"hopper {_fmt(row.get('hopper_bwd'))} (flash {_fmt(row.get('torch-flash_bwd'))}, "
                      f"cudnn {_fmt(row.get('cudnn_bwd'))}) TFLOP/s", flush=True)
                del q, k, v, dout, out, lse, dq, dk, dv, ws
                torch.cuda.empty_cache()

    lines = [f"Device: {dev['name']}, date {datetime.date.today().isoformat()}, torch {torch.__version__}, bf16, "
             f"batch*seq = {TOKENS}, heads*head_dim = {HIDDEN}. TFLOP/s (FlashAttention convention); "
             "portable = mma.sync kernels, hopper = wgmma/TMA kernels (sm_90 only).",
             "",
             "| head_dim | causal | seq | batch | fwd portable | fwd hopper | fwd torch-flash | fwd cuDNN | "
             "bwd portable | bwd hopper | bwd hopper (det.) | bwd torch-flash | bwd cuDNN | agrees with torch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['head_dim']} | {'yes' if r['causal'] else 'no'} | {r['seq']} | {r['batch']} | "
                     f"{_fmt(r.get('portable_fwd'))} | {_fmt(r.get('hopper_fwd'))} | "
                     f"{_fmt(r.get('torch-flash_fwd'))} | {_fmt(r.get('cudnn_fwd'))} | "
                     f"{_fmt(r.get('portable_bwd'))} | {_fmt(r.get('hopper_bwd'))} | {_fmt(r.get('hopper_bwd_det'))} | "
                     f"{_fmt(r.get('torch-flash_bwd'))} | {_fmt(r.get('cudnn_bwd'))} | {'yes' if r['agrees'] else 'NO'} |")
    table = "\n".join(lines) + "\n"
    path = os.path.join(out_dir, "flash_attention_bench.md")
    with open(path + ".tmp", "w") as fh:
        fh.write(table)
    os.replace(path + ".tmp", path)
    return {"device": dev, "rows": rows, "table": path}
