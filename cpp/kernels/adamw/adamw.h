// AdamW on flat fp32 buffers, one pass over the elements (llmpre's optimizer keeps every
// parameter, gradient and moment of a shard in one flat buffer each). Element i, with
// every scalar given as the fp32 value the op's caller computed:
//   g  = grad[i] * grad_scale
//   v  = v * beta2 + (g * g) * one_minus_beta2
//   m  = m * beta1 + g * one_minus_beta1
//   p  = p - decay * p                      (only inside the decayed runs; decay = lr * wd)
//   p  = p - (m / (sqrt(v) * inv_bias2 + eps)) * step_size
// (inv_bias2 = 1 / sqrt(1 - beta2^t), step_size = lr / (1 - beta1^t)): the same fp32 operations
// in the same order as the pure-Paddle update (llmpre.ops.reference.adamw_), which makes ~20
// passes over the buffers. Elementwise, so the result does not depend on the thread count.
#pragma once

#include <cstdint>

namespace llmpre::kernels {

struct AdamWParams {
  int64_t n = 0;                  // elements of every buffer
  float grad_scale = 1.f;
  float beta1 = 0.9f, beta2 = 0.999f, one_minus_beta1 = 0.1f, one_minus_beta2 = 0.001f;
  float decay = 0.f;              // lr * weight_decay
  float inv_bias2 = 1.f, eps = 1e-8f, step_size = 0.f;
  const int64_t* decayed = nullptr;   // [runs, 2] sorted, disjoint [begin, end) element runs
  int64_t runs = 0;
};

// param, exp_avg, exp_avg_sq updated in place; grad is read only.
void adamw_update(const AdamWParams& p, float* param, const float* grad, float* exp_avg, float* exp_avg_sq);

}  // namespace llmpre::kernels
