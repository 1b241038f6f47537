// Grouped SwiGLU expert MLPs on raw CPU buffers (the MoE experts of one layer in
// one call): rows offsets[e]..offsets[e+1] of x belong to expert e and get
//   gate = x Wg[e], up = x Wu[e], out = (silu(gate) * up) Wd[e];
// rows offsets[E]..rows (pairs dropped by a capacity limit) get 0.
//
//   x      [rows, hidden]        offsets [experts + 1] int64, offsets[0] = 0,
//   wg, wu [experts, hidden, inter]      non-decreasing, offsets[experts] <= rows
//   wd     [experts, inter, hidden]
//   out    [rows, hidden]; gate, up [rows, inter] (saved for the backward)
//
// float32 only; each expert's rows are one block of work, so results do not
// depend on the thread count (weight gradients sum an expert's rows in row order).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace llmpre::kernels {

struct GroupedMlpParams {
  int64_t rows = 0;
  int64_t hidden = 0;
  int64_t inter = 0;
  int64_t experts = 0;
  DType dtype = DType::kFloat32;
};

void grouped_mlp_forward(const GroupedMlpParams& p, const void* x, const int64_t* offsets, const void* wg,
                         const void* wu, const void* wd, void* out, void* gate, void* up);

// dx [rows, hidden], dwg/dwu [experts, hidden, inter], dwd [experts, inter, hidden]
// (experts without rows get zero weight gradients).
void grouped_mlp_backward(const GroupedMlpParams& p, const void* x, const int64_t* offsets, const void* wg,
                          const void* wu, const void* wd, const void* gate, const void* up, const void* dout,
                          void* dx, void* dwg, void* dwu, void* dwd);

}  // namespace llmpre::kernels
