"""GPU check of the fused cross-entropy kernels (cuda/cross_entropy) through
``llmpre._cuda``.

Every case runs the forward (loss and stats per row) and the backward
(dlogits for a per-row upstream gradient dloss) and applies the house rule
(``harness.rule_result``) to loss, stats (max, log-sum-exp - max) and
dlogits against float64 math on the dtype-rounded logits. ``naive`` is the
materialised softmax in the storage dtype, as a framework computes it:
x - max, exp, sum (fp32, rounded once), log, log_softmax, its exp, and
(p - onehot) * dloss, every step rounded to the dtype. Ignored rows must give
loss 0, stats 0 and zero gradients; a label outside [0, vocab) must give a NaN
loss and a NaN gradient row (the kernels cannot throw). Outputs are NaN-filled
before each launch.

Cases: vocabularies 151936 (Qwen), 128256 (Llama 3), 50257 (GPT-2: odd, so
every row starts at a different alignment and the kernels peel a head and a
tail off the 16-byte body), tiny vocabularies (fewer elements than one
16-byte pack), bf16/fp16/fp32, rows with a dominant logit (p near 1) and
rows with -inf logits (masked vocabulary entries), a row with a NaN logit
(loss, l and gradients NaN; m is the max of the others), logits pointers that are
not 16-byte aligned, and dlogits aligned differently from logits (the
element-wise backward). The numpy parts import without a GPU
(tests/cuda/test_cross_entropy_check.py).
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

IGNORE = -100

# fp32 ulps of max|truth| allowed on top of 2x the naive error, per output. dlogits
# is exp2f(x - m) * (dloss * expf(-l)) on the device: CUDA's exp2f and expf are each
# within 2 ulp (CUDA C++ Programming Guide, single-precision math accuracy table)
# where numpy's exp is correctly rounded, so at p near 1, where the naive fp32 error
# can be ~0, the kernel may be 4 ulp further off than the house default of 2 covers.
# It matters for float32 storage only (bf16/fp16 naive errors are far larger).
ULPS = {"loss": 2.0, "stats": 2.0, "dlogits": 6.0}

# (rows, vocab, dtype, logits shift, dlogits shift) in bytes from a 256-byte boundary
CASES = [
    (64, 151936, "bfloat16", 0, 0),
    (24, 151936, "float16", 0, 0),
    (16, 151936, "float32", 0, 0),
    (16, 128256, "bfloat16", 0, 0),
    (37, 50257, "bfloat16", 0, 0),
    (9, 50257, "float32", 0, 0),
    (13, 50257, "float16", 6, 6),
    (11, 32000, "bfloat16", 2, 0),
    (5, 7, "bfloat16", 0, 0),
    (4, 1, "float32", 0, 0),
    (3, 3, "float16", 2, 2),
    (0, 1000, "bfloat16", 0, 0),
]


def make_inputs(rng, rows: int, vocab: int, dtype: str, bad_label: bool = True) -> dict:
    """Logits (values representable in dtype), labels with ignored rows, dloss."""
    x = rng.standard_normal((rows, vocab)) * 2.0
    labels = rng.integers(0, vocab, size=rows).astype(np.int64)
    if rows >= 4:
        x[1, labels[1]] += 12.0                              # a confident row: p(label) near 1
        x[2, rng.integers(0, vocab, size=max(1, vocab // 10))] = -np.inf   # masked entries
        x[2, labels[2]] = 1.0                                # keep the label finite
        labels[3] = IGNORE
    if rows >= 6 and bad_label:
        labels[5] = vocab                                    # out of range: NaN loss and gradient row
    if rows >= 8 and vocab >= 2:
        labels[6] = 0
        x[6, rng.integers(1, vocab)] = np.nan                # a NaN logit: NaN loss, l and gradient row
    x = H.decode(H.encode(x, dtype), dtype)
    dloss = (rng.uniform(0.5, 1.5, size=rows) / max(rows, 1)).astype(np.float32)
    return {"logits": x, "labels": labels, "dloss": dloss.astype(np.float64)}


def _rows(labels, vocab):
    keep = labels != IGNORE
    bad = keep & ((labels < 0) | (labels >= vocab))
    safe = np.where(keep & ~bad, labels, 0)
    return keep, bad, safe


def truth(inp: dict) -> dict:
    x, labels, dl = inp["logits"], inp["labels"], inp["dloss"]
    rows, vocab = x.shape
    keep, bad, safe = _rows(labels, vocab)
    m = np.fmax.reduce(x, axis=-1)  # NaN-ignoring max, as the kernels' fmaxf
    with np.errstate(divide="ignore"):
        l = np.log(np.exp(x - m[:, None]).sum(-1))
    r = np.arange(rows)
    loss = np.where(keep, (m - x[r, safe]) + l, 0.0)
    loss[bad] = np.nan
    p = np.exp((x - m[:, None]) - l[:, None])
    p[r, safe] -= 1.0
    grad = np.where(keep[:, None], p * dl[:, None], 0.0)
    grad[bad] = np.nan
    stats = np.stack([np.where(keep, m, 0.0), np.where(keep, l, 0.0)], -1)
    return {"loss": loss, "stats": stats, "dlogits": grad}


def naive(inp: dict, dtype: str) -> dict:
    rd = H.rounder(dtype)
    x = np.asarray(inp["logits"], dtype=np.float32)
    labels, dl = inp["labels"], np.asarray(inp["dloss"], dtype=np.float32)
    rows, vocab = x.shape
    keep, bad, safe = _rows(labels, vocab)
    r = np.arange(rows)
    m = np.fmax.reduce(x, axis=-1, keepdims=True)
    d = rd(x - m)
    s = rd(rd(np.exp(d)).sum(-1, keepdims=True, dtype=np.float32))
    logs = rd(np.log(s))
    logsm = rd(d - logs)                                   # log_softmax, materialised
    loss = np.where(keep, -logsm[r, safe], 0.0)
    loss[bad] = np.nan
    p = rd(np.exp(logsm))
    p[r, safe] = rd(p[r, safe] - 1.0)
    grad = np.where(keep[:, None], rd(p * dl[:, None]), 0.0)
    grad[bad] = np.nan
    stats = np.stack([np.where(keep, m[:, 0], 0.0), np.where(keep, logs[:, 0], 0.0)], -1)
    return {"loss": loss, "stats": stats, "dlogits": grad}


def rounded_truth_kernel(inp: dict, dtype: str, shifts=(0, 0)) -> dict:
    """An ideal kernel: float64 results rounded once (loss and stats to fp32,
    dlogits to the storage dtype)."""
    t = truth(inp)
    return {"loss": t["loss"].astype(np.float32), "stats": t["stats"].astype(np.float32),
            "dlogits": H.rounder(dtype)(t["dlogits"])}


class GpuKernel:
    """Runs cuda/cross_entropy forward then backward (with the device's own stats)."""

    def __init__(self, cu):
        self.cu = cu

    def __call__(self, inp: dict, dtype: str, shifts=(0, 0)) -> dict:
        cu = self.cu
        rows, vocab = inp["logits"].shape
        xs = H.encode(inp["logits"], dtype)
        bufs = {"x": H.ShiftedBuffer.of(cu, xs, shifts[0]),
                "dx": H.ShiftedBuffer(cu, xs.shape, xs.dtype, shifts[1]),
                "labels": H.DeviceBuffer.of(cu, inp["labels"].astype(np.int64)),
                "dloss": H.DeviceBuffer.of(cu, inp["dloss"].astype(np.float32)),
                "loss": H.DeviceBuffer(cu, (rows,), np.float32),
                "stats": H.DeviceBuffer(cu, (rows, 2), np.float32)}
        try:
            for k in ("dx", "loss", "stats"):
                cu.fill(bufs[k].ptr, b"\xff", bufs[k].nbytes)
            b = bufs
            cu.cross_entropy_forward(b["x"].ptr, b["labels"].ptr, b["loss"].ptr, b["stats"].ptr, rows, vocab,
                                     IGNORE, dtype)
            cu.cross_entropy_backward(b["x"].ptr, b["labels"].ptr, b["stats"].ptr, b["dloss"].ptr, b["dx"].ptr,
                                      rows, vocab, IGNORE, dtype)
            cu.synchronize()
            return {"loss": b["loss"].numpy().astype(np.float64), "stats": b["stats"].numpy().astype(np.float64),
                    "dlogits": H.decode(b["dx"].numpy(), dtype)}
        finally:
            for buf in bufs.values():
                buf.free()


def check_case(kernel, rows: int, vocab: int, dtype: str, shift_x: int = 0, shift_dx: int = 0,
               seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, rows, vocab, H.DTYPES.index(dtype)])
    inp = make_inputs(rng, rows, vocab, dtype)
    t, nv = truth(inp), naive(inp, dtype)
    got = kernel(inp, dtype, (shift_x, shift_dx))
    results = [H.rule_result(k, got[k], t[k], nv[k], ULPS[k]) for k in ("loss", "stats", "dlogits")]
    # Ignored rows: exactly zero, not merely within the rule.
    keep, _, _ = _rows(inp["labels"], vocab)
    zero = bool(np.all(got["loss"][~keep] == 0) and np.all(got["stats"][~keep] == 0)
                and np.all(got["dlogits"][~keep] == 0))
    results.append({"name": "ignored rows exactly 0", "passed": zero})
    return {"case": f"{dtype} rows={rows} vocab={vocab} shifts={shift_x},{shift_dx}",
            "passed": all(r["passed"] for r in results), "results": results}


def run(out_dir: str, kernel=None, cases=None) -> dict:
    if kernel is None:
        kernel = GpuKernel(H.cuda_module())
    checked = [check_case(kernel, *c) for c in (CASES if cases is None else cases)]
    return H.summarize("cross_entropy", checked, out_dir)
