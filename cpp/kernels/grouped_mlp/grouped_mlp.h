// Grouped SwiGLU expert MLPs on raw CPU buffers (the MoE experts of one layer in
// one call): row r is x[index[r]] (x[r] without an index), rows offsets[e]..offsets[e+1]
// belong to expert e and get
//   gate = row Wg[e], up = row Wu[e], out = (silu(gate) * up) Wd[e];
// rows offsets[E]..rows (pairs dropped by a capacity limit) get 0.
//
//   x      [tokens, hidden]      index   [rows] int64 in [0, tokens), or null (rows = tokens)
//   wg, wu experts pointers to [hidden, inter]   offsets [experts + 1] int64, offsets[0] = 0,
//   wd     experts pointers to [inter, hidden]   non-decreasing, offsets[experts] <= rows
//          (each expert's own parameter buffers)
//   out    [rows, hidden]; gate, up [rows, inter] (saved for the backward)
//
// The forward gathers while the GEMMs pack their A operand: no gathered copy of x is made;
// the backward copies one expert's rows at a time (its weight gradients read them transposed). The
// backward's dx [tokens, hidden] is token-major: dx[t] sums the gradients of the rows
// with index t in row order (no atomics; the same result for any thread count).
//
// float32 only; each expert's rows are one block of work, so results do not
// depend on the thread count (weight gradients sum an expert's rows in row order).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace llmpre::kernels {

struct GroupedMlpParams {
  int64_t rows = 0;
  int64_t tokens = 0;   // rows of x (= rows without an index)
  int64_t hidden = 0;
  int64_t inter = 0;
  int64_t experts = 0;
  DType dtype = DType::kFloat32;
};

void grouped_mlp_forward(const GroupedMlpParams& p, const void* x, const int64_t* index, const int64_t* offsets,
                         const void* const* wg, const void* const* wu, const void* const* wd, void* out, void* gate,
                         void* up);

// dx [tokens, hidden]; dwg, dwu, dwd: experts pointers to buffers shaped like wg, wu, wd
// (experts without rows get zero weight gradients). With an index, workspace holds the rows'
// input gradients before each token sums its own: rows x hidden floats (the caller's
// allocator reuses it between calls; a fresh buffer faults its pages in on every call).
void grouped_mlp_backward(const GroupedMlpParams& p, const void* x, const int64_t* index, const int64_t* offsets,
                          const void* const* wg, const void* const* wu, const void* const* wd, const void* gate,
                          const void* up, const void* dout, void* dx, void* const* dwg, void* const* dwu,
                          void* const* dwd, void* workspace = nullptr);

}  // namespace llmpre::kernels
