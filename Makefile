# Two commands on a fresh machine:
#   make train   - set up .venv and pretrain llama-tiny on the bundled corpus
#   make test    - set up .venv and run the test suite
# Everything installs into .venv (Python >= 3.9 with venv, a C++17 compiler).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# GPU users: PADDLE_PKG="paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/"
PADDLE_PKG ?= paddlepaddle==3.3.1
# CUDA kernels are compiled by `make cuda-build` (or LLMPRE_CUDA=AUTO make setup).
LLMPRE_CUDA ?= OFF
CUDA_ARCHS  ?= 80;90
# Hopper flash attention kernels (sm_90a): AUTO = when CUDA_ARCHS has 90.
FA_SM90     ?= AUTO
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)

SOURCES := pyproject.toml CMakeLists.txt $(shell find cpp cuda paddle_ops -type f 2>/dev/null)

.PHONY: setup train test cuda-build paddle-gpu-glue-check clean

$(VENV)/.llmpre-installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PADDLE_PKG)
	$(PY) -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja "pytest>=7" \
	    pytest-timeout visualdl matplotlib tensorboardX nvidia-cutlass
	LLMPRE_CUDA=$(LLMPRE_CUDA) $(PY) -m pip install --quiet --no-build-isolation -e .
	touch $@

setup: $(VENV)/.llmpre-installed

train: setup
	$(VENV)/bin/llmpre train --model llama-tiny

test: setup
	$(PY) -m pytest -q --durations=25 tests

# Compile-only build of the CUDA kernels (needs nvcc; no GPU needed).
cuda-build: setup
	$(VENV)/bin/cmake -S . -B build/cuda -G Ninja -DLLMPRE_CUDA=ON -DLLMPRE_PADDLE_OPS=OFF \
	    "-DLLMPRE_CUDA_ARCHS=$(CUDA_ARCHS)" -DLLMPRE_FA_SM90=$(FA_SM90) -DPython_EXECUTABLE=$(abspath $(PY)) \
	    -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir)
	$(VENV)/bin/cmake --build build/cuda -j $(JOBS)

# Compile-only check of the Paddle GPU glue (paddle_ops/*.cc and paddle_ops/cuda/*.cc with every
# CUDA path on) against the installed Paddle's headers and the CUDA toolkit's; no GPU, no CUDA
# build of Paddle, nothing linked (see tools/paddle_gpu_glue_check.sh).
paddle-gpu-glue-check: setup
	JOBS=$(JOBS) bash tools/paddle_gpu_glue_check.sh $(PY)

clean:
	rm -rf build $(VENV)
