// Internals of the CPU emulator shared by emu.cpp (threads, barriers,
// warp instructions, cp.async) and emu_sm90.cpp (the Hopper layer:
// mbarriers, TMA, wgmma, named barriers, proxy fences). Not for kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>

namespace llmpre {
namespace cuda {
namespace fa {
namespace emu {
namespace detail {

// The running fiber (thread index in the block), or -1 on the host.
int current();
// Threads in the running block.
int block_threads();
// Switches to the next fiber; returns when the scheduler resumes this one.
void yield();
// Something changed that a waiting thread may observe (a barrier opened, a
// copy landed): the scheduler's deadlock detector counts these.
void progress();
// Shared memory of the running block.
unsigned char* smem_data();
int smem_size();
bool in_smem(const void* p, size_t bytes);
// Whether [p, p + bytes) lies in a registered global buffer.
bool in_buffer(const void* p, size_t bytes);

// Hooks into the block scheduler, implemented by emu_sm90.cpp.
void sm90_block_start(int threads);
void sm90_round_end(std::mt19937& rng);
void sm90_block_end();
void sm90_thread_exit(int tid);
// Called for every generic-proxy write of shared memory (fence.proxy.async
// tracking, and happens-before tracking of the async proxy's reads).
void sm90_generic_write(const void* p, size_t bytes);
// Called when __syncthreads completes (every thread then knows every write before it).
void sm90_block_barrier_complete();
// The shared byte offset the emulator reads for element (row, k) of the k16
// slice that wgmma descriptor `desc` describes (row: M for A, N for B;
// mn_major: the transpose bit). Exposed for tests (tests/cuda/cute_check).
uint32_t wgmma_operand_offset(uint64_t desc, bool mn_major, int row, int k);

}  // namespace detail
}  // namespace emu
}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
