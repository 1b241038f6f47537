// The Hopper (sm_90a) hardware layer of the flash attention kernels, on top
// of arch.cuh: mbarriers, TMA tensor loads and stores, 1-D bulk copies,
// wgmma (warpgroup MMA with shared-memory descriptors), named barriers,
// register reallocation and proxy fences. Under nvcc each is inline PTX
// (PTX ISA 8.0+, compiled only for sm_90a: the kernels that use it are
// guarded by FA_SM90_ONLY); with LLMPRE_FA_EMULATE they run on the CPU
// emulator (emu/emu_sm90.h), which also checks their usage rules.
//
// Shared-memory tiles use the 128-byte swizzle (CU_TENSOR_MAP_SWIZZLE_128B,
// wgmma layout type 1): a tile of R rows x 64 16-bit columns occupies R x 128
// bytes, 1024-byte aligned, and the 16-byte chunk c of row r sits at chunk
// c ^ (r % 8); wider tiles are several such 64-column panels one after the
// other. sw128_offset() gives the byte offset of an element. wgmma operands
// are described by sw128_desc(address, lbo, sbo):
//   K-major (k contiguous): element (row, k) of a k16 slice at
//     start + (row % 8) * 128 + (row / 8) * sbo + 2 k            (lbo unused)
//   M/N-major (row contiguous):
//     start + (row % 64) * 2 + (row / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo
// both then swizzled. A k16 slice of a K-major panel starts 32 bytes after
// the previous one; of an M/N-major panel, 16 rows (2048 bytes) later.
// Accumulators of m64nNk16 (fp32): thread l of the warpgroup (warp w = l/32,
// g = (l%32)/4, t = l%4) holds d[4j + e] = D[16w + g + 8(e/2)][8j + 2t + e%2];
// a register A operand is the mma.sync m16n8k16 A fragment of rows 16w...
#pragma once

#include <cstdint>
#include <type_traits>

#include "flash_attention/arch.cuh"
#include "flash_attention/sm90_config.h"

