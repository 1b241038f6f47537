// Device helpers shared by the memory-bound row kernels (RMSNorm, rotary,
// cross-entropy): fp32 <-> storage conversions, packs of elements moved as one
// 16-byte (or smaller) access, warp/group reductions, and the bounded dtype
// dispatch the launchers use. Only .cu files include this.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "common/cuda_check.h"
#include "common/kernel_args.h"

namespace llmpre {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------- conversions
template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round to nearest even, once.
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Elements per 16-byte access.
template <typename T>
__host__ __device__ constexpr int vec16() { return 16 / static_cast<int>(sizeof(T)); }

// ---------------------------------------------------------------- packs
template <int kBytes>
struct Word;
template <>
struct Word<16> { using type = uint4; };
template <>
struct Word<8> { using type = uint2; };
template <>
struct Word<4> { using type = uint32_t; };
template <>
struct Word<2> { using type = uint16_t; };

// kN consecutive elements of T kept as one raw word (registers stay packed:
// a bf16 pack of 8 costs 4 registers, not 8). kVector = true moves the pack
// with one access, which needs kN * sizeof(T)-byte alignment; false moves it
// element by element (any element-aligned address).
template <typename T, int kN>
struct Pack {
  using W = typename Word<kN * static_cast<int>(sizeof(T))>::type;
  W w;

  template <bool kVector>
  __device__ __forceinline__ void load(const T* p) {
    if constexpr (kVector) {
      w = *reinterpret_cast<const W*>(p);
    } else {
      T t[kN];
#pragma unroll
      for (int e = 0; e < kN; ++e) t[e] = p[e];
      memcpy(&w, t, sizeof(W));
    }
  }
  template <bool kVector>
  __device__ __forceinline__ void store(T* p) const {
    if constexpr (kVector) {
      // The store intrinsic keeps it one access: a plain assignment of a word
      // assembled from converted halves may be split into narrower stores.
      __stwb(reinterpret_cast<W*>(p), w);
    } else {
      T t[kN];
      memcpy(t, &w, sizeof(W));
#pragma unroll
      for (int e = 0; e < kN; ++e) p[e] = t[e];
    }
  }
  __device__ __forceinline__ void zero() { memset(&w, 0, sizeof(W)); }
  // An empty asm that "may change" the word: the compiler must unpack it again
  // after this point instead of keeping (twice as many) unpacked fp32 values
  // alive in registers, or hoisting a loop-invariant unpack out of a loop.
  __device__ __forceinline__ void opaque() {
#ifdef __CUDA_ARCH__  // device code only (the CPU emulator of the tests has no PTX registers)
    if constexpr (sizeof(W) == 16) {
      asm volatile("" : "+r"(w.x), "+r"(w.y), "+r"(w.z), "+r"(w.w));
    } else if constexpr (sizeof(W) == 8) {
      asm volatile("" : "+r"(w.x), "+r"(w.y));
    } else if constexpr (sizeof(W) == 4) {
      asm volatile("" : "+r"(w));
    } else {
      asm volatile("" : "+h"(w));
    }
#endif
  }
  __device__ __forceinline__ void unpack(float (&f)[kN]) const {
    T t[kN];
    memcpy(t, &w, sizeof(W));
#pragma unroll
    for (int e = 0; e < kN; ++e) f[e] = to_f32<T>(t[e]);
  }
  __device__ __forceinline__ void pack(const float (&f)[kN]) {
    T t[kN];
#pragma unroll
    for (int e = 0; e < kN; ++e) t[e] = from_f32<T>(f[e]);
    memcpy(&w, t, sizeof(W));
  }
};

// kN fp32 values from a table (kN * 4-byte aligned when kVector).
template <int kN, bool kVector>
__device__ __forceinline__ void load_f32s(const float* p, float (&f)[kN]) {
  if constexpr (kVector && kN % 4 == 0) {
#pragma unroll
    for (int i = 0; i < kN; i += 4) {
      const float4 v = *reinterpret_cast<const float4*>(p + i);
      f[i] = v.x; f[i + 1] = v.y; f[i + 2] = v.z; f[i + 3] = v.w;
    }
  } else if constexpr (kVector && kN == 2) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    f[0] = v.x; f[1] = v.y;
  } else {
#pragma unroll
    for (int i = 0; i < kN; ++i) f[i] = p[i];
  }
}

