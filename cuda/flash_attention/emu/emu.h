// CPU emulator of the hardware layer in arch.cuh (LLMPRE_FA_EMULATE).
//
// A "launch" runs every block of the grid in turn; a block runs one fiber
// per CUDA thread on a single OS thread, switching fibers only at
// __syncthreads and at warp-collective instructions (mma, ldmatrix, shuffles),
// whose results are computed from all 32 lanes' operands following the PTX
// ISA fragment layouts. What it checks, and a GPU would not report:
//   - every global access lies inside a registered buffer, every shared
//     access inside the block's dynamic shared memory, with the alignment the
//     instruction needs;
//   - shared memory starts as NaN bytes (reading before writing shows);
//   - cp.async data appears only at cp.async.wait_group (lazy mode), or at
//     once (eager mode), so missing waits or barriers change results;
//   - shared-memory data races: two threads touching the same 4-byte word
//     between the same pair of __syncthreads, at least one writing, are
//     reported; a cp.async write counts from its issue to its wait_group;
//   - warp collectives and barriers are reached by all their threads (a
//     deadlock is reported, not hung);
//   - fibers can run in ascending, descending or shuffled order.
// It is slow (microseconds per warp instruction) and meant for small shapes.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#define FA_DEV inline
#define FA_GLOBAL inline
#define FA_LAUNCH_BOUNDS(threads, blocks)
#define FA_LAUNCH(kern, grid, threads, smem, stream, ...) \
  ::llmpre::cuda::fa::emu::launch((grid), (threads), (smem), [&] { kern(__VA_ARGS__); })

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace llmpre {
namespace cuda {
namespace fa {
namespace emu {

struct Config {
  int sms = 132;                   // reported multiprocessor count (drives backward splits)
  int max_smem = 227 * 1024;       // reported opt-in shared memory per block
  int order = 0;                   // fiber order: 0 ascending, 1 descending, 2 shuffled
  bool lazy_copies = true;         // cp.async lands at wait_group (true) or at issue
  int arch = 80;                   // reported compute capability x 10 (90 selects the Hopper kernels)
  int tma_mode = 0;                // TMA loads land: 0 when waited for, 1 at issue, 2 at random rounds
  unsigned seed = 1;
  long long warp_ops = 0;          // statistics
  long long launches = 0;
};
Config& config();

[[noreturn]] void fail(const char* fmt, ...);

void launch(dim3 grid, int threads, int smem_bytes, const std::function<void()>& body);

// Global buffers the kernels may touch.
void register_buffer(const void* p, size_t bytes, const char* name);
void clear_buffers();

int tid();
int block(int axis);
int grid(int axis);
unsigned char* smem();
void block_barrier();
// Checks [p, p + bytes) is inside shared memory or a registered buffer and
// aligned; shared accesses feed the race detector.
void check_access(const void* p, size_t bytes, size_t align, bool write, const char* what);

float shfl_xor(float v, int mask);
void ldmatrix_x4(uint32_t (&r)[4], const void* smem, bool trans);
void mma(bool bf16, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void cp_async(void* smem, const void* gmem, bool pred);
void cp_async_commit();
void cp_async_wait(int n);

uint16_t f32_to_bf16(float f);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
float f16_to_f32(uint16_t h);

}  // namespace emu

struct Bf16;
struct Fp16;

inline int thread_idx() { return emu::tid(); }
inline int block_x() { return emu::block(0); }
inline int block_y() { return emu::block(1); }
inline int block_z() { return emu::block(2); }
inline int grid_x() { return emu::grid(0); }
inline unsigned char* smem_base() { return emu::smem(); }
inline void sync_threads() { emu::block_barrier(); }
inline float shfl_xor(float v, int mask) { return emu::shfl_xor(v, mask); }
inline float exp2_approx(float x) { return std::exp2(x); }

inline void cp_async16(void* smem, const void* gmem, bool pred) { emu::cp_async(smem, gmem, pred); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::cp_async_wait(N);
}
inline void ldsm_x4(uint32_t (&r)[4], const void* smem) { emu::ldmatrix_x4(r, smem, false); }
inline void ldsm_x4_trans(uint32_t (&r)[4], const void* smem) { emu::ldmatrix_x4(r, smem, true); }

template <class T>
inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::mma(std::is_same<T, Bf16>::value, d, a, b0, b1);
}

template <class T>
inline uint32_t pack2(float lo, float hi) {
  if (std::is_same<T, Bf16>::value) return uint32_t(emu::f32_to_bf16(lo)) | (uint32_t(emu::f32_to_bf16(hi)) << 16);
  return uint32_t(emu::f32_to_f16(lo)) | (uint32_t(emu::f32_to_f16(hi)) << 16);
}
template <class T>
inline void unpack2(uint32_t v, float& lo, float& hi) {
  if (std::is_same<T, Bf16>::value) {
    lo = emu::bf16_to_f32(uint16_t(v & 0xffffu));
    hi = emu::bf16_to_f32(uint16_t(v >> 16));
  } else {
    lo = emu::f16_to_f32(uint16_t(v & 0xffffu));
    hi = emu::f16_to_f32(uint16_t(v >> 16));
  }
}

inline void ld16(uint32_t (&r)[4], const void* p) {
  emu::check_access(p, 16, 16, false, "ld16");
  std::memcpy(r, p, 16);
}
inline void st16(void* p, const uint32_t (&r)[4]) {
  emu::check_access(p, 16, 16, true, "st16");
  std::memcpy(p, r, 16);
}
inline void st_u32(void* p, uint32_t v) {
  emu::check_access(p, 4, 4, true, "st_u32");
  std::memcpy(p, &v, 4);
}
inline float ld_f32(const float* p) {
  emu::check_access(p, 4, 4, false, "ld_f32");
  return *p;
}
inline void st_f32(float* p, float v) {
  emu::check_access(p, 4, 4, true, "st_f32");
  *p = v;
}
inline void ld_f32x4(float (&r)[4], const float* p) {
  emu::check_access(p, 16, 16, false, "ld_f32x4");
  std::memcpy(r, p, 16);
}
inline void st_f32x2(float* p, float a, float b) {
  emu::check_access(p, 8, 8, true, "st_f32x2");
  p[0] = a;
  p[1] = b;
}
inline void atomic_add_f32(float* p, float v) {
  emu::check_access(p, 4, 4, true, "atomic_add_f32");
  *p += v;
}

// ---- host side ----
template <class Kernel>
inline void set_max_dynamic_smem(Kernel, int bytes) {
  if (bytes > emu::config().max_smem) emu::fail("kernel needs %d bytes of shared memory > %d", bytes, emu::config().max_smem);
}
inline void memset_async(void* p, int value, size_t bytes, cudaStream_t) {
  if (!bytes) return;
  emu::check_access(p, bytes, 1, true, "memset");
  std::memset(p, value, bytes);
}
struct DeviceInfo {
  int sms = 0, cc_major = 0, cc_minor = 0, max_smem_optin = 0;
};
inline DeviceInfo current_device_info() {
  DeviceInfo d;
  d.sms = emu::config().sms;
  d.cc_major = emu::config().arch / 10;
  d.cc_minor = emu::config().arch % 10;
  d.max_smem_optin = emu::config().max_smem;
  return d;
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
