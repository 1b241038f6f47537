"""Builds ``_cuda_emu``: the CUDA sources of cuda/rms_norm, cuda/rotary,
cuda/cross_entropy, cuda/swiglu, cuda/moe_rows, cuda/moe_combine and cuda/grouped_mlp (over
a host stand-in of the CUTLASS grouped GEMMs, emu/grouped_gemm_reference.cpp), their pybind11 bindings (cuda/bindings/*_bind.cpp,
unchanged) and tests/cuda/emu/emu_module.cpp, compiled by the host C++
compiler against the CPU emulator in tests/cuda/emu/include. The result has
the same interface as ``llmpre._cuda`` for these ops, so the GPU checks'
kernel wrappers (bench/gpu/check_*.py ``GpuKernel``) run unchanged on it.

Tests only, never the package. The module is cached under
build/cuda-emu/<hash of every input file and flag>/, so it compiles once per
source change (a minute or two on two cores); a lock file keeps
concurrent test runs from building the same directory twice.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EMU = Path(__file__).resolve().parent / "emu"
OPS = ("rms_norm", "rotary", "cross_entropy", "swiglu", "moe_rows", "moe_combine")


# cuda/grouped_mlp's launches run too, over a host stand-in of the CUTLASS grouped GEMMs
# (emu/grouped_gemm_reference.cpp: CUTLASS cannot be emulated).
COMPOSED = ("grouped_mlp",)


def sources() -> list[Path]:
    cu = sorted(p for op in (*OPS, *COMPOSED) for p in (ROOT / "cuda" / op).glob("*.cu"))
    binds = [ROOT / "cuda" / "bindings" / f"{op}_bind.cpp" for op in (*OPS, *COMPOSED)]
    return cu + binds + [EMU / "emu_module.cpp", EMU / "grouped_gemm_reference.cpp"]


def inputs() -> list[Path]:
    headers = [p for d in ("common", *OPS, *COMPOSED) for p in sorted((ROOT / "cuda" / d).glob("*.h*"))]
    headers.append(ROOT / "cuda" / "grouped_gemm" / "grouped_gemm_cuda.h")
    shared = [ROOT / "cuda" / "bindings" / "registry.h", ROOT / "cpp" / "include" / "llmpre" / "dtype.h"]
    return sources() + headers + shared + sorted((EMU / "include").glob("*.h"))


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def flags() -> list[str]:
    import pybind11

    return ["-std=c++17", "-O1", "-fPIC", "-pthread", "-w", f"-I{EMU / 'include'}", f"-I{ROOT / 'cuda'}", f"-I{ROOT / 'cpp' / 'include'}",
            f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]


def why_unavailable() -> str | None:
    """None when the emulator can be built here, else the reason (for a skip)."""
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler (c++/g++) on PATH"
    try:
        import pybind11  # noqa: F401
    except ImportError:
        return "pybind11 is not installed"
    probe = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-x", "c++", "-"], input="#include <ucontext.h>\n",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{cxx} cannot compile C++17 with <ucontext.h>: {probe.stderr.strip()[:200]}"
    return None


def _key() -> str:
    h = hashlib.sha256()
    h.update(" ".join([compiler() or "", *flags(), sys.version]).encode())
    for p in inputs():
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def build():
    """The imported _cuda_emu module (compiled on first use after a source change)."""
    out_dir = ROOT / "build" / "cuda-emu" / _key()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only checkout: build in the temp directory instead
        import tempfile

        out_dir = Path(tempfile.gettempdir()) / "llmpre-cuda-emu" / _key()
        out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"_cuda_emu{sysconfig.get_config_var('EXT_SUFFIX')}"
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            cxx, fl = compiler(), flags()

            def compile_one(src: Path) -> Path:
                obj = out_dir / (src.relative_to(ROOT).as_posix().replace("/", "_") + ".o")
                lang = ["-x", "c++"] if src.suffix == ".cu" else []
                r = subprocess.run([cxx, *fl, *lang, "-c", str(src), "-o", str(obj)], capture_output=True,
                                   text=True)
                if r.returncode != 0:
                    raise RuntimeError(f"emulator build failed for {src.relative_to(ROOT)}:\n{r.stderr[-4000:]}")
                return obj

            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as ex:
                objs = list(ex.map(compile_one, sources()))
            tmp = target.with_name(target.name + ".tmp")
            r = subprocess.run([cxx, "-shared", "-pthread", *map(str, objs), "-o", str(tmp)], capture_output=True,
                               text=True)
            if r.returncode != 0:
                raise RuntimeError(f"emulator link failed:\n{r.stderr[-4000:]}")
            os.replace(tmp, target)
            for old in out_dir.parent.iterdir():  # builds of older sources
                if old != out_dir and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
    spec = importlib.util.spec_from_file_location("_cuda_emu", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
