// Cross-entropy kernels for __half storage (one file per dtype so builds parallelise).
#include "cross_entropy/cross_entropy_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace xent {
template void forward<__half>(const CrossEntropyParams&, cudaStream_t);
template void backward<__half>(const CrossEntropyParams&, cudaStream_t);
}  // namespace xent
}  // namespace cuda
}  // namespace llmpre
