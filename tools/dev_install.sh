#!/usr/bin/env bash
# Rebuild and reinstall llmpre (editable) into .venv after C++/CMake changes.
# Serialised with a lock so concurrent callers never share the build directory.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/llmpre-build.lock env LLMPRE_CUDA="${LLMPRE_CUDA:-OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    .venv/bin/python -m pip install --quiet --no-build-isolation -e . "$@"
