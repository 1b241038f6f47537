// Rotary position embedding on the GPU, on raw device pointers and a stream.
//
// q: [batch, seq, heads_q, head_dim] and optionally k: [batch, seq, heads_k,
// head_dim] (GQA: any head counts; one launch rotates both), row-major in
// `dtype` storage, fp32 arithmetic, each output rounded once. The first
// rot_dim features of every head are rotated in pairs, the rest copied:
//   rotate_half (interleaved = false): pair i is features (i, i + rot_dim/2)
//   interleaved (interleaved = true):  pair i is features (2i, 2i + 1)
// Pair (a, b) at position p becomes (a c - b s, b c + a s) with c = cos[p, i],
// s = sin[p, i]; cos/sin are [table_rows, rot_dim/2] fp32 (any RoPE scaling
// variant is just other tables). inverse = true rotates by -angle, which is
// the backward pass (the rotation is orthogonal: dx = R(-angle) dy).
// Positions: position_ids [ids_batch, seq] int64 (ids_batch 1: shared by the
// batch, else = batch), or 0..seq-1 when null. The same contract as the CPU
// kernel (cpp/kernels/rotary) and the Paddle op llmpre_rotary.
//
// A position outside [0, table_rows) cannot throw from the device: the
// rotated features of that token become NaN (the pass-through ones are
// copied), so the error shows in the output instead of reading out of bounds.
// Outputs may alias their inputs (q_out == q rotates in place); otherwise
// buffers must not overlap. 16-byte aligned pointers with head_dim and the
// rotated width multiples of 16 bytes take the vectorised path; anything else
// takes an element-wise path (correct, slower).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/kernel_args.h"

namespace llmpre {
namespace cuda {

struct RotaryParams {
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t heads_q = 0;
  int64_t heads_k = 0;     // 0: rotate q only
  int64_t head_dim = 0;
  int64_t rot_dim = 0;     // even, 2 <= rot_dim <= head_dim
  int64_t table_rows = 0;  // positions the tables cover
  int64_t ids_batch = 0;   // rows of position_ids: 0 (none), 1 or batch
  bool interleaved = false;
  bool inverse = false;
  DType dtype = DType::kFloat32;

  const void* q = nullptr;
  void* q_out = nullptr;
  const void* k = nullptr;  // with heads_k > 0
  void* k_out = nullptr;
  const float* cos = nullptr;  // [table_rows, rot_dim / 2]
  const float* sin = nullptr;
  const int64_t* position_ids = nullptr;  // [ids_batch, seq] or null
};

// Throws std::invalid_argument (file:line, the argument and the fix) for
// inconsistent sizes or null buffers, std::runtime_error for CUDA errors.
void rotary_apply(const RotaryParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
