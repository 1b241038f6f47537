// Rotary position embedding on raw CPU buffers.
//
// x, out: [batch, seq, heads, head_dim] row-major, `dtype` storage. The first
// rot_dim features of each head are rotated in pairs, the rest copied:
//   rotate_half (interleaved = false): pair i is features (i, i + rot_dim/2)
//   interleaved (interleaved = true):  pair i is features (2i, 2i + 1)
// Pair (a, b) at position p becomes (a c - b s, b c + a s) with
// c = cos[p, i], s = sin[p, i]; the tables are [table_rows, rot_dim/2] fp32
// (any RoPE scaling variant is just other tables). The backward pass is the
// same rotation by -angle: set `inverse`.
// Positions: position_ids [ids_batch, seq] int64 when given (ids_batch 1 is
// shared by every sequence, otherwise it must equal batch); else 0..seq-1.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace llmpre::kernels {

struct RotaryParams {
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t rot_dim = 0;      // even, 2 <= rot_dim <= head_dim
  int64_t table_rows = 0;   // positions the cos/sin tables cover
  int64_t ids_batch = 0;    // rows of position_ids (0: none given)
  bool interleaved = false;
  bool inverse = false;
  DType dtype = DType::kFloat32;
};

// Throws std::invalid_argument for inconsistent sizes and std::out_of_range
// for a position outside [0, table_rows), naming the offending entry.
void rotary_apply(const RotaryParams& p, const void* x, const float* cos, const float* sin,
                  const int64_t* position_ids, void* out);

}  // namespace llmpre::kernels
