#include "cross_entropy/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "common/dtype.h"
#include "common/isa.h"
#include "common/parallel.h"
#include "common/reduce.h"
#include "common/vmath.h"

namespace llmpre::kernels {
namespace cross_entropy_impl {
namespace baseline {
#include "cross_entropy/cross_entropy_body.inc"
}  // namespace baseline
LLMPRE_BEGIN_AVX2
namespace avx2 {
#include "cross_entropy/cross_entropy_body.inc"
}  // namespace avx2
LLMPRE_END_AVX2

std::string S(int64_t v) { return std::to_string(v); }

void check(const CrossEntropyParams& p, const char* fn, const int64_t* labels,
           std::initializer_list<const void*> buffers) {
  check_dtype(p.dtype, fn);
  if (p.rows < 0 || p.vocab <= 0)
    throw std::invalid_argument(std::string(fn) + ": rows must be >= 0 and vocab > 0, got rows=" +
                                S(p.rows) + ", vocab=" + S(p.vocab));
  if (p.rows == 0) return;
  if (labels == nullptr) throw std::invalid_argument(std::string(fn) + ": labels pointer is null");
  for (const void* b : buffers)
    if (b == nullptr) throw std::invalid_argument(std::string(fn) + ": a buffer pointer is null");
  for (int64_t r = 0; r < p.rows; ++r)
    if (labels[r] != p.ignore_index && (labels[r] < 0 || labels[r] >= p.vocab))
      throw std::out_of_range(std::string(fn) + ": label " + S(labels[r]) + " at flat position " +
                              S(r) + " is outside [0, vocab=" + S(p.vocab) +
                              ") and is not ignore_index=" + S(p.ignore_index));
}

template <class T>
void forward(const CrossEntropyParams& p, const void* logits, const int64_t* labels, float* loss,
             float* stats) {
  const bool avx2 = use_avx2();
  parallel_for(p.rows, grain_for(p.vocab), [&](int64_t r0, int64_t r1) {
    auto xs = static_cast<const T*>(logits);
    if (avx2)
      avx2::forward_rows(xs, labels, loss, stats, p.vocab, p.ignore_index, r0, r1);
    else
      baseline::forward_rows(xs, labels, loss, stats, p.vocab, p.ignore_index, r0, r1);
  });
}

template <class T>
void backward(const CrossEntropyParams& p, const void* logits, const int64_t* labels,
              const float* stats, const float* dloss, void* dlogits) {
  const bool avx2 = use_avx2();
  parallel_for(p.rows, grain_for(2 * p.vocab), [&](int64_t r0, int64_t r1) {
    auto xs = static_cast<const T*>(logits);
    auto dxs = static_cast<T*>(dlogits);
    if (avx2)
      avx2::backward_rows(xs, labels, stats, dloss, dxs, p.vocab, p.ignore_index, r0, r1);
    else
      baseline::backward_rows(xs, labels, stats, dloss, dxs, p.vocab, p.ignore_index, r0, r1);
  });
}
}  // namespace cross_entropy_impl

void cross_entropy_forward(const CrossEntropyParams& p, const void* logits, const int64_t* labels,
                           float* loss, float* stats) {
  cross_entropy_impl::check(p, "cross_entropy_forward", labels, {logits, loss, stats});
  if (p.rows == 0) return;
  if (p.dtype == DType::kFloat32)
    cross_entropy_impl::forward<float>(p, logits, labels, loss, stats);
  else
    cross_entropy_impl::forward<bf16>(p, logits, labels, loss, stats);
}

void cross_entropy_backward(const CrossEntropyParams& p, const void* logits, const int64_t* labels,
                            const float* stats, const float* dloss, void* dlogits) {
  cross_entropy_impl::check(p, "cross_entropy_backward", labels, {logits, stats, dloss, dlogits});
  if (p.rows == 0) return;
  if (p.dtype == DType::kFloat32)
    cross_entropy_impl::backward<float>(p, logits, labels, stats, dloss, dlogits);
  else
    cross_entropy_impl::backward<bf16>(p, logits, labels, stats, dloss, dlogits);
}

}  // namespace llmpre::kernels
