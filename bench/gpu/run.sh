#!/usr/bin/env bash
# The one GPU script: on a fresh GPU machine with only this repository (nvcc,
# CMake, Python with numpy, torch and CuPy; no internet, no Paddle), build the
# CUDA parts, check every kernel against CPU references, then benchmark, and
# write results to ${OUT:-bench/gpu/out}. Checks run before benchmarks; a
# failed check is recorded and its op is not benchmarked.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/gpu/out}
mkdir -p "$OUT"
ARCH=${CUDA_ARCHS:-$(python3 - <<'PY'
import subprocess
try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.split()[0]
    print(out.replace(".", ""))
except Exception:
    print("80;90")
PY
)}
echo "building CUDA kernels for sm_${ARCH}" | tee "$OUT/build.log"
PYBIND11_DIR=$(python3 -m pybind11 --cmakedir 2>/dev/null || true)
cmake -S . -B build/gpu -DLLMPRE_CUDA=ON -DLLMPRE_PADDLE_OPS=OFF "-DLLMPRE_CUDA_ARCHS=${ARCH}" \
      -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v python3)" \
      ${PYBIND11_DIR:+-Dpybind11_DIR=$PYBIND11_DIR} >> "$OUT/build.log" 2>&1 \
  && cmake --build build/gpu -j "$(nproc)" >> "$OUT/build.log" 2>&1
status=$?
if [ $status -ne 0 ]; then
  echo "build failed; see $OUT/build.log"; tail -40 "$OUT/build.log"; exit $status
fi
export LLMPRE_CUDA_MODULE_DIR="$PWD/build/gpu/cuda"
python3 bench/gpu/run_all.py --out "$OUT"
