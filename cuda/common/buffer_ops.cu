#include <cstring>
#include <stdexcept>

#include "common/buffer_ops.h"
#include "common/cuda_check.h"

namespace llmpre {
namespace cuda {

namespace {

template <typename T>
__global__ void fill_kernel(T* __restrict__ dst, T value, size_t count) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    dst[i] = value;
  }
}

__global__ void touch_kernel(uint4* __restrict__ p, size_t n16) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n16;
       i += stride) {
    uint4 v = p[i];
    v.x ^= 1u;
    p[i] = v;
  }
}

template <typename T>
void launch_fill(void* dst, const void* value, size_t count, cudaStream_t stream) {
  if (count == 0) return;
  T v;
  std::memcpy(&v, value, sizeof(T));
  const int threads = 256;
  const size_t want = (count + threads - 1) / threads;
  const int blocks = static_cast<int>(want < 65535 ? want : 65535);
  fill_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<T*>(dst), v, count);
  LLMPRE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void fill_pattern(void* dst, const void* value, int elem_bytes, size_t count,
                  cudaStream_t stream) {
  switch (elem_bytes) {
    case 1: launch_fill<uint8_t>(dst, value, count, stream); break;
    case 2: launch_fill<uint16_t>(dst, value, count, stream); break;
    case 4: launch_fill<uint32_t>(dst, value, count, stream); break;
    case 8: launch_fill<uint64_t>(dst, value, count, stream); break;
    default: throw std::invalid_argument("fill_pattern: elem_bytes must be 1, 2, 4 or 8");
  }
}

void flush_l2(void* scratch, size_t bytes, cudaStream_t stream) {
  const size_t n16 = bytes / 16;
  if (n16 == 0) return;
  const int threads = 256;
  const size_t want = (n16 + threads - 1) / threads;
  const int blocks = static_cast<int>(want < 65535 ? want : 65535);
  touch_kernel<<<blocks, threads, 0, stream>>>(static_cast<uint4*>(scratch), n16);
  LLMPRE_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace llmpre
