// RMSNorm kernels for float storage (one file per dtype so builds parallelise).
#include "rmsnorm/rmsnorm_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace rmsnorm {
template void forward<float>(const RmsNormParams&, cudaStream_t);
template void backward<float>(const RmsNormParams&, cudaStream_t);
template size_t backward_workspace_bytes<float>(const RmsNormParams&);
}  // namespace rmsnorm
}  // namespace cuda
}  // namespace llmpre
