#include "swiglu/swiglu.h"

#include <stdexcept>
#include <string>

#include "common/dtype.h"
#include "common/isa.h"
#include "common/parallel.h"
#include "common/vmath.h"

namespace llmpre::kernels {
namespace swiglu_impl {
namespace baseline {
#include "swiglu/swiglu_body.inc"
}  // namespace baseline
LLMPRE_BEGIN_AVX2
namespace avx2 {
#include "swiglu/swiglu_body.inc"
}  // namespace avx2
LLMPRE_END_AVX2


void check(const SwiGluParams& p, const char* fn, std::initializer_list<const void*> buffers) {
  check_dtype(p.dtype, fn);
  if (p.n < 0) throw std::invalid_argument(std::string(fn) + ": n must be >= 0, got " + std::to_string(p.n));
  if (p.n == 0) return;
  for (const void* b : buffers)
    if (b == nullptr) throw std::invalid_argument(std::string(fn) + ": a buffer pointer is null");
}

template <class T>
void forward(const SwiGluParams& p, const void* g, const void* u, void* out) {
  const bool avx2 = use_avx2();
  parallel_for(p.n, grain_for(3), [&](int64_t i0, int64_t i1) {
    auto gs = static_cast<const T*>(g);
    auto us = static_cast<const T*>(u);
    auto os = static_cast<T*>(out);
    if (avx2)
      avx2::forward_range(gs, us, os, i0, i1);
    else
      baseline::forward_range(gs, us, os, i0, i1);
  });
}

template <class T>
void backward(const SwiGluParams& p, const void* g, const void* u, const void* dout, void* dg, void* du) {
  const bool avx2 = use_avx2();
  parallel_for(p.n, grain_for(5), [&](int64_t i0, int64_t i1) {
    auto gs = static_cast<const T*>(g);
    auto us = static_cast<const T*>(u);
    auto ds = static_cast<const T*>(dout);
    auto dgs = static_cast<T*>(dg);
    auto dus = static_cast<T*>(du);
    if (avx2)
      avx2::backward_range(gs, us, ds, dgs, dus, i0, i1);
    else
      baseline::backward_range(gs, us, ds, dgs, dus, i0, i1);
  });
}
}  // namespace swiglu_impl

void swiglu_forward(const SwiGluParams& p, const void* gate, const void* up, void* out) {
  swiglu_impl::check(p, "swiglu_forward", {gate, up, out});
  if (p.dtype == DType::kFloat32)
    swiglu_impl::forward<float>(p, gate, up, out);
  else
    swiglu_impl::forward<bf16>(p, gate, up, out);
}

void swiglu_backward(const SwiGluParams& p, const void* gate, const void* up, const void* dout,
                     void* dgate, void* dup) {
  swiglu_impl::check(p, "swiglu_backward", {gate, up, dout, dgate, dup});
  if (p.dtype == DType::kFloat32)
    swiglu_impl::backward<float>(p, gate, up, dout, dgate, dup);
  else
    swiglu_impl::backward<bf16>(p, gate, up, dout, dgate, dup);
}

}  // namespace llmpre::kernels
