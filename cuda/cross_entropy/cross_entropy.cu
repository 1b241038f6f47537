// Cross-entropy launchers: check the arguments, then hand the call to the
// per-dtype launch templates of cross_entropy_kernels.cuh (instantiated in
// cross_entropy_<dtype>.cu).
#include <climits>

#include "common/rowwise.cuh"
#include "cross_entropy/cross_entropy_cuda.h"

namespace llmpre {
namespace cuda {
namespace xent {
template <typename T>
void forward(const CrossEntropyParams& p, cudaStream_t stream);  // cross_entropy_kernels.cuh
template <typename T>
void backward(const CrossEntropyParams& p, cudaStream_t stream);
}  // namespace xent

namespace {
void check_sizes(const CrossEntropyParams& p, const char* fn) {
  LLMPRE_REQUIRE(p.rows >= 0 && p.rows <= INT_MAX, fn, ": rows must be in [0, ", INT_MAX,
                 "] (one CTA per row), got ", p.rows, "; split larger batches");
  LLMPRE_REQUIRE(p.vocab >= 1 && p.vocab <= INT_MAX / 2, fn, ": vocab must be in [1, ", INT_MAX / 2,
                 "], got ", p.vocab);
}
}  // namespace

void cross_entropy_forward(const CrossEntropyParams& p, cudaStream_t stream) {
  constexpr const char* fn = "cross_entropy_forward";
  check_sizes(p, fn);
  if (p.rows == 0) return;
  LLMPRE_REQUIRE(p.logits && p.labels && p.loss && p.stats, fn,
                 ": logits, labels, loss and stats must be device buffers (got logits=", p.logits,
                 ", labels=", static_cast<const void*>(p.labels), ", loss=", static_cast<const void*>(p.loss),
                 ", stats=", static_cast<const void*>(p.stats), ")");
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, xent::forward<T>(p, stream));
}

void cross_entropy_backward(const CrossEntropyParams& p, cudaStream_t stream) {
  constexpr const char* fn = "cross_entropy_backward";
  check_sizes(p, fn);
  if (p.rows == 0) return;
  LLMPRE_REQUIRE(p.logits && p.labels && p.stats && p.dloss && p.dlogits, fn,
                 ": logits, labels, stats, dloss and dlogits must be device buffers (got logits=", p.logits,
                 ", labels=", static_cast<const void*>(p.labels), ", stats=", static_cast<const void*>(p.stats),
                 ", dloss=", static_cast<const void*>(p.dloss), ", dlogits=", p.dlogits, ")");
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, xent::backward<T>(p, stream));
}

}  // namespace cuda
}  // namespace llmpre
