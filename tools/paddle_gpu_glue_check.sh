#!/usr/bin/env bash
# Compile-only check of the Paddle GPU glue, without a GPU or a CUDA build of Paddle.
#
# Compiles every paddle_ops/*.cc and paddle_ops/cuda/*.cc (-c to /dev/null, nothing is linked)
# the way paddle_ops/CMakeLists.txt compiles them against a CUDA build of Paddle: PADDLE_WITH_CUDA,
# LLMPRE_WITH_CUDA and LLMPRE_CUDA_<OP> for each paddle_ops/cuda/<op>_cuda.cc, the installed
# Paddle's headers (the CPU wheel ships the same headers as the GPU one) and the CUDA toolkit's.
# Warnings in llmpre's own code are errors; paddle_ops/cuda/*.cc must also declare every function
# it exports in cuda_ops.h (-Wmissing-declarations), so a signature that drifted from the
# declaration the CPU op calls fails here instead of at link time on a GPU build.
#
# Paddle's Python-binding headers (paddle/utils/pybind.h, included by paddle/extension.h) need
# the cuBLAS, cuDNN, cuFFT, cuRAND, cuSPARSE and cuSOLVER headers when PADDLE_WITH_CUDA is set. A
# toolkit without them (nvcc and cudart only, as on CI) gets PADDLE_NO_PYTHON, which leaves those
# bindings out; the glue uses none of them. CUDA_LIB_INCLUDES="dir ..." adds include folders
# that have them (e.g. nvidia/cu13/include and nvidia/cudnn/include of NVIDIA's pip wheels).
#
# usage: tools/paddle_gpu_glue_check.sh [PYTHON]    (default .venv/bin/python)
# environment: CXX (default c++), CUDA_HOME (default CUDA_PATH, /usr/local/cuda, else nvcc's toolkit),
#              CUDA_LIB_INCLUDES, JOBS (parallel compiles, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
CXX=${CXX:-c++}
JOBS=${JOBS:-2}
if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME=${CUDA_PATH:-/usr/local/cuda}
  if [ ! -f "$CUDA_HOME/include/cuda_runtime.h" ] && command -v nvcc >/dev/null 2>&1; then
    CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  fi
fi
if [ ! -f "$CUDA_HOME/include/cuda_runtime.h" ]; then
  echo "paddle-gpu-glue-check: no CUDA toolkit headers at $CUDA_HOME/include (set CUDA_HOME)" >&2
  exit 1
fi

# Paddle's root and version, from the interpreter that builds llmpre (as paddle_ops/CMakeLists.txt does).
mapfile -t probe < <("$PY" -W ignore -c 'import os, sysconfig, paddle
print(os.path.dirname(os.path.abspath(paddle.__file__))); print(paddle.__version__)
print(sysconfig.get_paths()["include"])' | tail -n 3)
PADDLE_ROOT=${probe[0]}
PADDLE_VERSION=${probe[1]}
PY_INCLUDE=${probe[2]}
PINC=$PADDLE_ROOT/include
[ -f "$PINC/paddle/extension.h" ] || { echo "paddle-gpu-glue-check: $PINC/paddle/extension.h not found" >&2; exit 1; }

# The defines paddle_ops/CMakeLists.txt sets on a CUDA build of Paddle.
ops=()
for src in paddle_ops/cuda/*_cuda.cc; do
  op=$(basename "$src" _cuda.cc)
  ops+=("$op")
done
defs=(-D_GLIBCXX_USE_CXX11_ABI=1 -DPADDLE_WITH_CUDA -DPADDLE_EXTENSION_NAME=_paddle_ops
      "-DLLMPRE_PADDLE_VERSION=\"$PADDLE_VERSION\"" "-DLLMPRE_CUDA_OPS=\"$(IFS=,; echo "${ops[*]}")\""
      -DLLMPRE_WITH_CUDA)
for op in "${ops[@]}"; do defs+=("-DLLMPRE_CUDA_${op^^}"); done

# llmpre's folders as -I (warnings on), everyone else's as -isystem (warnings off).
incs=(-Ipaddle_ops -Icpp/include -Icpp/kernels -Icuda
      -isystem "$PINC" -isystem "$PINC/third_party"
      -isystem "$PINC/paddle/phi/api/include/compat"
      -isystem "$PINC/paddle/phi/api/include/compat/torch/csrc/api/include"
      -isystem "$CUDA_HOME/include" -isystem "$PY_INCLUDE")
# CUDA 13 keeps thrust/cub/libcu++ (included by Paddle's headers) under include/cccl.
[ -d "$CUDA_HOME/include/cccl" ] && incs+=(-isystem "$CUDA_HOME/include/cccl")
for d in ${CUDA_LIB_INCLUDES:-}; do incs+=(-isystem "$d"); done

libs_probe='#include <cublas_v2.h>
#include <cublasLt.h>
#include <cudnn.h>
#include <cufft.h>
#include <curand.h>
#include <cusparse.h>
#include <cusolverDn.h>'
if printf '%s\n' "$libs_probe" | "$CXX" -x c++ -std=c++17 -fsyntax-only "${incs[@]}" - >/dev/null 2>&1; then
  mode="with Paddle's Python-binding headers"
else
  defs+=(-DPADDLE_NO_PYTHON)
  mode="PADDLE_NO_PYTHON: no cuBLAS/cuDNN/cuFFT/cuRAND/cuSPARSE/cuSOLVER headers in $CUDA_HOME/include or CUDA_LIB_INCLUDES"
fi

flags=(-std=c++17 -O1 -fPIC -Wall -Wextra -Wno-unused-parameter -Werror "-fmacro-prefix-map=$PWD/=")
files=(paddle_ops/*.cc paddle_ops/cuda/*.cc)
echo "paddle-gpu-glue-check: ${#files[@]} files against Paddle $PADDLE_VERSION ($PADDLE_ROOT), CUDA headers of" \
     "$CUDA_HOME, $CXX; $mode"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
compile() {  # file -> writes $out/<n>.log, returns the compiler's status
  local src=$1 extra=()
  case $src in paddle_ops/cuda/*) extra=(-Wmissing-declarations) ;; esac
  "$CXX" "${flags[@]}" "${extra[@]}" "${defs[@]}" "${incs[@]}" -c "$src" -o /dev/null \
      >"$out/$(echo "$src" | tr / _).log" 2>&1
}
export -f compile
export out
failed=0
printf '%s\n' "${files[@]}" | xargs -P "$JOBS" -I{} bash -c "$(declare -p flags defs incs CXX); compile {}" \
    || failed=1
bad=0
for src in "${files[@]}"; do
  log=$out/$(echo "$src" | tr / _).log
  if [ -s "$log" ]; then
    bad=$((bad + 1))
    echo "--- $src"
    cat "$log"
  fi
done
if [ "$failed" -ne 0 ] || [ "$bad" -ne 0 ]; then
  echo "paddle-gpu-glue-check: $bad of ${#files[@]} files do not compile cleanly (see above)" >&2
  exit 1
fi
echo "paddle-gpu-glue-check: all ${#files[@]} files compile"
