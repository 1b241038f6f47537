// RMSNorm kernels for float storage (one file per dtype so builds parallelise).
#include "rms_norm/rms_norm_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace rms_norm {
template void forward<float>(const RmsNormParams&, cudaStream_t);
template void backward<float>(const RmsNormParams&, cudaStream_t);
template size_t backward_workspace_bytes<float>(const RmsNormParams&);
}  // namespace rms_norm
}  // namespace cuda
}  // namespace llmpre
