// AdamW over flat buffers (adamw.h). Compiled for the baseline ISA only: the loop is
// memory-bound, and without FMA contraction each step rounds like the pure-Paddle update.
#include "adamw/adamw.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "common/parallel.h"

namespace llmpre::kernels {
namespace {

void update_range(const AdamWParams& p, float* __restrict w, const float* __restrict grad, float* __restrict m,
                  float* __restrict v, int64_t b, int64_t e, bool decay) {
  const float gs = p.grad_scale, b1 = p.beta1, b2 = p.beta2, c1 = p.one_minus_beta1, c2 = p.one_minus_beta2;
  const float dec = p.decay, ib2 = p.inv_bias2, eps = p.eps, step = p.step_size;
  for (int64_t i = b; i < e; ++i) {
    const float g = grad[i] * gs;
    const float s = (g * g) * c2;
    v[i] = v[i] * b2 + s;
    m[i] = m[i] * b1 + g * c1;
    float x = w[i];
    if (decay) x = x - dec * x;
    const float d = std::sqrt(v[i]) * ib2 + eps;
    w[i] = x - (m[i] / d) * step;
  }
}

}  // namespace

void adamw_update(const AdamWParams& p, float* param, const float* grad, float* exp_avg, float* exp_avg_sq) {
  if (p.n < 0 || p.runs < 0) throw std::invalid_argument("adamw_update: negative size");
  if (p.n > 0 && (!param || !grad || !exp_avg || !exp_avg_sq))
    throw std::invalid_argument("adamw_update: a buffer pointer is null");
  for (int64_t r = 0; r < p.runs; ++r) {
    const int64_t a = p.decayed[2 * r], b = p.decayed[2 * r + 1];
    if (a < 0 || b < a || b > p.n || (r > 0 && a < p.decayed[2 * r - 1]))
      throw std::invalid_argument("adamw_update: decayed run " + std::to_string(r) + " = [" + std::to_string(a) +
                                  ", " + std::to_string(b) + ") must be sorted, disjoint and within the " +
                                  std::to_string(p.n) + " elements");
  }
  parallel_for(p.n, grain_for(8), [&](int64_t c0, int64_t c1) {
    // the decayed runs that may overlap [c0, c1): the first one ending after c0
    const int64_t* ends_begin = p.decayed;
    int64_t r = 0;
    {
      int64_t lo = 0, hi = p.runs;   // first run with end > c0
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (ends_begin[2 * mid + 1] > c0) hi = mid; else lo = mid + 1;
      }
      r = lo;
    }
    int64_t pos = c0;
    for (; pos < c1 && r < p.runs; ++r) {
      const int64_t a = std::max(p.decayed[2 * r], pos), b = std::min(p.decayed[2 * r + 1], c1);
      if (a >= c1) break;
      if (a > pos) update_range(p, param, grad, exp_avg, exp_avg_sq, pos, a, false);
      update_range(p, param, grad, exp_avg, exp_avg_sq, a, b, true);
      pos = b;
    }
    if (pos < c1) update_range(p, param, grad, exp_avg, exp_avg_sq, pos, c1, false);
  });
}

}  // namespace llmpre::kernels
