// Elementwise math written so that GCC/Clang vectorise the loops calling it
// (no branches, no library calls; needs -fno-trapping-math, which the kernels'
// CMake sets).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/dtype.h"

namespace llmpre::kernels {

// exp(x) for fp32: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2,
// then Cephes' degree-6 polynomial for exp(r) (max relative error about 2 ulp
// over the fp32 range). Saturates to +inf's neighbourhood above 88.38, returns
// 0 below -87.34 (including -inf); NaN in, NaN out.
LLMPRE_INLINE float exp_f(float x) {
  const float hi = 88.3762626647949f;
  const float lo = -87.3365447504f;
  const float xc = std::min(std::max(x, lo), hi);
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  float r = xc - n * 0.693359375f;   // ln2 split in two parts so that
  r = r - n * -2.12194440e-4f;       // n * ln2_hi is exact
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = uint32_t(int32_t(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float y = p * scale;
  return x < lo ? 0.0f : y;
}

// 1 / (1 + exp(-x)).
LLMPRE_INLINE float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

}  // namespace llmpre::kernels
