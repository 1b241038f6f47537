// Rotary kernels for __half storage (one file per dtype so builds parallelise).
#include "rope/rope_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace rope {
template void apply<__half>(const RopeParams&, cudaStream_t);
}  // namespace rope
}  // namespace cuda
}  // namespace llmpre
