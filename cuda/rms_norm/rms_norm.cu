// RMSNorm launchers: check the arguments, then hand the call to the per-dtype
// launch templates of rms_norm_kernels.cuh (instantiated in rms_norm_<dtype>.cu).
#include <climits>

#include "common/rowwise.cuh"
#include "rms_norm/rms_norm_cuda.h"

namespace llmpre {
namespace cuda {
namespace rms_norm {
// Defined in rms_norm_kernels.cuh, explicitly instantiated once per dtype.
template <typename T>
void forward(const RmsNormParams& p, cudaStream_t stream);
template <typename T>
void backward(const RmsNormParams& p, cudaStream_t stream);
template <typename T>
size_t backward_workspace_bytes(const RmsNormParams& p);
}  // namespace rms_norm

namespace {

void check_sizes(const RmsNormParams& p, const char* fn) {
  LLMPRE_REQUIRE(p.rows >= 0, fn, ": rows must be >= 0, got ", p.rows);
  LLMPRE_REQUIRE(p.hidden >= 1 && p.hidden <= INT_MAX / 2, fn, ": hidden must be in [1, ", INT_MAX / 2,
                 "], got ", p.hidden);
  LLMPRE_REQUIRE(p.eps >= 0.0f && p.eps < 1e30f, fn, ": eps must be finite and >= 0, got ", p.eps);
}

void require_ptr(const void* ptr, const char* fn, const char* name) {
  LLMPRE_REQUIRE(ptr != nullptr, fn, ": `", name, "` is a null pointer; pass a device buffer");
}

}  // namespace

void rms_norm_forward(const RmsNormParams& p, cudaStream_t stream) {
  constexpr const char* fn = "rms_norm_forward";
  check_sizes(p, fn);
  if (p.rows == 0) return;
  require_ptr(p.x, fn, "x");
  require_ptr(p.weight, fn, "weight");
  require_ptr(p.y, fn, "y");
  require_ptr(p.inv_rms, fn, "inv_rms");
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, rms_norm::forward<T>(p, stream));
}

size_t rms_norm_backward_workspace_bytes(const RmsNormParams& p) {
  check_sizes(p, "rms_norm_backward_workspace_bytes");
  size_t bytes = 0;
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, bytes = rms_norm::backward_workspace_bytes<T>(p));
  return bytes;
}

void rms_norm_backward(const RmsNormParams& p, cudaStream_t stream) {
  constexpr const char* fn = "rms_norm_backward";
  check_sizes(p, fn);
  require_ptr(p.dweight, fn, "dweight");
  if (p.rows > 0) {
    require_ptr(p.x, fn, "x");
    require_ptr(p.weight, fn, "weight");
    require_ptr(p.inv_rms, fn, "inv_rms");
    require_ptr(p.dy, fn, "dy");
    require_ptr(p.dx, fn, "dx");
    const size_t need = rms_norm_backward_workspace_bytes(p);
    LLMPRE_REQUIRE(p.workspace != nullptr && p.workspace_bytes >= need, fn, ": needs ", need,
                   " bytes of fp32 workspace for rows=", p.rows, ", hidden=", p.hidden, " (got ",
                   p.workspace_bytes, " bytes at ", p.workspace,
                   "); allocate rms_norm_backward_workspace_bytes() on this device");
  }
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, rms_norm::backward<T>(p, stream));
}

}  // namespace cuda
}  // namespace llmpre
