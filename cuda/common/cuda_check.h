// Error checks for CUDA runtime calls and kernel launches: every failure
// becomes a C++ exception naming file:line and the call, which pybind11 turns
// into a Python RuntimeError. Never exit().
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace llmpre {
namespace cuda {

inline void check(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what +
                             " failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
  }
}

}  // namespace cuda
}  // namespace llmpre

#define LLMPRE_CUDA_CHECK(expr) ::llmpre::cuda::check((expr), #expr, __FILE__, __LINE__)
// After a <<<>>> launch: catches bad configurations at once.
#define LLMPRE_CUDA_CHECK_LAUNCH() \
  ::llmpre::cuda::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
