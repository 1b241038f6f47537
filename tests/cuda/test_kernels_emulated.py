"""The real CUDA sources of cuda/rms_norm, cuda/rotary, cuda/cross_entropy,
cuda/grouped_mlp (its GEMMs replaced by a host stand-in: CUTLASS cannot be emulated),
cuda/swiglu, cuda/moe_rows and cuda/moe_combine,
and their pybind11 bindings, run on the CPU emulator (tests/cuda/emu,
built by emu_build.py) through the GPU checks' own wrappers: every case the
GPU run will check (bench/gpu/check_*.py CASES) must pass here first.

What this proves: indexing, tails, unaligned paths, the persistent loops and
grid sizes, the block/warp reductions and barriers, the dweight workspace
reduction, NaN contracts and the launchers' argument errors behave as
designed, with fp32 math in the same order as on the device. What it cannot:
nvcc's code generation, memory-model races between real concurrent threads,
the device's exp2f/expf accuracy, and speed. Those need bench/gpu/run.sh on
a GPU.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench" / "gpu"))
sys.path.insert(0, str(ROOT / "tests" / "cuda"))
import check_cross_entropy as cce  # noqa: E402
import check_grouped_mlp as cgm  # noqa: E402
import check_moe_combine as cmc  # noqa: E402
import check_moe_rows as cmr  # noqa: E402
import check_rms_norm as crms  # noqa: E402
import check_rotary as crot  # noqa: E402
import check_swiglu as csw  # noqa: E402
import emu_build  # noqa: E402
import harness as H  # noqa: E402

_why = emu_build.why_unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=f"CUDA CPU emulator cannot be built: {_why}")


@pytest.fixture(scope="module")
def cu():
    module = emu_build.build()
    module.configure(3, 2)
    yield module
    assert module.live_allocations() == 0, "a check leaked device buffers"


def _failures(summary):
    return "\n".join(f"{f['case']}: {f['results']}" for f in summary["failures"])


@pytest.mark.parametrize("check", [crms, crot, cce, csw, cmr, cmc],
                         ids=["rms_norm", "rotary", "cross_entropy", "swiglu", "moe_rows", "moe_combine"])
def test_every_gpu_case_passes_on_the_emulator(cu, check):
    summary = check.run(None, kernel=check.GpuKernel(cu))
    assert summary["passed"], _failures(summary)
    assert summary["cases"] == len(check.CASES)


def test_grouped_mlp_launch_sequence_on_the_emulator(cu):
    # cuda/grouped_mlp's forward and backward (the real gather, SwiGLU, bucket-start and
    # per-token-sum kernels, workspace layout and launch order) over the host stand-in of the
    # CUTLASS GEMMs (emu/grouped_gemm_reference.cpp), against check_grouped_mlp's float64
    # truth: top-k gathers, empty experts, dropped rows and no index; the large shape is left
    # to the GPU run (its numpy reference alone takes seconds)
    cases = [c for c in cgm.CASES if c.hidden <= 256]
    summary = cgm.run(None, kernel=cgm.GpuKernel(cu), cases=cases)
    assert summary["passed"], _failures(summary)
    assert summary["cases"] == len(cases) == 3


@pytest.mark.parametrize("sms,per_sm", [(1, 1), (40, 4)])
def test_rms_norm_any_grid_size(cu, sms, per_sm):
    # one CTA looping over every row, and more CTAs than row groups
    cu.configure(sms, per_sm)
    try:
        cases = [(37, 1024, "bfloat16", 0), (9, 8192, "float32", 0), (5, 20480, "bfloat16", 0),
                 (6, 4095, "float16", 0), (3, 5120, "bfloat16", 0)]
        summary = crms.run(None, kernel=crms.GpuKernel(cu), cases=cases)
        assert summary["passed"], _failures(summary)
    finally:
        cu.configure(3, 2)


def _rms_backward_bits(cu, rows, hidden, dtype):
    rng = np.random.default_rng(5)
    x, w, g = crms.make_inputs(rng, rows, hidden, dtype)
    out = [crms.GpuKernel(cu)(x, w, g, crms.EPS, dtype)["dweight"] for _ in range(2)]
    return out


def test_rms_norm_dweight_is_bitwise_reproducible(cu):
    for hidden in (1024, 20480):  # tiled and looped reductions
        a, b = _rms_backward_bits(cu, 29, hidden, "bfloat16")
        np.testing.assert_array_equal(a, b)


def test_rms_norm_workspace_size_and_errors(cu):
    # the bound: min(rows, SMs x backward CTAs per SM) fp32 rows of hidden
    assert cu.rms_norm_backward_workspace_bytes(1000, 4096, "bf16") == 3 * 2 * 4096 * 4
    assert cu.rms_norm_backward_workspace_bytes(5, 4096, "bf16") == 5 * 4096 * 4
    x = H.DeviceBuffer.of(cu, np.zeros((8, 64), np.float32))
    try:
        p = x.ptr
        need = min(8, 3 * 2) * 64 * 4  # 6 CTAs' fp32 rows of 64
        with pytest.raises(ValueError, match=rf"rms_norm\.cu:\d+: rms_norm_backward: needs {need} bytes"):
            cu.rms_norm_backward(p, p, p, p, p, p, p, need - 4, 8, 64, "fp32")
        with pytest.raises(ValueError, match=r"rms_norm\.cu:\d+: rms_norm_forward: `weight` is a null pointer"):
            cu.rms_norm_forward(p, 0, p, p, 8, 64, 1e-6, "fp32")
        with pytest.raises(ValueError, match=r"hidden must be in \[1, "):
            cu.rms_norm_forward(p, p, p, p, 8, 0, 1e-6, "fp32")
        with pytest.raises(ValueError, match=r"kernel_args\.h:\d+: dtype must be one of .* got 'int8'"):
            cu.rms_norm_forward(p, p, p, p, 8, 64, 1e-6, "int8")
    finally:
        x.free()


def test_rotary_argument_errors(cu):
    x = H.DeviceBuffer.of(cu, np.zeros(4096, np.float32))
    try:
        p = x.ptr
        base = dict(q=p, q_out=p, k=0, k_out=0, cos=p, sin=p, position_ids=0, batch=1, seq=4, heads_q=2, heads_k=0,
                    head_dim=8, rot_dim=8, table_rows=4, ids_batch=0, interleaved=False, inverse=False, dtype="fp32")
        cu.rotary_apply(**base)  # valid
        for change, msg in [(dict(rot_dim=7), "rot_dim .* must be even"), (dict(rot_dim=10), "rot_dim"),
                            (dict(table_rows=3), "without position_ids positions run to seq-1=3"),
                            (dict(ids_batch=2, position_ids=p, batch=3), "position_ids must have 1 or batch=3"),
                            (dict(ids_batch=1), "pass position_ids together with ids_batch"),
                            (dict(heads_k=2), "heads_k=2 needs k and k_out")]:
            with pytest.raises(ValueError, match=r"rotary\.cu:\d+: rotary_apply: " + msg):
                cu.rotary_apply(**{**base, **change})
    finally:
        x.free()


def test_cross_entropy_argument_errors(cu):
    x = H.DeviceBuffer.of(cu, np.zeros(64, np.float32))
    try:
        p = x.ptr
        with pytest.raises(ValueError, match=r"cross_entropy\.cu:\d+: cross_entropy_forward: vocab must be"):
            cu.cross_entropy_forward(p, p, p, p, 2, 0, -100, "bf16")
        with pytest.raises(ValueError, match=r"cross_entropy_backward: logits, labels, stats, dloss and dlogits"):
            cu.cross_entropy_backward(p, p, p, 0, p, 2, 8, -100, "bf16")
    finally:
        x.free()


def test_emulator_catches_writes_outside_a_buffer(cu):
    # the guard bytes the emulator checks on free: a kernel overrun fails a test
    ptr = cu.malloc(10)
    cu.upload(ptr + 10, np.zeros(1, np.uint8))
    with pytest.raises(RuntimeError, match="wrote outside a 10-byte buffer"):
        cu.free(ptr)



@pytest.mark.parametrize("name,shapes", [
    ("bench_rms_norm", [(9, 1024, "bfloat16"), (7, 4096, "float32")]),
    ("bench_rotary", [(1, 16, 4, 2, 64, 64, False, "tiny"), (1, 8, 2, 1, 64, 32, True, "tiny partial")]),
    ("bench_cross_entropy", [(4, 50257, "bfloat16"), (3, 1000, "float32")]),
])
def test_benchmark_scripts_run(cu, tmp_path, monkeypatch, name, shapes):
    # Smoke test with tiny shapes so the GPU run cannot die in a script bug;
    # emulator timings are meaningless and are not looked at.
    bench = __import__(name)
    monkeypatch.setattr(bench, "SHAPES", shapes)
    monkeypatch.setattr(H, "cuda_module", lambda: cu)
    result = bench.run(str(tmp_path))
    assert len(result["rows"]) == 2 * len(shapes)
    assert {r["op"] for r in result["rows"]} == {"forward", "backward"}
    assert all(r["gbs"] > 0 for r in result["rows"])
    assert (tmp_path / f"{name}.md").exists() and (tmp_path / f"{name}.json").exists()
    summary = (tmp_path / "summary_kernels_i.md").read_text()
    assert "| kernel | pass | dtype |" in summary and name[len("bench_"):] in summary
