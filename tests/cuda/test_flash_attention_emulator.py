"""The Hopper emulator (cuda/flash_attention/emu/emu_sm90.*) that the CPU tests
of the sm_90a flash attention kernels run on.

1. Its TMA, swizzle and wgmma semantics agree with each other and with the
   kernels' layout helper: a 64x64x64 product through TMA-loaded tiles is
   exact for both operands K-major, both M/N-major, and A from registers
   (emu/selftest_sm90.cpp "gemm").
2. Its usage checks fire: each scenario commits one mistake a Hopper kernel
   can make (a load nobody waits for, a barrier that never completes, a
   misaligned TMA destination, generic stores read by wgmma without a proxy
   fence, a wgmma without wgmma.fence, registers or shared memory changed
   while a wgmma is in flight, a warpgroup that diverges at a collective, a
   wgmma reading another warpgroup's stores with no barrier between them,
   named-barrier arrivals that nothing consumes) and
   the emulator must stop with its message instead of computing on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT

EMU = ROOT / "cuda" / "flash_attention" / "emu"


@pytest.fixture(scope="module")
def selftest(tmp_path_factory) -> Path:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    assert cxx, "a C++17 compiler is needed (it also builds llmpre's C++ core)"
    out = tmp_path_factory.mktemp("flash_attention_emu_selftest")
    flags = ["-std=c++17", "-O1", "-DLLMPRE_FA_EMULATE", f"-I{ROOT / 'cuda'}", f"-I{ROOT / 'cpp' / 'include'}", "-w"]
    units = [EMU / "selftest_sm90.cpp", EMU / "emu.cpp", EMU / "emu_sm90.cpp"]

    def compile_one(src: Path) -> str:
        obj = out / (src.name + ".o")
        r = subprocess.run([cxx, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert r.returncode == 0, f"compiling {src.name} failed:\n{r.stderr[-4000:]}"
        return str(obj)

    with ThreadPoolExecutor(max_workers=2) as pool:
        objs = list(pool.map(compile_one, units))
    exe = out / "selftest_sm90"
    r = subprocess.run([cxx, *objs, "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def test_tma_swizzle_and_wgmma_layouts_agree(selftest):
    r = subprocess.run([str(selftest), "gemm"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


FAULTS = {
    "unwaited_load": "TMA/bulk loads into its shared memory that no thread waited for",
    "deadlock": "deadlock: 128 threads wait",
    "misaligned_tma": "is not 1024-byte aligned",
    "missing_proxy_fence": "no fence.proxy.async since",
    "missing_wgmma_fence": "without a wgmma.fence",
    "a_regs_changed": "register A operand of an in-flight wgmma",
    "accumulator_written": "was written while a wgmma was in flight",
    "overwrite_in_flight": "an operand of an in-flight wgmma, changed before wgmma.wait_group",
    "diverged": "warpgroup threads diverged",
    "unordered_write": "with no barrier ordering that write before the read",
    "unbalanced_named_barrier": "holding 64 of 128 arrivals",
}


@pytest.mark.parametrize("scenario", sorted(FAULTS))
def test_emulator_reports_usage_errors(selftest, scenario):
    r = subprocess.run([str(selftest), scenario], capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, f"{scenario}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    assert "EMULATOR ERROR" in r.stderr and FAULTS[scenario] in r.stderr, r.stderr
