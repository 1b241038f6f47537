// CPU emulator of the Hopper hardware layer (arch_sm90.cuh under
// LLMPRE_FA_EMULATE): mbarriers with transaction counts, TMA tile loads and
// stores with 128-byte swizzling, 1-D bulk copies, wgmma with shared-memory
// descriptors or register A operands, named barriers and proxy fences.
//
// Semantics follow the PTX ISA; what the emulator checks beyond the results:
//   - TMA and bulk data land only when a thread waits on their mbarrier
//     (tma_mode 0), at issue (1) or at random scheduler rounds (2), so a
//     missing wait or an early buffer reuse changes results;
//   - a wgmma reads its shared-memory operands at issue and again when it is
//     retired by wgmma.wait_group: a change in between (a TMA or a store
//     overwriting a buffer still in use) is reported; its accumulators are
//     NaN while in flight and must not be written; register A operands must
//     stay unchanged until retirement; every wgmma needs a wgmma.fence since
//     the thread's last wgmma.wait_group;
//   - shared memory written by generic stores and then read by the async
//     proxy (wgmma, TMA store) needs fence.proxy.async by the writer first,
//     and a barrier (__syncthreads or a named barrier) ordering the store
//     before the read when another warpgroup reads it (vector clocks);
//   - named barriers: arrivals balance by the end of the block;
//   - a descriptor must describe a 128-byte swizzled canonical layout whose
//     elements all lie in shared memory; TMA destinations are 1024-aligned;
//   - warpgroup collectives are reached by all 128 threads with the same
//     operands; a thread exits with no TMA store or wgmma outstanding and a
//     block ends with no TMA load that nobody waited for.
#pragma once

#include <cstdint>

namespace llmpre {
namespace cuda {
namespace fa {
namespace emu {

// Tensor map of a 4-D tensor of 16-bit elements, 128-byte swizzle (stored in
// the 128 bytes of a TmaDesc).
void tma_encode(void* desc128, const void* base, const uint64_t (&dims)[4], const uint64_t (&strides)[3],
                const uint32_t (&box)[4]);

uint32_t smem_offset(const void* p);
void mbar_init(void* bar, int count);
void mbar_arrive(void* bar, uint32_t expect_tx_bytes);
void mbar_wait(void* bar, int parity);
void tma_load(void* dst, const void* desc, int c0, int c1, int c2, int c3, void* bar);
void tma_store(const void* desc, const void* src, int c0, int c1, int c2, int c3);
void tma_store_commit();
void tma_store_wait();
void bulk_reduce_add(float* dst, const void* src, uint32_t bytes);
void bulk_load(void* dst, const void* src, uint32_t bytes, void* bar);
void fence_proxy_async();
void named_barrier(int id, int threads, bool wait);
void wgmma_fence();
// d: this thread's n/2 accumulators; a_regs: 4 registers (register A) or
// nullptr (A from desc_a).
void wgmma(bool bf16, int n, float* d, uint64_t desc_a, const uint32_t* a_regs, uint64_t desc_b, bool tnsp_a,
           bool tnsp_b, bool accumulate);
void wgmma_commit();
void wgmma_wait(int pending);

}  // namespace emu
}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
