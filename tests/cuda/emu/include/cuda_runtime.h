// CPU emulation of the small CUDA subset llmpre's row kernels use (cuda/rms_norm,
// cuda/rotary, cuda/cross_entropy), for tests only: it lets g++ compile the very
// same kernel sources and run each CUDA block as fibers, with __syncthreads
// and warp shuffles as barriers. Blocks run one after another, so a static
// local is exactly one block's shared memory. It checks indexing,
// synchronisation, tails and numerics on a machine without a GPU; it says
// nothing about speed, and the GPU run (bench/gpu/run.sh) is still the proof.
#pragma once

#include <math.h>

#include <algorithm>
#include <ucontext.h>

#include <functional>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
typedef struct CUstream_emu* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {

struct Config {
  int sms = 3;            // few "SMs": persistent kernels loop over many rows per block
  int blocks_per_sm = 2;
};
inline Config& config() {
  static Config c;
  return c;
}

// One CUDA block = blockDim fibers (ucontext) on the calling OS thread, run
// round-robin; a fiber yields only when it must wait at a barrier. Barriers
// count arrivals per phase, and a fiber that returns leaves its barriers (as
// on sm_70+). Deterministic, and cheap enough for thousands of blocks.
struct Barrier {
  unsigned expected = 0, arrived = 0;
  uint64_t phase = 0;
};

struct Block {
  Block(unsigned n, size_t smem_bytes) : n(n), fibers(n), done(n, 0), slots(n), smem(smem_bytes + 16, 0xff) {
    block_bar.expected = n;
    for (unsigned w = 0; w * 32 < n; ++w) {
      warp_bars.emplace_back();
      warp_bars.back().expected = std::min(32u, n - 32 * w);
    }
  }
  unsigned n;
  std::vector<ucontext_t> fibers;
  std::vector<char> done;
  Barrier block_bar;
  std::vector<Barrier> warp_bars;
  std::vector<uint64_t> slots;       // warp shuffle exchange
  std::vector<unsigned char> smem;   // dynamic shared memory, 0xff bytes (NaN) until written
  ucontext_t scheduler;
  std::exception_ptr error;
};
inline thread_local Block* tl_block = nullptr;
inline thread_local unsigned tl_tid = 0;
inline thread_local uint64_t tl_events = 0;  // barrier arrivals and finished threads: progress

inline void* dynamic_smem() {
  auto p = reinterpret_cast<uintptr_t>(tl_block->smem.data());
  return reinterpret_cast<void*>((p + 15) & ~uintptr_t(15));
}

inline void yield() { swapcontext(&tl_block->fibers[tl_tid], &tl_block->scheduler); }

inline void barrier_wait(Barrier& b) {
  ++tl_events;
  const uint64_t phase = b.phase;
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.phase;
    return;
  }
  while (b.phase == phase) yield();
}

inline void barrier_drop(Barrier& b) {
  --b.expected;
  if (b.expected > 0 && b.arrived == b.expected) {
    b.arrived = 0;
    ++b.phase;
  }
}

constexpr size_t kStack = 256 * 1024;
inline std::vector<char>& stacks(unsigned n) {
  static std::vector<char> s;
  if (s.size() < n * kStack) s.resize(n * kStack);
  return s;
}

inline std::function<void()>& fiber_body() {
  static std::function<void()> f;
  return f;
}

inline void fiber_entry() {
  Block& b = *tl_block;
  const unsigned t = tl_tid;
  try {
    fiber_body()();
  } catch (...) {
    if (!b.error) b.error = std::current_exception();
  }
  barrier_drop(b.block_bar);
  barrier_drop(b.warp_bars[t / 32]);
  b.done[t] = 1;
  ++tl_events;
  // returning resumes uc_link: the scheduler
}

// Runs every block of the grid in turn.
template <class Kernel, class... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, Args... args) {
  const unsigned n = block.x * block.y * block.z;
  gridDim = grid;
  blockDim = block;
  std::vector<char>& stack = stacks(n);
  fiber_body() = [&] { kernel(args...); };
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block b(n, smem);
        tl_block = &b;
        blockIdx = dim3(bx, by, bz);
        for (unsigned t = 0; t < n; ++t) {
          getcontext(&b.fibers[t]);
          b.fibers[t].uc_stack.ss_sp = stack.data() + t * kStack;
          b.fibers[t].uc_stack.ss_size = kStack;
          b.fibers[t].uc_link = &b.scheduler;
          makecontext(&b.fibers[t], fiber_entry, 0);
        }
        for (unsigned left = n; left > 0;) {
          const uint64_t events = tl_events;
          left = 0;
          for (unsigned t = 0; t < n; ++t) {
            if (b.done[t]) continue;
            tl_tid = t;
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            swapcontext(&b.scheduler, &b.fibers[t]);
            left += !b.done[t];
          }
          if (left > 0 && tl_events == events) {
            tl_block = nullptr;
            throw std::runtime_error("emulator: deadlock: threads wait at a barrier that others never reach");
          }
        }
        tl_block = nullptr;
        if (b.error) std::rethrow_exception(b.error);
      }
}

}  // namespace emu

#define LLMPRE_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::emu::launch(kernel, dim3(grid), dim3(block), (smem), __VA_ARGS__)
#define LLMPRE_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::emu::dynamic_smem())

inline void __syncthreads() { emu::barrier_wait(emu::tl_block->block_bar); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  emu::Block& b = *emu::tl_block;
  const unsigned t = emu::tl_tid, w = t / 32;
  std::memcpy(&b.slots[t], &v, sizeof v);
  emu::barrier_wait(b.warp_bars[w]);
  float r;
  std::memcpy(&r, &b.slots[w * 32 + ((t % 32) ^ static_cast<unsigned>(lane_mask))], sizeof r);
  emu::barrier_wait(b.warp_bars[w]);  // nobody overwrites a slot before every lane has read
  return r;
}

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
template <class T>
inline void __stwb(T* p, T v) { *p = v; }
inline int min(int a, int b) { return a < b ? a : b; }

// Runtime API: one device with emu::config() SMs; launches cannot fail later.
inline const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }
inline const char* cudaGetErrorString(cudaError_t) { return "error in the CPU emulator"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = emu::config().sms;
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
template <class F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F, int, size_t) {
  *n = emu::config().blocks_per_sm;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