namespace llmpre {
namespace cuda {
namespace fa {

// Byte offset of element (r, c) of a [rows x cols] 16-bit tile stored as
// 64-column panels of rows x 128 bytes with the 128-byte swizzle.
FA_DEV uint32_t sw128_offset(int r, int c, int rows) {
  const uint32_t off = uint32_t(c / 64) * uint32_t(rows) * 128u + uint32_t(r) * 128u + uint32_t(c % 64) * 2u;
  return off ^ (((off >> 7) & 7u) << 4);
}

// wgmma shared-memory descriptor of a 128-byte swizzled operand.
FA_DEV uint64_t sw128_desc(uint32_t smem_address, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return uint64_t((smem_address & 0x3ffffu) >> 4) | (uint64_t((lbo_bytes >> 4) & 0x3fffu) << 16) |
         (uint64_t((sbo_bytes >> 4) & 0x3fffu) << 32) | (uint64_t(1) << 62);
}
// A k16 slice of a K-major tile (M/N index = row): `address` is the tile's
// 64-column panel + 32 bytes per k16 step inside the panel.
FA_DEV uint64_t kmajor_desc(uint32_t address) { return sw128_desc(address, 16, 1024); }
// A k16 slice of an M/N-major tile stored with K as rows (panel_rows rows
// per 64-column panel, M/N index = column): `address` is the tile + 2048
// bytes (16 rows) per k16 step; an operand wider than 64 spans panels.
FA_DEV uint64_t mnmajor_desc(uint32_t address, int panel_rows) {
  return sw128_desc(address, uint32_t(panel_rows) * 128u, 1024);
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre

#ifdef LLMPRE_FA_EMULATE

#include "flash_attention/emu/emu_sm90.h"

#define FA_GRID_CONSTANT
#define FA_SM90_ENABLED 1
#define FA_SM90_ONLY(...) __VA_ARGS__

namespace llmpre {
namespace cuda {
namespace fa {

inline uint32_t smem_u32(const void* p) { return emu::smem_offset(p); }
inline void mbar_init(uint64_t* bar, int count) { emu::mbar_init(bar, count); }
inline void mbar_init_fence() {}
inline void mbar_arrive(uint64_t* bar) { emu::mbar_arrive(bar, 0); }
inline void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) { emu::mbar_arrive(bar, bytes); }
inline void mbar_wait(uint64_t* bar, int parity) { emu::mbar_wait(bar, parity); }
inline void tma_prefetch_desc(const TmaDesc*) {}
inline void tma_load_4d(void* dst, const TmaDesc* desc, int c0, int c1, int c2, int c3, uint64_t* bar) {
  emu::tma_load(dst, desc, c0, c1, c2, c3, bar);
}
inline void tma_store_4d(const TmaDesc* desc, const void* src, int c0, int c1, int c2, int c3) {
  emu::tma_store(desc, src, c0, c1, c2, c3);
}
inline void tma_store_commit() { emu::tma_store_commit(); }
inline void tma_store_wait_all() { emu::tma_store_wait(); }
inline void tma_store_wait_read() { emu::tma_store_wait(); }
inline void bulk_reduce_add_f32(float* dst, const void* src, uint32_t bytes) { emu::bulk_reduce_add(dst, src, bytes); }
inline void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) { emu::bulk_load(dst, src, bytes, bar); }
inline void fence_proxy_async() { emu::fence_proxy_async(); }
inline void named_bar_sync(int id, int threads) { emu::named_barrier(id, threads, true); }
inline void named_bar_arrive(int id, int threads) { emu::named_barrier(id, threads, false); }
template <int R>
inline void reg_alloc() {}
template <int R>
inline void reg_dealloc() {}
inline void wgmma_fence() { emu::wgmma_fence(); }
inline void wgmma_commit() { emu::wgmma_commit(); }
template <int N>
inline void wgmma_wait() {
  emu::wgmma_wait(N);
}
template <int N>
inline void fence_acc(float (&)[N]) {}
template <int N>
inline void fence_regs(uint32_t (&)[N][4]) {}

template <class T, int N>
struct Wgmma {
  template <int TA, int TB>
  static void ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    emu::wgmma(std::is_same<T, Bf16>::value, N, d, desc_a, nullptr, desc_b, TA != 0, TB != 0, scale_d != 0);
  }
  template <int TB>
  static void rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
    emu::wgmma(std::is_same<T, Bf16>::value, N, d, 0, a, desc_b, false, TB != 0, scale_d != 0);
  }
};

// Host: a tensor map of a 4-D tensor of 16-bit elements (dims innermost
// first, strides in bytes of dims 1..3), box `box`, 128-byte swizzle.
inline void make_tma_desc(TmaDesc* out, const void* base, const uint64_t (&dims)[4], const uint64_t (&strides)[3],
                          const uint32_t (&box)[4]) {
  emu::tma_encode(out, base, dims, strides, box);
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre

#else  // nvcc

#include <cuda.h>

#define FA_GRID_CONSTANT __grid_constant__
// The Hopper kernels' sources are compiled for sm_90a only (CMake); should
// they be built for another device architecture, their bodies become traps
// (the launcher selects them only on an sm_90 device).
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FA_SM90_ENABLED 0
#define FA_SM90_ONLY(...) __trap()
#else
#define FA_SM90_ENABLED 1
#define FA_SM90_ONLY(...) __VA_ARGS__
#endif

namespace llmpre {
namespace cuda {
namespace fa {

FA_DEV uint32_t smem_u32(const void* p) { return smem_addr(p); }

FA_DEV void mbar_init(uint64_t* bar, int count) {
  FA_SM90_ONLY(asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count)));
}
// Makes initialised mbarriers visible to the async proxy (TMA).
FA_DEV void mbar_init_fence() { FA_SM90_ONLY(asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory")); }
FA_DEV void mbar_arrive(uint64_t* bar) {
  FA_SM90_ONLY(asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory"));
}
FA_DEV void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  FA_SM90_ONLY(asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
                            "r"(bytes) : "memory"));
}
// Waits until the phase of parity `parity` has completed.
FA_DEV void mbar_wait(uint64_t* bar, int parity) {
  FA_SM90_ONLY(asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "LAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra LAB_WAIT;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory"));
}

FA_DEV void tma_prefetch_desc(const TmaDesc* desc) {
  FA_SM90_ONLY(asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(desc)) : "memory"));
}
// Loads one box at coordinates (c0..c3) into dst; completes bytes on bar.
FA_DEV void tma_load_4d(void* dst, const TmaDesc* desc, int c0, int c1, int c2, int c3, uint64_t* bar) {
  FA_SM90_ONLY(asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(desc)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(bar))
      : "memory"));
}
// Stores one box from src (clipped at the tensor's bounds).
FA_DEV void tma_store_4d(const TmaDesc* desc, const void* src, int c0, int c1, int c2, int c3) {
  FA_SM90_ONLY(asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(desc)),
      "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory"));
}
FA_DEV void tma_store_commit() { FA_SM90_ONLY(asm volatile("cp.async.bulk.commit_group;\n" ::: "memory")); }
// Waits until every committed TMA store or bulk reduction has finished (reads and writes).
FA_DEV void tma_store_wait_all() { FA_SM90_ONLY(asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory")); }
// Waits until every committed TMA store or bulk reduction has read its shared memory.
FA_DEV void tma_store_wait_read() { FA_SM90_ONLY(asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory")); }
// dst[i] += src[i] for bytes / 4 floats, shared -> global, asynchronous (a bulk group;
// 16-byte aligned ends, size a multiple of 16).
FA_DEV void bulk_reduce_add_f32(float* dst, const void* src, uint32_t bytes) {
  FA_SM90_ONLY(asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
                            "r"(smem_u32(src)), "r"(bytes)
                            : "memory"));
}
// 1-D copy of `bytes` (multiple of 16, 16-byte aligned ends) global -> shared.
FA_DEV void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  FA_SM90_ONLY(asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar))
      : "memory"));
}
// Generic-proxy shared-memory writes of this thread become visible to the
// async proxy (wgmma operands, TMA stores).
FA_DEV void fence_proxy_async() { FA_SM90_ONLY(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory")); }

FA_DEV void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
FA_DEV void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <int R>
FA_DEV void reg_alloc() {
  FA_SM90_ONLY(asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R)));
}
template <int R>
FA_DEV void reg_dealloc() {
  FA_SM90_ONLY(asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R)));
}

