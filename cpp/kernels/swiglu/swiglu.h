// SwiGLU gate on raw CPU buffers: out = silu(gate) * up, silu(g) = g sigmoid(g).
// gate, up, out, dout, dgate, dup: n elements each in `dtype` (fp32 or bf16
// storage, fp32 arithmetic, one rounding per output).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace llmpre::kernels {

struct SwiGluParams {
  int64_t n = 0;
  DType dtype = DType::kFloat32;
};

void swiglu_forward(const SwiGluParams& p, const void* gate, const void* up, void* out);

// dgate = dout * up * sigmoid(g) (1 + g (1 - sigmoid(g))), dup = dout * silu(g).
void swiglu_backward(const SwiGluParams& p, const void* gate, const void* up, const void* dout,
                     void* dgate, void* dup);

}  // namespace llmpre::kernels
