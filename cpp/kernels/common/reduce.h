// Fixed-shape reductions: kLanes independent fp32 accumulators, combined in a
// fixed order, so the compiler vectorises them and the result does not depend
// on the thread count. Meant to be included inside an ISA namespace (see isa.h)
// through the op bodies; plain inline templates.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace llmpre::kernels {

constexpr int kLanes = 32;

template <class T>
LLMPRE_INLINE float sum_squares(const T* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float v = to_float(x[j + l]);
      acc[l] += v * v;
    }
  for (int l = 0; j < n; ++j, ++l) {
    const float v = to_float(x[j]);
    acc[l] += v * v;
  }
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

}  // namespace llmpre::kernels
