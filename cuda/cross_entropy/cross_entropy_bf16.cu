// Cross-entropy kernels for __nv_bfloat16 storage (one file per dtype so builds parallelise).
#include "cross_entropy/cross_entropy_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace xent {
template void forward<__nv_bfloat16>(const CrossEntropyParams&, cudaStream_t);
template void backward<__nv_bfloat16>(const CrossEntropyParams&, cudaStream_t);
}  // namespace xent
}  // namespace cuda
}  // namespace llmpre
