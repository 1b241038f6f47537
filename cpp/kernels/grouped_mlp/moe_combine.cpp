// The MoE combine (moe_combine.h): plain loops over rows of `hidden` floats, which the
// compiler vectorises; tokens are split between threads in contiguous slices.
#include "grouped_mlp/moe_combine.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/parallel.h"

namespace llmpre::kernels {
namespace {

void check(const MoeCombineParams& p, const int64_t* pos, const char* fn) {
  const std::string f(fn);
  if (p.dtype != DType::kFloat32)
    throw std::invalid_argument(f + ": dtype must be float32 (other dtypes take the reference op), got " +
                                dtype_name(p.dtype));
  if (p.tokens < 0 || p.slots <= 0 || p.rows < 0 || p.hidden <= 0)
    throw std::invalid_argument(f + ": need tokens, rows >= 0 and slots, hidden > 0, got tokens " +
                                std::to_string(p.tokens) + ", slots " + std::to_string(p.slots) + ", rows " +
                                std::to_string(p.rows) + ", hidden " + std::to_string(p.hidden));
  // every pair reads its own row: in range and never shared (the backward writes each row once)
  std::vector<bool> seen(size_t(p.rows), false);
  for (int64_t i = 0; i < p.tokens * p.slots; ++i) {
    const int64_t r = pos[i];
    if (r < 0 || r >= p.rows)
      throw std::invalid_argument(f + ": pos[" + std::to_string(i / p.slots) + ", " + std::to_string(i % p.slots) +
                                  "] = " + std::to_string(r) + " is outside the " + std::to_string(p.rows) +
                                  " rows of y");
    if (seen[size_t(r)])
      throw std::invalid_argument(f + ": row " + std::to_string(r) + " of y appears twice in pos (each (token, "
                                  "slot) pair must have its own row)");
    seen[size_t(r)] = true;
  }
}

int64_t grain(const MoeCombineParams& p) { return grain_for(p.slots * p.hidden); }

}  // namespace

void moe_combine_forward(const MoeCombineParams& p, const void* y_, const int64_t* pos, const float* w, void* out_) {
  check(p, pos, "moe_combine_forward");
  const float* y = static_cast<const float*>(y_);
  float* out = static_cast<float*>(out_);
  const int64_t h = p.hidden, k = p.slots;
  parallel_for(p.tokens, grain(p), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* __restrict o = out + t * h;
      const float* __restrict y0 = y + pos[t * k] * h;
      const float w0 = w[t * k];
      for (int64_t c = 0; c < h; ++c) o[c] = w0 * y0[c];
      for (int64_t j = 1; j < k; ++j) {
        const float* __restrict yj = y + pos[t * k + j] * h;
        const float wj = w[t * k + j];
        for (int64_t c = 0; c < h; ++c) o[c] += wj * yj[c];
      }
    }
  });
}

void moe_combine_backward(const MoeCombineParams& p, const void* y_, const int64_t* pos, const float* w,
                          const void* dout_, void* dy_, float* dw) {
  check(p, pos, "moe_combine_backward");
  const float* y = static_cast<const float*>(y_);
  const float* dout = static_cast<const float*>(dout_);
  float* dy = static_cast<float*>(dy_);
  const int64_t h = p.hidden, k = p.slots;
  if (p.tokens * k < p.rows) {   // rows no pair points at (none in a dropless MoE layer)
    std::vector<bool> used(size_t(p.rows), false);
    for (int64_t i = 0; i < p.tokens * k; ++i) used[size_t(pos[i])] = true;
    for (int64_t r = 0; r < p.rows; ++r)
      if (!used[size_t(r)]) std::fill(dy + r * h, dy + (r + 1) * h, 0.f);
  }
  parallel_for(p.tokens, grain(p), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* __restrict g = dout + t * h;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t r = pos[t * k + j];
        const float* __restrict yr = y + r * h;
        float* __restrict d = dy + r * h;
        const float wj = w[t * k + j];
        for (int64_t c = 0; c < h; ++c) d[c] = wj * g[c];
        double lanes[8] = {};   // independent partial sums, combined in a fixed order
        int64_t c = 0;
        for (; c + 8 <= h; c += 8)
          for (int l = 0; l < 8; ++l) lanes[l] += double(g[c + l]) * double(yr[c + l]);
        for (int l = 0; c < h; ++c, ++l) lanes[l] += double(g[c]) * double(yr[c]);
        double dot = 0.0;
        for (double v : lanes) dot += v;
        dw[t * k + j] = float(dot);
      }
    }
  });
}

}  // namespace llmpre::kernels
