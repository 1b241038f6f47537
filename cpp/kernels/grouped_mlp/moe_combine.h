// The MoE combine on raw CPU buffers: each token's output is the routing-weighted sum of
// its k expert rows, read where the grouped expert MLP left them (rows sorted by expert):
//
//   out[t] = sum_j w[t, j] * y[pos[t, j]]          (j = 0..slots-1, in slot order)
//
//   y   [rows, hidden] float32       pos [tokens, slots] int64, distinct, in [0, rows)
//   w   [tokens, slots] float32      out [tokens, hidden]
//
// Token-major and deterministic: a token's sum is done by one thread in slot order, and as
// every row belongs to one (token, slot) pair the backward writes each row once (no atomics):
//   dy[pos[t, j]] = w[t, j] * dout[t]  (rows no pair points at: 0),
//   dw[t, j]      = <dout[t], y[pos[t, j]]>  (accumulated in double).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace llmpre::kernels {

struct MoeCombineParams {
  int64_t tokens = 0;
  int64_t slots = 0;
  int64_t rows = 0;
  int64_t hidden = 0;
  DType dtype = DType::kFloat32;
};

void moe_combine_forward(const MoeCombineParams& p, const void* y, const int64_t* pos, const float* w, void* out);

void moe_combine_backward(const MoeCombineParams& p, const void* y, const int64_t* pos, const float* w,
                          const void* dout, void* dy, float* dw);

}  // namespace llmpre::kernels
