// Rotary kernels for __half storage (one file per dtype so builds parallelise).
#include "rotary/rotary_kernels.cuh"

namespace llmpre {
namespace cuda {
namespace rotary {
template void apply<__half>(const RotaryParams&, cudaStream_t);
}  // namespace rotary
}  // namespace cuda
}  // namespace llmpre
