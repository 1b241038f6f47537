// The hardware layer of the flash attention kernels: every warp-level
// instruction (mma.sync, ldmatrix, cp.async, shuffles), every memory access
// and every launch goes through the functions below. Under nvcc they are
// inline PTX; with LLMPRE_FA_EMULATE (a host C++ build, see emu/emu.h)
// they run on a CPU emulator that executes the same kernel source thread by
// thread, checks every address against its buffer, and is what the CPU tests
// run (tests/cuda/test_flash_attention_reference.py).
//
// Kernel code stores 16-bit floats as raw uint16_t and packs pairs into
// uint32_t mma fragments; Bf16 and Fp16 tags select the conversion and the
// mma variant. Fragment layouts (PTX ISA, "mma.m16n8k16" and "ldmatrix"),
// with g = lane / 4 and t = lane % 4:
//   A (16x16, row-major): reg0 = (row g, cols 2t, 2t+1), reg1 = (row g+8, same),
//                         reg2 = (row g, cols 2t+8, 2t+9), reg3 = (row g+8, same)
//   B (16x8, k x n):      reg0 = (k 2t, 2t+1; n g),  reg1 = (k 2t+8, 2t+9; n g)
//   C (16x8 fp32):        c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, same)
//   ldmatrix.x4: lanes 8q..8q+7 give the 8 row addresses (16 bytes each) of
//   matrix q, which lands in reg q; a lane receives (row g, cols 2t, 2t+1) of
//   each matrix, or with .trans (rows 2t, 2t+1; col g), lower index in the low half.
#pragma once

#include <cstdint>

namespace llmpre {
namespace cuda {
namespace fa {
struct Bf16 {};
struct Fp16 {};
}  // namespace fa
}  // namespace cuda
}  // namespace llmpre

#ifdef LLMPRE_FA_EMULATE

#include "flash_attention/emu/emu.h"

#else  // nvcc

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cuda_check.h"

#define FA_DEV __device__ __forceinline__
#define FA_GLOBAL __global__
#define FA_LAUNCH_BOUNDS(threads, blocks) __launch_bounds__(threads, blocks)
// kern is a variable holding a kernel's address (template arguments stay out
// of the macro).
#define FA_LAUNCH(kern, grid, threads, smem, stream, ...)          \
  do {                                                             \
    kern<<<(grid), (threads), (smem), (stream)>>>(__VA_ARGS__);    \
    LLMPRE_CUDA_CHECK_LAUNCH();                                    \
  } while (0)

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
// The launcher refuses devices below sm_80; this keeps builds for older
// architectures compiling.
#define FA_SM80_ONLY(...) __trap()
#else
#define FA_SM80_ONLY(...) __VA_ARGS__
#endif

namespace llmpre {
namespace cuda {
namespace fa {

FA_DEV int thread_idx() { return static_cast<int>(threadIdx.x); }
FA_DEV int block_x() { return static_cast<int>(blockIdx.x); }
FA_DEV int block_y() { return static_cast<int>(blockIdx.y); }
FA_DEV int block_z() { return static_cast<int>(blockIdx.z); }
FA_DEV int grid_x() { return static_cast<int>(gridDim.x); }

FA_DEV unsigned char* smem_base() {
  extern __shared__ __align__(16) unsigned char fa_dynamic_smem[];
  return fa_dynamic_smem;
}

FA_DEV void sync_threads() { __syncthreads(); }

FA_DEV float shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }

FA_DEV float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

FA_DEV uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronous; pred false writes 16 zero bytes
// (src-size 0 reads nothing, but gmem must still be a valid address).
FA_DEV void cp_async16(void* smem, const void* gmem, bool pred) {
  FA_SM80_ONLY(asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
                            "l"(gmem), "r"(pred ? 16 : 0)));
}
FA_DEV void cp_async_commit() { FA_SM80_ONLY(asm volatile("cp.async.commit_group;\n" ::)); }
// Waits until at most N of this thread's committed groups are pending.
template <int N>
FA_DEV void cp_async_wait() {
  FA_SM80_ONLY(asm volatile("cp.async.wait_group %0;\n" ::"n"(N)));
}

FA_DEV void ldsm_x4(uint32_t (&r)[4], const void* smem) {
  FA_SM80_ONLY(asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                            : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                            : "r"(smem_addr(smem))));
}
FA_DEV void ldsm_x4_trans(uint32_t (&r)[4], const void* smem) {
  FA_SM80_ONLY(asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                            : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                            : "r"(smem_addr(smem))));
}

// d += A * B for one m16n8k16 tile, fp32 accumulation.
template <class T>
FA_DEV void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
FA_DEV void mma16816<Bf16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  FA_SM80_ONLY(asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}
template <>
FA_DEV void mma16816<Fp16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  FA_SM80_ONLY(asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}

// Two floats -> two 16-bit floats (round to nearest even), lo in the low half.
template <class T>
FA_DEV uint32_t pack2(float lo, float hi);
template <>
FA_DEV uint32_t pack2<Bf16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
FA_DEV uint32_t pack2<Fp16>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <class T>
FA_DEV void unpack2(uint32_t v, float& lo, float& hi);
template <>
FA_DEV void unpack2<Bf16>(uint32_t v, float& lo, float& hi) {
  lo = __uint_as_float(v << 16);
  hi = __uint_as_float(v & 0xffff0000u);
}
template <>
FA_DEV void unpack2<Fp16>(uint32_t v, float& lo, float& hi) {
  __half2 h = *reinterpret_cast<__half2*>(&v);
  float2 f = __half22float2(h);
  lo = f.x;
  hi = f.y;
}

// Plain accesses (global or shared); all 16-byte ones need 16-byte alignment.
FA_DEV void ld16(uint32_t (&r)[4], const void* p) {
  uint4 v = *reinterpret_cast<const uint4*>(p);
  r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
}
FA_DEV void st16(void* p, const uint32_t (&r)[4]) {
  *reinterpret_cast<uint4*>(p) = make_uint4(r[0], r[1], r[2], r[3]);
}
FA_DEV void st_u32(void* p, uint32_t v) { *reinterpret_cast<uint32_t*>(p) = v; }
FA_DEV float ld_f32(const float* p) { return *p; }
FA_DEV void st_f32(float* p, float v) { *p = v; }
FA_DEV void ld_f32x4(float (&r)[4], const float* p) {
  float4 v = *reinterpret_cast<const float4*>(p);
  r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
}
FA_DEV void st_f32x2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
FA_DEV void atomic_add_f32(float* p, float v) { atomicAdd(p, v); }

// ---- host side ----
template <class Kernel>
inline void set_max_dynamic_smem(Kernel kern, int bytes) {
  if (bytes > 48 * 1024) {
    LLMPRE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  }
}
inline void memset_async(void* p, int value, size_t bytes, cudaStream_t stream) {
  if (bytes) LLMPRE_CUDA_CHECK(cudaMemsetAsync(p, value, bytes, stream));
}

struct DeviceInfo {
  int sms = 0, cc_major = 0, cc_minor = 0, max_smem_optin = 0;
};
inline DeviceInfo current_device_info() {
  int dev = 0;
  LLMPRE_CUDA_CHECK(cudaGetDevice(&dev));
  DeviceInfo d;
  LLMPRE_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  LLMPRE_CUDA_CHECK(cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, dev));
  LLMPRE_CUDA_CHECK(cudaDeviceGetAttribute(&d.cc_minor, cudaDevAttrComputeCapabilityMinor, dev));
  LLMPRE_CUDA_CHECK(cudaDeviceGetAttribute(&d.max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return d;
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre

#endif  // LLMPRE_FA_EMULATE
