// SwiGLU on the GPU, forward and backward, on raw device pointers and a stream
// (no framework types). The same contract as the CPU kernel (cpp/kernels/swiglu)
// and the Paddle op llmpre_swiglu:
//
//   out   = silu(g) * u,                     silu(g) = g * sigmoid(g)
//   dgate = dout * u * (s + silu(g) (1 - s)),  s = sigmoid(g)
//   dup   = dout * silu(g)
//
// gate, up, out, dout, dgate, dup: n elements each in `dtype` storage (fp32,
// fp16 or bf16), fp32 arithmetic, each output rounded once. The grouped expert
// MLP (paddle_ops/cuda/grouped_mlp_cuda.cc) runs it between its grouped GEMMs.
// 16-byte aligned pointers take the vectorised path (the last n % (16 / size)
// elements element-wise); anything else takes an element-wise path.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/kernel_args.h"

namespace llmpre {
namespace cuda {

struct SwiGluParams {
  int64_t n = 0;
  DType dtype = DType::kFloat32;
  const void* gate = nullptr;
  const void* up = nullptr;
  void* out = nullptr;          // forward
  const void* dout = nullptr;   // backward
  void* dgate = nullptr;        // backward
  void* dup = nullptr;          // backward
};

// Throw std::invalid_argument (file:line and the fix) for bad sizes or null
// buffers, std::runtime_error for CUDA errors. Asynchronous on `stream`.
void swiglu_forward(const SwiGluParams& p, cudaStream_t stream);
void swiglu_backward(const SwiGluParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
