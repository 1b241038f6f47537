// RMSNorm kernels for __half storage (one file per dtype so builds parallelise).
#include "rmsnorm/rmsnorm_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace rmsnorm {
template void forward<__half>(const RmsNormParams&, cudaStream_t);
template void backward<__half>(const RmsNormParams&, cudaStream_t);
template size_t backward_workspace_bytes<__half>(const RmsNormParams&);
}  // namespace rmsnorm
}  // namespace cuda
}  // namespace llmpre
