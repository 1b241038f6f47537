// CUDA flash attention: host API on raw device pointers and a stream (no
// framework types). The header is named flash_attention_cuda.h, not flash_attention.h,
// because the Paddle op includes the CPU kernel's "flash_attention/flash_attention.h"
// from cpp/kernels/ in the same translation unit.
//
// Math (the contract of llmpre.ops.reference.attention_math and of the CPU
// kernel cpp/kernels/flash_attention):
//   out[b, i, h, :] = sum_j softmax_j(s_ij) * v[b, j, g, :],  g = h / (heads / kv_heads)
//   s_ij = scale * <q[b, i, h, :], k[b, j, g, :]> + slope_h * (j - pos_i) + mask_ij
// Query i sits at key position pos_i = i + q_offset (default seq_k - seq_q: the
// queries are the last seq_q keys; ring attention passes the distance between a
// block's query and key chunks, see llmpre.parallel.context). Key j is visible to
// query i when (!causal || j <= pos_i) && (window <= 0 || j > pos_i - window).
// A query that sees no key gets out = 0 and lse = -inf.
//
// Two sets of kernels:
//   portable (sm_80 and newer, Hopper included): mma.sync m16n8k16 with fp32
//     accumulation, ldmatrix, cp.async double buffering; fwd_kernel.cuh
//     and bwd_kernel.cuh.
//   Hopper (sm_90a; built when the CUDA architectures include 90, CMake
//     defines LLMPRE_FA_SM90): TMA loads, wgmma, warp-specialised producer and
//     consumer warpgroups with mbarrier pipelines; fwd_sm90_kernel.cuh
//     (head_dim 64/128/256) and bwd_sm90_kernel.cuh (64/128).
// FlashAttentionFwdParams::kernel chooses; kAuto takes the Hopper kernels on an
// sm_90 device when they exist for the head_dim and pass, else the portable
// ones. The caller decides (for Paddle: llmpre.ops.select_ops, where the
// environment variable LLMPRE_FLASH_ATTENTION_KERNEL is read as an override).
//
// Supported: bf16 and fp16; head_dim 64, 128 and 256 (those compiled in, see
// flash_attention_head_dim_compiled); causal or not; GQA/MQA; sliding window;
// ALiBi; any seq_q, seq_k >= 1. Tensors are dense in Paddle's
// [batch, seq, heads, head_dim] layout with 16-byte aligned base pointers.
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef LLMPRE_FA_EMULATE
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
#else
#include <cuda_runtime.h>
#endif

#include "llmpre/dtype.h"

namespace llmpre {
namespace cuda {

enum class FlashAttentionKernel : int { kAuto = 0, kPortable = 1, kHopper = 2 };

inline constexpr int kDefaultQOffset = INT32_MIN;   // q_offset: seq_k - seq_q

struct FlashAttentionFwdParams {
  const void* q = nullptr;              // [batch, seq_q, heads, head_dim]
  const void* k = nullptr;              // [batch, seq_k, kv_heads, head_dim]
  const void* v = nullptr;              // [batch, seq_k, kv_heads, head_dim]
  const float* alibi_slopes = nullptr;  // [heads] fp32 on the device, or nullptr
  void* out = nullptr;                  // [batch, seq_q, heads, head_dim], dtype of q
  float* lse = nullptr;                 // [batch, heads, seq_q] natural-log sum of exp(s_ij)

  int batch = 0, seq_q = 0, seq_k = 0, heads = 0, kv_heads = 0, head_dim = 0;
  bool causal = true;
  int window = -1;     // > 0: sliding window of this many keys; <= 0: none
  float scale = 0.f;   // > 0 (callers pass 1/sqrt(head_dim) for the default)
  int q_offset = kDefaultQOffset;       // key position of query 0 (kDefaultQOffset: seq_k - seq_q)
  DType dtype = DType::kBFloat16;       // kBFloat16 or kFloat16
  // kHopper where unavailable: std::invalid_argument with the reason
  FlashAttentionKernel kernel = FlashAttentionKernel::kAuto;
};

// Backward: the forward's inputs and results plus dout; writes dq, dk, dv
// (shapes and dtype of q, k, v; dk and dv summed over the query heads that
// share a KV head). `workspace` must hold flash_attention_bwd_workspace_bytes(p)
// bytes of device memory, 256-byte aligned (cudaMalloc gives that).
struct FlashAttentionBwdParams : FlashAttentionFwdParams {
  const void* dout = nullptr;  // [batch, seq_q, heads, head_dim]
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  // false: dq accumulates in fp32 with atomics (portable kernels) or bulk
  // reductions (Hopper) (fastest; the summation order, so the last bits of
  // dq, may vary between runs). true: dq comes from a
  // separate query-major pass without atomics, bitwise reproducible. dk and
  // dv are reproducible either way.
  bool deterministic = false;
  void* workspace = nullptr;
  // FlashAttentionFwdParams::out and ::lse are read (the forward's results).
};

// True when kernels for this head_dim were compiled into this build.
bool flash_attention_head_dim_compiled(int head_dim);
// True when this build has Hopper kernels for head_dim (forward or backward).
bool flash_attention_hopper_compiled(int head_dim, bool backward);
// Which kernels a call with these parameters runs on the current device:
// FlashAttentionKernel::kPortable or FlashAttentionKernel::kHopper (throws as the call would).
FlashAttentionKernel flash_attention_selected_kernel(const FlashAttentionFwdParams& p, bool backward);

// Throw std::invalid_argument naming the field on bad sizes, null pointers or
// misaligned pointers; std::runtime_error (file:line) on CUDA errors.
void flash_attention_forward(const FlashAttentionFwdParams& p, cudaStream_t stream);
size_t flash_attention_bwd_workspace_bytes(const FlashAttentionBwdParams& p);
void flash_attention_backward(const FlashAttentionBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
