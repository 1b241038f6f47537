"""CPU tests of the CUDA flash attention's checking machinery and of the kernel
source itself.

1. The numpy reference of bench/gpu/check_flash_attention.py against
   llmpre.ops.reference.attention_math (Paddle, float64, forward and autograd
   gradients) and against finite differences.
2. The check's rule has teeth: it accepts the exact result stored in the dtype
   and rejects results with a shifted mask, a wrong scale or a wrong GQA map.
3. The kernels themselves, compiled for the CPU emulator of their hardware
   layer (cuda/flash_attention/emu: mma/ldmatrix/cp.async semantics, bounds
   checks, a shared-memory race detector, NaN-filled shared memory and
   outputs) and run through the real host entry points on small shapes, with
   the same comparison the GPU check uses. No GPU is needed; what this cannot
   show is GPU-only behaviour (timing, the real instruction set), which
   bench/gpu/run.sh checks on a device.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench" / "gpu"))
import check_flash_attention as C  # noqa: E402

FA = ROOT / "cuda" / "flash_attention"


# ---- 1. the reference ----

def _paddle_attention(case: C.Case, x: dict) -> dict:
    import paddle

    from llmpre.ops.reference import attention_math

    t = {n: paddle.to_tensor(x[n].astype(np.float64), stop_gradient=False) for n in ("q", "k", "v")}
    slopes = paddle.to_tensor(x["alibi"].astype(np.float64)) if x["alibi"] is not None else None
    out = attention_math(t["q"], t["k"], t["v"], causal=case.causal,
                         window=case.window if case.window > 0 else None, alibi_slopes=slopes, scale=case.scale)
    (out * paddle.to_tensor(x["dout"].astype(np.float64))).sum().backward()
    return {"out": out.numpy(), "dq": t["q"].grad.numpy(), "dk": t["k"].grad.numpy(), "dv": t["v"].grad.numpy()}


@pytest.mark.parametrize("case", [
    C.Case(2, 13, 13, 4, 2, 16, True),
    C.Case(1, 9, 17, 6, 2, 16, True, window=5, alibi=True),     # seq_q < seq_k, GQA 3
    C.Case(1, 11, 11, 4, 1, 32, False, window=3),               # MQA, window without causal
])
def test_reference_matches_attention_math(case):
    x = C.make_inputs(case, seed=3)
    ref = C.reference(case, x)
    pd = _paddle_attention(case, x)
    # attention_math casts the scores to float32 even for float64 inputs, so
    # its probabilities carry fp32 rounding (2^-24 relative per step, summed
    # over <= 17 keys and <= 32 features here): agreement to 1e-5 absolute on
    # values of order 1, where a wrong mask, scale or group map is off by > 1e-2.
    for name in ("out", "dq", "dk", "dv"):
        np.testing.assert_allclose(ref[name], pd[name], rtol=0, atol=1e-5, err_msg=name)


def test_reference_gradients_match_finite_differences():
    case = C.Case(1, 5, 7, 4, 2, 4, True, window=3, alibi=True)
    x = C.make_inputs(case, seed=5)
    x = {n: (v.astype(np.float64) if v is not None else None) for n, v in x.items()}
    ref = C.reference(case, x)

    def loss(xx):
        return float(np.sum(C.reference(case, xx)["out"] * xx["dout"]))

    eps = 1e-6
    for name, grad in (("q", "dq"), ("k", "dk"), ("v", "dv")):
        num = np.zeros_like(x[name])
        for idx in np.ndindex(*x[name].shape):
            plus = dict(x)
            plus[name] = x[name].copy()
            plus[name][idx] += eps
            minus = dict(x)
            minus[name] = x[name].copy()
            minus[name][idx] -= eps
            num[idx] = (loss(plus) - loss(minus)) / (2 * eps)
        np.testing.assert_allclose(ref[grad], num, rtol=1e-6, atol=1e-8, err_msg=grad)


def test_reference_rows_that_see_no_key():
    case = C.Case(1, 6, 3, 2, 1, 8, True)  # queries 0..2 sit before key 0
    x = C.make_inputs(case, seed=1)
    ref = C.reference(case, x)
    assert np.all(ref["out"][:, :3] == 0) and np.all(np.isneginf(ref["lse"][:, :, :3]))
    assert np.all(np.isfinite(ref["lse"][:, :, 3:]))
    assert np.all(ref["dq"][:, :3] == 0)


# ---- 2. the rule ----

def test_rule_accepts_exact_result_and_rejects_wrong_ones():
    case = C.Case(1, 40, 40, 4, 2, 64, True, window=11, alibi=True)
    x = C.make_inputs(case, seed=7)
    ref, nai = C.reference(case, x), C.naive(case, x)
    stored = {n: (C.round_to(v, case.dtype) if n != "lse" else v.astype(np.float32)) for n, v in ref.items()}
    rep = C.compare(case, stored, ref, nai)
    assert all(e["ok"] for e in rep.values()), rep
    assert all(e["naive_err"] > 0 for e in rep.values())

    wrong = {
        "mask shifted by one key": C.reference(dataclasses.replace(case, window=12), x),
        "scale 1.05x": C.reference(dataclasses.replace(case, head_dim=58), x),  # 1/sqrt(58) vs 1/sqrt(64)
        "GQA map (h % kv_heads)": C.reference(case, {**x, "k": x["k"][:, :, ::-1], "v": x["v"][:, :, ::-1]}),
    }
    for why, bad in wrong.items():
        got = {n: (C.round_to(v, case.dtype) if n != "lse" else v.astype(np.float32)) for n, v in bad.items()}
        rep = C.compare(case, got, ref, nai)
        assert not all(e["ok"] for e in rep.values()), why


def test_rule_flags_nan_and_wrong_empty_rows():
    case = C.Case(1, 6, 3, 2, 1, 16, True)
    x = C.make_inputs(case, seed=2)
    ref, nai = C.reference(case, x), C.naive(case, x)
    got = {n: np.array(v, dtype=np.float32) for n, v in ref.items()}
    got["out"][0, 4, 1, 3] = np.nan
    got["lse"][0, 0, 1] = 0.0  # a row that sees no key must stay -inf
    rep = C.compare(case, got, ref, nai)
    assert not rep["out"]["ok"] and "non-finite" in rep["out"]["why"]
    assert not rep["lse"]["ok"] and "-inf" in rep["lse"]["why"]


# ---- static agreement (compiles nothing) ----

def test_instantiation_files_match_the_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_kernels", FA / "generate_kernels.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    want = gen.expected_files()
    have = {p.name: p.read_text() for p in (FA / "instantiations").glob("*.cu")}
    assert have == want, "run python cuda/flash_attention/generate_kernels.py"


def test_gpu_scripts_call_only_bound_functions():
    import re

    bind = ROOT / "cuda" / "bindings" / "flash_attention_bind.cpp"
    bound = set(re.findall(r'm\.def\(\s*"(\w+)"', bind.read_text()))
    for script in ("check_flash_attention.py", "bench_flash_attention.py"):
        used = set(re.findall(r"\bcu\.(flash_attention\w*)\(", (ROOT / "bench" / "gpu" / script).read_text()))
        assert used and used <= bound, f"{script} calls {sorted(used - bound)}, which {bind.name} does not define"


# ---- 3. the kernels on the CPU emulator ----

@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> Path:
    """Compiles the kernels (every head dim and dtype) with the emulator into one executable."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    assert cxx, "a C++17 compiler is needed (it also builds llmpre's C++ core)"
    out = tmp_path_factory.mktemp("flash_attention_emu")
    flags = ["-std=c++17", "-O1", "-DLLMPRE_FA_EMULATE", "-DLLMPRE_FA_SM90", "-DLLMPRE_FA_HDIM_64",
             "-DLLMPRE_FA_HDIM_128", "-DLLMPRE_FA_HDIM_256", f"-I{ROOT / 'cuda'}", f"-I{ROOT / 'cpp' / 'include'}", "-w"]
    units = [(p, ["-x", "c++"]) for p in [FA / "flash_attention.cu", *sorted((FA / "instantiations").glob("*.cu"))]]
    units += [(p, []) for p in sorted((FA / "emu").glob("emu*.cpp"))]

    def compile_one(unit):
        src, lang = unit
        obj = out / (src.name + ".o")
        r = subprocess.run([cxx, *flags, "-c", *lang, str(src), "-o", str(obj)], capture_output=True, text=True)
        assert r.returncode == 0, f"compiling {src.name} for the emulator failed:\n{r.stderr[-4000:]}"
        return str(obj)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        objs = list(pool.map(compile_one, units))
    exe = out / "flash_attention_emu"
    r = subprocess.run([cxx, *objs, "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def _run_emulator(exe: Path, case: C.Case, x: dict, workdir: Path, backward=True, **mode) -> tuple[dict, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = dict(batch=case.batch, seq_q=case.seq_q, seq_k=case.seq_k, heads=case.heads, kv_heads=case.kv_heads,
               head_dim=case.head_dim, causal=int(case.causal), window=case.window, scale=repr(case.scale),
               dtype=case.dtype, alibi=int(case.alibi), backward=int(backward),
               deterministic=int(case.deterministic), **mode)
    if case.q_offset is not None:      # a ring-attention block: query 0 at key position q_offset
        cfg["q_offset"] = case.q_offset
    (workdir / "config.txt").write_text("".join(f"{k} {v}\n" for k, v in cfg.items()))
    for n in ("q", "k", "v", "dout"):
        C.to_storage(x[n], case.dtype).tofile(workdir / f"{n}.bin")
    if x["alibi"] is not None:
        x["alibi"].astype(np.float32).tofile(workdir / "alibi.bin")
    r = subprocess.run([str(exe), str(workdir)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return {}, (r.stdout + r.stderr).strip()
    sd = np.uint16 if case.dtype == "bf16" else np.float16
    b, sq, sk, h, hk, d = case.batch, case.seq_q, case.seq_k, case.heads, case.kv_heads, case.head_dim
    load = lambda n, shape: C.from_storage(np.fromfile(workdir / f"{n}.bin", sd).reshape(shape), case.dtype)  # noqa: E731
    got = {"out": load("out", (b, sq, h, d)),
           "lse": np.fromfile(workdir / "lse.bin", np.float32).reshape(b, h, sq)}
    if backward:
        got.update(dq=load("dq", (b, sq, h, d)), dk=load("dk", (b, sk, hk, d)), dv=load("dv", (b, sk, hk, d)))
    return got, r.stdout.strip()


# Small shapes chosen to take every path (tile sizes in tile.cuh; forward
# BM x BN = 128 x 64 for head_dim <= 128, backward 128 keys x 64 queries):
# one-row query tails (129) and key tails one short of a tile (127, 191, 255,
# where a missing mask shows), seq_q above seq_k (rows that see no key) and
# below it, window and causal edges that fall on block boundaries, ALiBi, GQA
# walked inside a block and split across blocks (sms forces splits, including
# an uneven 2 + 1), enough query blocks that both cp.async buffers are refilled,
# both dQ modes, every head dim and both dtypes. Modes vary the fiber order
# and whether cp.async data lands at issue or at wait_group.
EMU_CASES = [
    (C.Case(1, 129, 255, 6, 2, 64, True), dict(sms=8)),
    (C.Case(1, 260, 260, 2, 1, 64, False, window=66, deterministic=True), dict(order=1, lazy=0)),
    (C.Case(1, 300, 127, 4, 1, 64, True, alibi=True, dtype="fp16"), dict(order=2)),  # a block sees no key
    (C.Case(1, 65, 191, 2, 2, 64, False), dict(lazy=0)),
    (C.Case(1, 200, 201, 2, 1, 64, True, dtype="fp16"), dict()),  # first query of a key block ends a query block
    (C.Case(1, 150, 150, 2, 1, 128, True, q_gain=4.0), dict(lazy=0)),
    (C.Case(1, 140, 191, 4, 2, 128, False, dtype="fp16", deterministic=True), dict(order=2)),
    (C.Case(1, 66, 190, 4, 2, 128, True, window=70, alibi=True, deterministic=True), dict(sms=4, order=1)),
    (C.Case(1, 97, 127, 2, 1, 256, True, window=40, alibi=True), dict()),
    (C.Case(1, 70, 70, 2, 2, 256, False, dtype="fp16"), dict(sms=1, order=2, lazy=0)),
    # ring-attention blocks (llmpre.parallel.context): query chunk after the key chunk
    (C.Case(1, 130, 130, 4, 2, 64, True, q_offset=130), dict()),            # every key visible
    (C.Case(1, 100, 100, 2, 1, 64, True, window=150, alibi=True, q_offset=100), dict(order=1)),  # window inside
    (C.Case(1, 96, 96, 2, 1, 128, True, window=60, q_offset=128, dtype="fp16"), dict()),  # rows see no key
]


@pytest.mark.parametrize("case,mode", EMU_CASES, ids=[c.label() for c, _ in EMU_CASES])
def test_kernels_on_emulator(emulator, tmp_path, case, mode):
    x = C.make_inputs(case, seed=11)
    t0 = time.time()
    got, log = _run_emulator(emulator, case, x, tmp_path, **mode)
    assert got, f"the emulator stopped: {log}"
    rep = C.compare(case, got, C.reference(case, x), C.naive(case, x))
    bad = {n: e for n, e in rep.items() if not e["ok"]}
    assert not bad, f"{case.label()} ({time.time() - t0:.1f} s): {bad}"


# The Hopper kernels ({fwd,bwd}_sm90_kernel.cuh) on the emulator of
# their layer (emu/emu_sm90.h): the device reports sm_90. Tiles: forward
# 128 queries x 128 keys (64 keys for head_dim 256), backward 128 keys x 64
# queries; the shapes below leave tails in both, cross several tiles so the
# K/V and Q/dO rings wrap, split GQA groups across blocks (sms), and vary
# when TMA data lands (tma_mode: at the wait, at issue, at random rounds)
# and the thread order.
HOPPER = dict(arch=90, kernel="hopper")
HOPPER_CASES = [
    (C.Case(1, 129, 255, 6, 2, 64, True), dict(HOPPER, sms=8)),
    (C.Case(1, 300, 513, 2, 1, 64, False, window=100), dict(HOPPER, tma_mode=1, order=1)),
    (C.Case(2, 200, 127, 4, 1, 64, True, alibi=True, dtype="fp16"), dict(HOPPER, tma_mode=2, order=2)),
    (C.Case(1, 150, 150, 2, 1, 128, True, q_gain=4.0), dict(HOPPER, tma_mode=2)),
    (C.Case(1, 140, 391, 4, 2, 128, False, dtype="fp16", deterministic=True), dict(HOPPER, order=2)),
    (C.Case(1, 66, 190, 4, 2, 128, True, window=70, alibi=True), dict(HOPPER, sms=4, order=1, tma_mode=1)),
    (C.Case(1, 97, 300, 2, 1, 256, True, window=40, alibi=True), dict(arch=90, tma_mode=2)),
    (C.Case(1, 70, 70, 2, 2, 256, False, dtype="fp16"), dict(arch=90, sms=1, order=2)),
    # ring-attention blocks: every key visible; a window that cuts inside the block
    (C.Case(1, 130, 130, 4, 2, 64, True, q_offset=130), dict(HOPPER, tma_mode=1)),
    (C.Case(1, 100, 150, 2, 1, 128, True, window=120, alibi=True, q_offset=150), dict(HOPPER, order=1)),
]


@pytest.mark.parametrize("case,mode", HOPPER_CASES, ids=[c.label() for c, _ in HOPPER_CASES])
def test_hopper_kernels_on_emulator(emulator, tmp_path, case, mode):
    x = C.make_inputs(case, seed=13)
    t0 = time.time()
    got, log = _run_emulator(emulator, case, x, tmp_path, **mode)
    assert got, f"the emulator stopped: {log}"
    # head_dim 256 has a Hopper forward only; kernel=auto takes the portable backward.
    want = "fwd=hopper bwd=hopper" if case.head_dim <= 128 else "fwd=hopper bwd=portable"
    assert want in log, log
    rep = C.compare(case, got, C.reference(case, x), C.naive(case, x))
    bad = {n: e for n, e in rep.items() if not e["ok"]}
    assert not bad, f"{case.label()} ({time.time() - t0:.1f} s): {bad}"


def test_emulated_hopper_backward_is_reproducible(emulator, tmp_path):
    # out, lse, dK and dV do not depend on thread order or on when TMA data
    # lands (dQ is summed with atomics, so its last bits may).
    case = C.Case(1, 130, 200, 4, 2, 64, True)
    x = C.make_inputs(case, seed=4)
    a, log_a = _run_emulator(emulator, case, x, tmp_path / "a", **HOPPER, order=0, sms=4)
    b, log_b = _run_emulator(emulator, case, x, tmp_path / "b", **HOPPER, order=2, seed=9, tma_mode=2, sms=4)
    assert a and b, (log_a, log_b)
    for n in ("out", "lse", "dk", "dv"):
        assert np.array_equal(a[n], b[n]), n


def test_kernel_selection_on_emulated_devices(emulator, tmp_path):
    case = C.Case(1, 16, 16, 2, 1, 64, True)
    x = C.make_inputs(case, seed=0)
    got, log = _run_emulator(emulator, case, x, tmp_path / "auto90", arch=90)
    assert got and "fwd=hopper bwd=hopper" in log, log
    got, log = _run_emulator(emulator, case, x, tmp_path / "auto80", arch=80)
    assert got and "fwd=portable bwd=portable" in log, log
    got, log = _run_emulator(emulator, case, x, tmp_path / "port90", arch=90, kernel="portable")
    assert got and "fwd=portable bwd=portable" in log, log
    got, log = _run_emulator(emulator, case, x, tmp_path / "hop80", arch=80, kernel="hopper")
    assert not got and "built for sm_90a and this GPU is sm_80" in log, log
    case = C.Case(1, 16, 16, 2, 1, 256, True)
    x = C.make_inputs(case, seed=0)
    got, log = _run_emulator(emulator, case, x, tmp_path / "hop256", arch=90, kernel="hopper")
    assert not got and "no Hopper backward kernel for head_dim 256" in log, log


def test_emulated_backward_is_reproducible(emulator, tmp_path):
    # dK/dV always; dQ in the deterministic mode. Different fiber orders give
    # different (but each valid) interleavings; results must not depend on them.
    case = C.Case(1, 130, 130, 4, 2, 64, True, deterministic=True)
    x = C.make_inputs(case, seed=4)
    a, log_a = _run_emulator(emulator, case, x, tmp_path / "a", order=0, sms=4)
    b, log_b = _run_emulator(emulator, case, x, tmp_path / "b", order=2, seed=9, lazy=0, sms=4)
    assert a and b, (log_a, log_b)
    for n in ("out", "lse", "dq", "dk", "dv"):
        assert np.array_equal(a[n], b[n]), n


def test_emulated_entry_points_reject_bad_parameters(emulator, tmp_path):
    x = C.make_inputs(C.Case(1, 8, 8, 2, 1, 96, True), seed=0)
    got, log = _run_emulator(emulator, C.Case(1, 8, 8, 2, 1, 96, True), x, tmp_path / "d96")
    assert not got and "head_dim 96 has no kernel" in log and "compiled: 64, 128, 256" in log
    x = C.make_inputs(C.Case(1, 8, 8, 3, 2, 64, True), seed=0)
    got, log = _run_emulator(emulator, C.Case(1, 8, 8, 3, 2, 64, True), x, tmp_path / "gqa")
    assert not got and "heads (3) must be a positive multiple of kv_heads (2)" in log
