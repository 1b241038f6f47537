"""Static agreement between the CUDA sources, the Paddle GPU wrappers, the
bindings and the GPU scripts; compiles nothing. The Paddle GPU halves are
only built against a CUDA build of Paddle, and the GPU scripts only run on a
GPU, so a renamed function or file would otherwise go unnoticed until then.
"""

from __future__ import annotations

import re

import pytest

from conftest import ROOT

# Paddle op (cuda_ops.h block LLMPRE_CUDA_<OP>, paddle_ops/cuda/<op>_cuda.cc) -> cuda/<dir>
OPS = {"rms_norm": "rmsnorm", "rotary": "rope", "cross_entropy": "cross_entropy"}


def _declared(op: str) -> list[str]:
    text = (ROOT / "paddle_ops" / "cuda_ops.h").read_text()
    block = re.search(rf"#ifdef LLMPRE_CUDA_{op.upper()}\n(.*?)#endif", text, re.S)
    assert block, f"cuda_ops.h has no LLMPRE_CUDA_{op.upper()} block"
    return re.findall(r"\b(\w+Cuda)\(", block.group(1))


@pytest.mark.parametrize("op", sorted(OPS))
def test_paddle_gpu_half_defines_what_cuda_ops_declares(op):
    src = ROOT / "paddle_ops" / "cuda" / f"{op}_cuda.cc"
    assert src.exists(), f"{src} is missing: paddle_ops/CMakeLists.txt derives LLMPRE_CUDA_{op.upper()} from it"
    text = src.read_text()
    names = _declared(op)
    assert names
    for name in names:
        assert re.search(rf"^\S.*\b{name}\(", text, re.M), f"{src.name} does not define {name}"
    assert '#include "cuda_ops.h"' in text  # the declarations are checked against the definitions


@pytest.mark.parametrize("d", sorted(OPS.values()))
def test_each_op_has_one_home(d):
    folder = ROOT / "cuda" / d
    for name in (f"{d}_cuda.h", f"{d}_kernels.cuh", f"{d}.cu"):
        assert (folder / name).exists(), f"cuda/{d}/{name} is missing"
    for dt in ("fp32", "fp16", "bf16"):
        text = (folder / f"{d}_{dt}.cu").read_text()
        assert re.search(r"^template \w+ \w+<", text, re.M), f"cuda/{d}/{d}_{dt}.cu instantiates nothing"
    for f in folder.iterdir():  # kernels never see a framework type
        assert not re.search(r'#include\s*[<"]paddle', f.read_text()), f"cuda/{d}/{f.name} includes Paddle"


def test_gpu_scripts_call_only_bound_functions():
    defined = set()
    for f in (ROOT / "cuda" / "bindings").glob("*.cpp"):
        defined |= set(re.findall(r'm\.def\(\s*"(\w+)"', f.read_text()))
    for name in ("check_rmsnorm", "check_rope", "check_cross_entropy", "bench_rmsnorm", "bench_rope",
                 "bench_cross_entropy", "harness"):
        used = set(re.findall(r"\bcu\.(\w+)\(", (ROOT / "bench" / "gpu" / f"{name}.py").read_text()))
        assert used <= defined, f"bench/gpu/{name}.py calls {sorted(used - defined)}, which no binding defines"
