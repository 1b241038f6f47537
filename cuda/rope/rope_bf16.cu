// Rotary kernels for __nv_bfloat16 storage (one file per dtype so builds parallelise).
#include "rope/rope_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace rope {
template void apply<__nv_bfloat16>(const RopeParams&, cudaStream_t);
}  // namespace rope
}  // namespace cuda
}  // namespace llmpre
