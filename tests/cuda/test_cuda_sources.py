"""Static agreement between the CUDA sources, the Paddle GPU wrappers, the
bindings and the GPU scripts; compiles nothing. The Paddle GPU halves are
only built against a CUDA build of Paddle, and the GPU scripts only run on a
GPU, so a renamed function or file would otherwise go unnoticed until then.
"""

from __future__ import annotations

import re

import pytest

from conftest import ROOT

# Every fused op has one name, used by every layer: cpp/kernels/<op>/, cuda/<op>/,
# cuda/bindings/<op>_bind.cpp, paddle_ops/<op>_op.cc, paddle_ops/cuda/<op>_cuda.cc,
# the Paddle op llmpre_<op>, bench/gpu/{check,bench}_<op>.py.
FUSED_OPS = ("rms_norm", "rotary", "swiglu", "cross_entropy", "flash_attention")
# The row kernels: cuda/<op>/ holds <op>_cuda.h, <op>_kernels.cuh, <op>.cu and one file per dtype.
OPS = ("rms_norm", "rotary", "cross_entropy")
# Ops with a CUDA path (a LLMPRE_CUDA_<OP> block in cuda_ops.h and paddle_ops/cuda/<op>_cuda.cc).
CUDA_OPS = (*OPS, "flash_attention", "swiglu", "grouped_mlp", "moe_combine")
# Other spellings the ops had before they got one name each, in identifiers and file names
# (flash attention's kernel-internal namespace `fa` and LLMPRE_FA_* build switches stay).
RETIRED = re.compile(r"rmsnorm|\brope\b|rope_|_rope\b|flash_attn|FlashAttn|FLASH_ATTN")
RETIRED_FILE = re.compile(RETIRED.pattern + r"|(^|/)fa_")


def _declared(op: str) -> list[str]:
    text = (ROOT / "paddle_ops" / "cuda_ops.h").read_text()
    block = re.search(rf"#ifdef LLMPRE_CUDA_{op.upper()}\n(.*?)#endif", text, re.S)
    assert block, f"cuda_ops.h has no LLMPRE_CUDA_{op.upper()} block"
    return re.findall(r"\b(\w+Cuda)\(", block.group(1))


@pytest.mark.parametrize("op", CUDA_OPS)
def test_paddle_gpu_half_defines_what_cuda_ops_declares(op):
    src = ROOT / "paddle_ops" / "cuda" / f"{op}_cuda.cc"
    assert src.exists(), f"{src} is missing: paddle_ops/CMakeLists.txt derives LLMPRE_CUDA_{op.upper()} from it"
    text = src.read_text()
    names = _declared(op)
    assert names
    for name in names:
        assert re.search(rf"^\S.*\b{name}\(", text, re.M), f"{src.name} does not define {name}"
    assert '#include "cuda_ops.h"' in text  # the declarations are checked against the definitions


@pytest.mark.parametrize("d", OPS)
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
    scripts = [p.stem for p in (ROOT / "bench" / "gpu").glob("*.py") if p.stem.startswith(("check_", "bench_"))]
    assert {f"check_{op}" for op in CUDA_OPS} <= set(scripts), "every op with a CUDA path has a GPU check"
    for name in scripts + ["harness"]:
        used = set(re.findall(r"\bcu\.(\w+)\(", (ROOT / "bench" / "gpu" / f"{name}.py").read_text()))
        assert used <= defined, f"bench/gpu/{name}.py calls {sorted(used - defined)}, which no binding defines"


def test_one_name_per_op():
    import subprocess

    for op in FUSED_OPS:
        assert (ROOT / "cpp" / "kernels" / op / f"{op}.h").exists(), f"cpp/kernels/{op}/{op}.h is missing"
        assert (ROOT / "paddle_ops" / f"{op}_op.cc").exists(), f"paddle_ops/{op}_op.cc is missing"
        assert f"PD_BUILD_OP(llmpre_{op})" in (ROOT / "paddle_ops" / f"{op}_op.cc").read_text()
    for op in CUDA_OPS:
        assert (ROOT / "cuda" / op / f"{op}_cuda.h").exists(), f"cuda/{op}/{op}_cuda.h is missing"
        assert (ROOT / "cuda" / "bindings" / f"{op}_bind.cpp").exists(), f"cuda/bindings/{op}_bind.cpp is missing"
    files = subprocess.run(["git", "ls-files", "cpp", "cuda", "paddle_ops", "bench/gpu", "tests/cuda", "tests/ops",
                            "python/llmpre/ops", "tools"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout: no file list")
    assert not [f for f in files if RETIRED_FILE.search(f)], "file names must use the ops' one name"
    # Identifiers too, in the code that implements the ops (model configs keep HF's rope_* keys).
    code = [f for f in files if f.startswith(("cpp/kernels/", "cuda/", "paddle_ops/"))
            and f.endswith((".h", ".cc", ".cpp", ".cu", ".cuh", ".inc", ".txt", ".py"))]
    found = [f"{f}:{i + 1}" for f in code for i, line in enumerate((ROOT / f).read_text().splitlines())
             if RETIRED.search(line)]
    assert not found, f"other names of an op: {found[:10]}"


def test_one_dtype_enum():
    import subprocess

    files = subprocess.run(["git", "ls-files", "cpp", "cuda", "paddle_ops", "tests/cuda"], cwd=ROOT, capture_output=True,
                           text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout: no file list")
    enums = [f for f in files if f.endswith((".h", ".cuh", ".cc", ".cpp", ".cu", ".inc"))
             and re.search(r"\benum\s+(class\s+)?\w*[Dd][Tt]ype\b", (ROOT / f).read_text())]
    assert enums == ["cpp/include/llmpre/dtype.h"], f"dtype enums outside llmpre/dtype.h: {enums}"
    # Its codes are PaddleNLP's .idx codes, as the Python corpus writer writes them.
    import numpy as np

    from llmpre.data.writer import DTYPE_CODES

    text = (ROOT / "cpp" / "include" / "llmpre" / "dtype.h").read_text()
    codes = {k: int(v) for k, v in re.findall(r"^\s*(k\w+) = (\d+),", text, re.M)}
    names = dict(re.findall(r'case DType::(k\w+): return "(\w+)";', text))
    by_name = {names[k]: code for k, code in codes.items()}
    assert len(set(codes.values())) == len(codes) == len(names) == 12
    for dt, code in DTYPE_CODES.items():
        assert by_name[np.dtype(dt).name] == code, np.dtype(dt).name
