"""The Hopper kernels' shared-memory layouts and wgmma descriptors against
CuTe, CUTLASS's layout algebra (tests/cuda/cute_check/cute_gmma_check.cpp):
for every tile shape the kernels use, element addresses, descriptor fields
(layout type, leading and stride byte offsets) and the addresses the emulator
reads for each k16 slice must equal what CuTe's canonical GMMA layouts and
make_gmma_desc give. This ties the emulator's reading of descriptors (which
the kernel tests rely on) to CUTLASS's, an implementation tested on GPUs.

Needs the CUTLASS headers (PyPI's nvidia-cutlass, installed by `make setup`)
and the CUDA toolkit's headers (CuTe includes them; nothing runs on a GPU).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

CHECK = ROOT / "tests" / "cuda" / "cute_check"
EMU = ROOT / "cuda" / "flash_attention" / "emu"


def _cutlass_include() -> Path | None:
    try:
        import cutlass_library
    except ImportError:
        return None
    inc = Path(cutlass_library.__file__).resolve().parent / "source" / "include"
    return inc if (inc / "cute" / "tensor.hpp").exists() else None


def _cuda_includes() -> list[Path]:
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    roots.append("/usr/local/cuda")
    for r in roots:
        if r and (Path(r) / "include" / "cuda_runtime_api.h").exists():
            inc = Path(r) / "include"
            return [inc] + ([inc / "cccl"] if (inc / "cccl").exists() else [])
    return []


def test_layouts_and_descriptors_match_cute(tmp_path):
    cutlass = _cutlass_include()
    if cutlass is None:
        pytest.skip("CUTLASS headers not installed (pip install nvidia-cutlass)")
    cuda = _cuda_includes()
    if not cuda:
        pytest.skip("no CUDA toolkit headers (cuda_runtime_api.h) found; CuTe includes them")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    assert cxx, "a C++17 compiler is needed"
    emu_flags = ["-std=c++17", "-O1", "-DLLMPRE_FA_EMULATE", f"-I{ROOT / 'cuda'}", f"-I{ROOT / 'cpp' / 'include'}", "-w"]
    cute_flags = ["-std=c++17", "-O1", "-w", f"-I{cutlass}", *(f"-I{p}" for p in cuda)]
    units = [(CHECK / "cute_gmma_check.cpp", cute_flags), (CHECK / "llmpre_side.cpp", emu_flags),
             (EMU / "emu.cpp", emu_flags), (EMU / "emu_sm90.cpp", emu_flags)]
    objs = []
    for src, flags in units:
        obj = tmp_path / (src.name + ".o")
        r = subprocess.run([cxx, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert r.returncode == 0, f"compiling {src.name} failed:\n{r.stderr[-4000:]}"
        objs.append(str(obj))
    exe = tmp_path / "cute_gmma_check"
    r = subprocess.run([cxx, *objs, "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "checked 92 slices, 0 failures" in r.stdout, r.stdout[-4000:]
