// RMSNorm over the last axis on the GPU, forward and backward, on raw device
// pointers and a stream (no framework types).
//
//   inv_rms[r] = 1 / sqrt(mean_j x[r, j]^2 + eps)
//   y[r, j]    = weight[j] * (x[r, j] * inv_rms[r])            (rounded once)
//   dx[r, j]   = inv_rms[r] * (w_j dy_rj - n_rj * mean_k(w_k dy_rk n_rk)),  n = x * inv_rms
//   dweight[j] = sum_r dy[r, j] * n[r, j]
//
// x, y, dy, dx: [rows, hidden] row-major, weight/dweight: [hidden], all in
// `dtype` storage (fp32, fp16 or bf16) with fp32 arithmetic; inv_rms: [rows]
// fp32 (the forward writes it, the backward reads it). The same contract as
// the CPU kernel (cpp/kernels/rms_norm) and the Paddle op llmpre_rms_norm.
//
// dweight is reduced without atomics: each CTA of the backward sums dy * n
// over its rows into its own fp32 row of `workspace` ([ctas, hidden]), and a
// second small kernel adds those rows in a fixed order, so dweight has the
// same bits on every run. Ask rms_norm_backward_workspace_bytes() for the size.
//
// Buffers must not overlap. 16-byte aligned pointers and hidden % (16 /
// sizeof(dtype)) == 0 take the vectorised paths; anything else takes an
// element-wise path (correct, slower).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/kernel_args.h"

namespace llmpre {
namespace cuda {

struct RmsNormParams {
  int64_t rows = 0;
  int64_t hidden = 0;
  float eps = 1e-6f;
  DType dtype = DType::kFloat32;

  const void* x = nullptr;       // [rows, hidden]
  const void* weight = nullptr;  // [hidden]
  void* y = nullptr;             // forward: [rows, hidden]
  float* inv_rms = nullptr;      // forward writes, backward reads: [rows]

  const void* dy = nullptr;      // backward: [rows, hidden]
  void* dx = nullptr;            // backward: [rows, hidden]
  void* dweight = nullptr;       // backward: [hidden]
  void* workspace = nullptr;     // backward: fp32 scratch, rms_norm_backward_workspace_bytes()
  size_t workspace_bytes = 0;
};

// Throws std::invalid_argument (file:line, the argument and the fix) for bad
// sizes or null buffers, std::runtime_error for CUDA errors. Asynchronous on
// `stream`; the current device must own the buffers and the stream.
void rms_norm_forward(const RmsNormParams& p, cudaStream_t stream);

// Bytes of fp32 scratch the backward needs for these sizes on the current device.
size_t rms_norm_backward_workspace_bytes(const RmsNormParams& p);

void rms_norm_backward(const RmsNormParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