// ---------------------------------------------------------------- reductions
// Butterfly reductions: every lane ends with the bitwise-same value (each
// step adds a and b in either order, and fp addition is commutative).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over each group of kGroup consecutive threads (kGroup a multiple of 32,
// dividing blockDim.x). Every thread of the block must call it (it syncs when
// kGroup > 32); `red` holds blockDim.x / 32 floats of shared memory. Warps'
// partial sums are added in warp order: the same bits for every thread and run.
template <int kGroup>
__device__ __forceinline__ float group_sum(float v, float* red) {
  v = warp_sum(v);
  if constexpr (kGroup == 32) {
    return v;
  } else {
    static_assert(kGroup % 32 == 0, "groups are whole warps");
    constexpr int kWarps = kGroup / 32;
    const int warp = threadIdx.x / 32;
    if ((threadIdx.x & 31) == 0) red[warp] = v;
    __syncthreads();
    const int first = warp - warp % kWarps;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) s += red[first + i];
    __syncthreads();  // red is reused by the next call
    return s;
  }
}

// Online softmax state (running max m, sum l of exp(x - m)) and its merge.
struct MaxSum {
  float m;
  float l;
};

// NaN logits make l NaN and stay NaN through every merge (fmaxf ignores them
// in m, so l carries them).
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, a.l + b.l};  // nothing finite on either side: 0, or NaN
  // __fmul_rn keeps the products from being contracted into an fma, which
  // would round merge(a, b) and merge(b, a) differently.
  return {m, __fmul_rn(a.l, exp2f((a.m - m) * kLog2e)) + __fmul_rn(b.l, exp2f((b.m - m) * kLog2e))};
}

// Adds one value x to the state.
__device__ __forceinline__ MaxSum add_one(MaxSum s, float x) {
  if (x > s.m) return {x, s.l * exp2f((s.m - x) * kLog2e) + 1.0f};
  const float ref = s.m == -INFINITY ? 0.0f : s.m;  // x is -inf (adds 0) or NaN (adds NaN)
  return {s.m, s.l + exp2f((x - ref) * kLog2e)};
}

__device__ __forceinline__ MaxSum warp_merge(MaxSum s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, s.m, o), __shfl_xor_sync(0xffffffffu, s.l, o)};
    // merge(a, b) and merge(b, a) give the same bits: fmaxf and + commute.
    s = merge(s, other);
  }
  return s;
}

// ---------------------------------------------------------------- host side
inline int current_device() {
  int dev = 0;
  LLMPRE_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

inline int sm_count(int device) {
  int n = 0;
  LLMPRE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

// Resident blocks of `kernel` per SM with `smem` bytes of dynamic shared memory.
template <class Kernel>
int blocks_per_sm(Kernel kernel, int threads, size_t smem) {
  int n = 0;
  LLMPRE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
  return n > 0 ? n : 1;
}

}  // namespace cuda
}  // namespace llmpre

// Launches and dynamic shared memory go through these two macros so that the
// CPU emulator of the tests (tests/cuda/emu) can run the very same kernels;
// under nvcc they are the plain CUDA syntax. `kernel` must be one token (a
// function pointer variable), since a template-id's commas would split it.
#ifndef LLMPRE_LAUNCH
#define LLMPRE_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif
#ifndef LLMPRE_DYNAMIC_SMEM
#define LLMPRE_DYNAMIC_SMEM(type, name) extern __shared__ type name[]
#endif

// Bounded dtype dispatch: the body is compiled once per storage type, with
// `T` naming it (float, __half, __nv_bfloat16).
#define LLMPRE_DISPATCH_DTYPE(dtype, T, ...)                                          \
  switch (dtype) {                                                                     \
    case ::llmpre::DType::kFloat32: {                                                  \
      using T = float;                                                                 \
      __VA_ARGS__;                                                                     \
    } break;                                                                           \
    case ::llmpre::DType::kFloat16: {                                                  \
      using T = __half;                                                                \
      __VA_ARGS__;                                                                     \
    } break;                                                                           \
    case ::llmpre::DType::kBFloat16: {                                                 \
      using T = __nv_bfloat16;                                                         \
      __VA_ARGS__;                                                                     \
    } break;                                                                           \
    default:                                                                           \
      LLMPRE_REQUIRE(false, "dtype must be float32, float16 or bfloat16, got ",        \
                     ::llmpre::dtype_name(dtype));                                     \
  }
