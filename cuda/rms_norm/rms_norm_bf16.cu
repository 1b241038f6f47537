// RMSNorm kernels for __nv_bfloat16 storage (one file per dtype so builds parallelise).
#include "rms_norm/rms_norm_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace rms_norm {
template void forward<__nv_bfloat16>(const RmsNormParams&, cudaStream_t);
template void backward<__nv_bfloat16>(const RmsNormParams&, cudaStream_t);
template size_t backward_workspace_bytes<__nv_bfloat16>(const RmsNormParams&);
}  // namespace rms_norm
}  // namespace cuda
}  // namespace llmpre
