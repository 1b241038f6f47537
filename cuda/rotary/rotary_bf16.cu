// Rotary kernels for __nv_bfloat16 storage (one file per dtype so builds parallelise).
#include "rotary/rotary_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace rotary {
template void apply<__nv_bfloat16>(const RotaryParams&, cudaStream_t);
}  // namespace rotary
}  // namespace cuda
}  // namespace llmpre
