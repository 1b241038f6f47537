// Rotary kernels for float storage (one file per dtype so builds parallelise).
#include "rope/rope_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace rope {
template void apply<float>(const RopeParams&, cudaStream_t);
}  // namespace rope
}  // namespace cuda
}  // namespace llmpre
