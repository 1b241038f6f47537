// CPU flash attention: host API on raw pointers and sizes (no framework types).
//
// Math (the contract of llmpre.ops.reference.attention_math):
//   out[b, i, h, :] = sum_j softmax_j(s_ij) * v[b, j, g, :],   g = h / (heads / kv_heads)
//   s_ij = scale * <q[b, i, h, :], k[b, j, g, :]> + slope_h * (j - pos_i) + mask_ij
// Query i sits at key position pos_i = i + q_offset (default seq_k - seq_q: the
// queries are the last seq_q keys; ring attention passes the distance between a
// block's query and key chunks). Key j is visible to
// query i when (!causal || j <= pos_i) && (window <= 0 || j > pos_i - window);
// mask_ij is 0 for visible keys and -inf otherwise. A query that sees no key
// gets out = 0 and lse = -inf.
//
// Algorithm: tiled online softmax (FlashAttention-2 style), tiles outside the
// causal/window band skipped. Storage is fp32 or bf16; products and sums
// accumulate in fp32 (the softmax row sums in fp64). The inner products run
// on AVX2+FMA intrinsics when the CPU has them (chosen at run time, see
// common/isa.h; the build targets baseline x86-64), else on portable loops.
//
// Extra memory, never [seq_q, seq_k]: forward, ~100 KB of tiles per thread;
// backward, 2 floats per (batch, head, query) plus, when dq cannot accumulate
// in place (bf16, head_dim % 16 != 0, or batch * kv_heads < 32 so keys are
// split into chunks), one fp32 copy of dq per key chunk (at most 8).
//
// Threads: OpenMP, over (batch, head, query tile) in the forward pass and
// over (batch, kv head, key chunk) in the backward pass. Every output element
// is summed in a fixed order that depends on the shapes only, so results are
// bitwise identical from run to run and for any thread count (the AVX2 and
// portable paths differ in rounding).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace llmpre::kernels {

inline constexpr int64_t kDefaultQOffset = INT64_MIN;

// Forward. All tensors are dense, row-major (the last axis contiguous). bf16
// tensors are raw uint16 bit patterns (the top half of an IEEE fp32).
struct FlashAttentionFwdParams {
  const void* q = nullptr;             // [batch, seq_q, heads, head_dim]
  const void* k = nullptr;             // [batch, seq_k, kv_heads, head_dim]
  const void* v = nullptr;             // [batch, seq_k, kv_heads, v_head_dim]
  const float* alibi_slopes = nullptr; // [heads] fp32, or nullptr for no ALiBi
  void* out = nullptr;                 // [batch, seq_q, heads, v_head_dim], dtype of q
  float* lse = nullptr;                // [batch, heads, seq_q] natural-log sum of exp(s_ij)

  int64_t batch = 0, seq_q = 0, seq_k = 0, heads = 0, kv_heads = 0;
  int64_t head_dim = 0, v_head_dim = 0;
  bool causal = true;
  int64_t window = -1;  // > 0: sliding window of this many keys; <= 0: none
  float scale = 0.f;    // > 0; callers pass 1/sqrt(head_dim) for the default
  int64_t q_offset = kDefaultQOffset;  // key position of query 0; the default means seq_k - seq_q
  DType dtype = DType::kFloat32;
};

// Backward: the forward's inputs and outputs plus dout; writes dq, dk, dv
// (same shapes and dtype as q, k, v; dk and dv summed over the query heads
// that share a KV head). P is recomputed tile by tile from the saved lse.
struct FlashAttentionBwdParams : FlashAttentionFwdParams {
  const void* dout = nullptr;  // [batch, seq_q, heads, v_head_dim]
  void* dq = nullptr;          // [batch, seq_q, heads, head_dim]
  void* dk = nullptr;          // [batch, seq_k, kv_heads, head_dim]
  void* dv = nullptr;          // [batch, seq_k, kv_heads, v_head_dim]
  // FlashAttentionFwdParams::out and ::lse are read (the saved forward results), not written.
};

// Both throw std::invalid_argument (naming the field) on inconsistent sizes
// or null pointers; they never throw once the computation has started.
// The code path (AVX2+FMA or baseline) is common/isa.h's active_isa().
void flash_attention_forward(const FlashAttentionFwdParams& p);
void flash_attention_backward(const FlashAttentionBwdParams& p);

// Key position of query 0 under p.
inline int64_t query_offset(const FlashAttentionFwdParams& p) {
  return p.q_offset == kDefaultQOffset ? p.seq_k - p.seq_q : p.q_offset;
}

}  // namespace llmpre::kernels