FA_DEV void wgmma_fence() { FA_SM90_ONLY(asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory")); }
FA_DEV void wgmma_commit() { FA_SM90_ONLY(asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory")); }
template <int N>
FA_DEV void wgmma_wait() {
  FA_SM90_ONLY(asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"));
}
// Keep the compiler from moving accumulator reads or writes, or the
// computation of register A operands, across a wgmma fence, issue or wait
// (the asm above does not name those registers).
template <int N>
FA_DEV void fence_acc(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
FA_DEV void fence_regs(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

#if !FA_SM90_ENABLED
template <class T, int N>
struct Wgmma {
  template <int TA, int TB>
  FA_DEV static void ss(float (&)[N / 2], uint64_t, uint64_t, int) {
    __trap();
  }
  template <int TB>
  FA_DEV static void rs(float (&)[N / 2], const uint32_t (&)[4], uint64_t, int) {
    __trap();
  }
};
#else
#include "flash_attention/wgmma_sm90.inc"
#endif

// Host: a tensor map of a 4-D tensor of 16-bit elements (dims innermost
// first, strides in bytes of dims 1..3), box `box`, 128-byte swizzle, zero
// fill out of bounds. cuTensorMapEncodeTiled comes from the driver through
// the runtime (no link against libcuda).
void make_tma_desc(TmaDesc* out, const void* base, const uint64_t (&dims)[4], const uint64_t (&strides)[3],
                   const uint32_t (&box)[4]);

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre

#endif  // LLMPRE_FA_EMULATE

namespace llmpre {
namespace cuda {
namespace fa {

// The 1024-aligned start of dynamic shared memory (the 128-byte swizzle
// repeats every 1024 bytes of shared address).
FA_DEV unsigned char* smem_base_1024() {
  unsigned char* p = smem_base();
  const uint32_t a = smem_u32(p);
  return p + ((1024u - (a & 1023u)) & 1023u);
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
