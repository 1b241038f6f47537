"""Process setup that must happen before Paddle is imported.

- Threads: Paddle reads ``OMP_NUM_THREADS`` once, at import, and uses 1
  thread when it is unset; it also prints a warning whenever the value is
  above 1. llmpre sets the count deliberately (all cores available to the
  process unless told otherwise) and imports Paddle quietly.
- AMD CPUs: the MKL bundled with Paddle's CPU wheel picks a slow generic code
  path on non-Intel processors; ``MKL_DEBUG_CPU_TYPE=5`` makes it use its AVX2
  kernels (measured here on an AMD EPYC, 2 threads: fp32 matmul 2048x256x8192
  27 -> 96 GFLOP/s). llmpre sets it on AMD CPUs unless the variable is set.
- Memory allocator (glibc): Paddle's CPU tensors come from malloc, and glibc
  serves blocks above its mmap threshold (at most 32 MiB) with fresh mmaps that
  it unmaps on free, so every large temporary is page-faulted in anew: measured
  here, a new 78 MB tensor costs 55 ms instead of 10 ms, and a 19.5M-parameter
  LLaMA step takes 1.4x as long. llmpre raises the mmap and trim thresholds
  (``mallopt``) so freed blocks are reused; the process keeps its peak memory
  mapped instead of returning it to the system. ``LLMPRE_MALLOC_TUNING=0``
  leaves glibc's defaults.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


_ALLOCATOR_TUNED = False


def configure_allocator() -> bool:
    """Keep freed large blocks for reuse (see the module docstring); True when applied.
    Idempotent; a no-op outside glibc or with ``LLMPRE_MALLOC_TUNING=0``."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if os.environ.get("LLMPRE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    _ALLOCATOR_TUNED = bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))
    return _ALLOCATOR_TUNED


def configure_math_library() -> None:
    """Environment for Paddle's bundled MKL; call before ``import paddle``."""
    if cpu_vendor() == "AuthenticAMD":
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")


def configure_threads(num_threads: int | None = None) -> int:
    """Set the CPU thread count for Paddle's kernels; returns the count used.

    Must run before ``import paddle`` to take effect; an explicit
    ``OMP_NUM_THREADS`` in the environment wins over the default.
    """
    if num_threads is None:
        env = os.environ.get("OMP_NUM_THREADS")
        num_threads = int(env) if env and env.isdigit() and int(env) > 0 else available_cores()
    os.environ["OMP_NUM_THREADS"] = str(num_threads)
    os.environ.setdefault("MKL_NUM_THREADS", str(num_threads))
    configure_math_library()
    if "paddle" in sys.modules:
        sys.modules["paddle"].base.core.set_num_threads(num_threads)
    return num_threads


def import_paddle():
    """``import paddle`` without its import-time noise (ccache and thread warnings)."""
    if "paddle" in sys.modules:
        return sys.modules["paddle"]
    configure_math_library()
    configure_allocator()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ccache.*")
        with contextlib.redirect_stderr(io.StringIO()):
            import paddle
    return paddle
