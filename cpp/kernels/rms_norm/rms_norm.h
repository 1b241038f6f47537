// RMSNorm over the last axis, forward and backward, on raw CPU buffers.
//
//   inv_rms[r] = 1 / sqrt(mean_j x[r, j]^2 + eps)
//   y[r, j]    = weight[j] * (x[r, j] * inv_rms[r])
//
// x, y, dy, dx: [rows, hidden] row-major; weight, dweight: [hidden]; all in
// `dtype` (fp32 or bf16 storage, fp32 arithmetic). inv_rms: [rows] fp32, the
// forward's by-product the backward reuses.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace llmpre::kernels {

struct RmsNormParams {
  int64_t rows = 0;
  int64_t hidden = 0;
  float eps = 1e-6f;
  DType dtype = DType::kFloat32;
};

// Throws std::invalid_argument for a bad size or a null buffer.
void rms_norm_forward(const RmsNormParams& p, const void* x, const void* weight, void* y,
                      float* inv_rms);

// dx = inv_rms * (w*dy - n * mean_j(w*dy*n)) with n = x * inv_rms;
// dweight = sum_r dy * n, reduced over a fixed partition of the rows in a fixed
// order: bitwise the same result for any number of threads.
void rms_norm_backward(const RmsNormParams& p, const void* x, const void* weight,
                       const float* inv_rms, const void* dy, void* dx, void* dweight);

}  // namespace llmpre::kernels
