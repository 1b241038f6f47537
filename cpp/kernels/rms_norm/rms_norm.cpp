#include "rms_norm/rms_norm.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/isa.h"
#include "common/parallel.h"
#include "common/reduce.h"

namespace llmpre::kernels {
namespace rms_norm_impl {
namespace baseline {
#include "rms_norm/rms_norm_body.inc"
}  // namespace baseline
LLMPRE_BEGIN_AVX2
namespace avx2 {
#include "rms_norm/rms_norm_body.inc"
}  // namespace avx2
LLMPRE_END_AVX2

void check(const RmsNormParams& p, const char* fn, std::initializer_list<const void*> buffers) {
  check_dtype(p.dtype, fn);
  if (p.rows < 0 || p.hidden <= 0)
    throw std::invalid_argument(std::string(fn) + ": rows must be >= 0 and hidden > 0, got rows=" +
                                std::to_string(p.rows) + ", hidden=" + std::to_string(p.hidden));
  if (!(p.eps >= 0.0f))
    throw std::invalid_argument(std::string(fn) + ": eps must be >= 0, got " + std::to_string(p.eps));
  if (p.rows == 0) return;
  for (const void* b : buffers)
    if (b == nullptr) throw std::invalid_argument(std::string(fn) + ": a buffer pointer is null");
}

// Rows per chunk of the weight-gradient reduction: a function of the shape
// only (never of the thread count), at most 64 chunks.
int64_t grad_chunks(int64_t rows) { return std::max<int64_t>(1, std::min<int64_t>(64, rows / 16)); }

template <class T>
void forward(const RmsNormParams& p, const void* x, const void* w, void* y, float* inv) {
  const int64_t h = p.hidden;
  const float eps = p.eps;
  const bool avx2 = use_avx2();
  parallel_for(p.rows, grain_for(2 * h), [&](int64_t r0, int64_t r1) {
    auto xs = static_cast<const T*>(x);
    auto ws = static_cast<const T*>(w);
    auto ys = static_cast<T*>(y);
    if (avx2)
      avx2::forward_rows(xs, ws, ys, inv, r0, r1, h, eps);
    else
      baseline::forward_rows(xs, ws, ys, inv, r0, r1, h, eps);
  });
}

template <class T>
void backward(const RmsNormParams& p, const void* x, const void* w, const float* inv, const void* dy,
              void* dx, void* dw) {
  const int64_t h = p.hidden, rows = p.rows;
  const bool avx2 = use_avx2();
  auto xs = static_cast<const T*>(x);
  auto ws = static_cast<const T*>(w);
  auto dys = static_cast<const T*>(dy);
  auto dxs = static_cast<T*>(dx);
  auto dws = static_cast<T*>(dw);
  const int64_t chunks = grad_chunks(rows);
  std::vector<float> parts(size_t(chunks * h), 0.0f);
  parallel_for(chunks, grain_for(4 * h * std::max<int64_t>(1, rows / chunks)), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
      float* part = parts.data() + c * h;
      if (avx2)
        avx2::backward_rows(xs, ws, inv, dys, dxs, part, r0, r1, h);
      else
        baseline::backward_rows(xs, ws, inv, dys, dxs, part, r0, r1, h);
    }
  });
  parallel_for(h, grain_for(chunks), [&](int64_t j0, int64_t j1) {
    if (avx2)
      avx2::reduce_parts(parts.data(), chunks, h, dws, j0, j1);
    else
      baseline::reduce_parts(parts.data(), chunks, h, dws, j0, j1);
  });
}
}  // namespace rms_norm_impl

void rms_norm_forward(const RmsNormParams& p, const void* x, const void* weight, void* y,
                      float* inv_rms) {
  rms_norm_impl::check(p, "rms_norm_forward", {x, weight, y, inv_rms});
  if (p.rows == 0) return;
  if (p.dtype == DType::kFloat32)
    rms_norm_impl::forward<float>(p, x, weight, y, inv_rms);
  else
    rms_norm_impl::forward<bf16>(p, x, weight, y, inv_rms);
}

void rms_norm_backward(const RmsNormParams& p, const void* x, const void* weight,
                       const float* inv_rms, const void* dy, void* dx, void* dweight) {
  rms_norm_impl::check(p, "rms_norm_backward", {x, weight, inv_rms, dy, dx, dweight});
  if (p.rows == 0) {
    if (dweight == nullptr) throw std::invalid_argument("rms_norm_backward: dweight is null");
    std::vector<float> zeros(size_t(p.hidden), 0.0f);
    if (p.dtype == DType::kFloat32)
      rms_norm_impl::baseline::reduce_parts(zeros.data(), 1, p.hidden, static_cast<float*>(dweight), 0, p.hidden);
    else
      rms_norm_impl::baseline::reduce_parts(zeros.data(), 1, p.hidden, static_cast<bf16*>(dweight), 0, p.hidden);
    return;
  }
  if (p.dtype == DType::kFloat32)
    rms_norm_impl::backward<float>(p, x, weight, inv_rms, dy, dx, dweight);
  else
    rms_norm_impl::backward<bf16>(p, x, weight, inv_rms, dy, dx, dweight);
}

}  // namespace llmpre::kernels
