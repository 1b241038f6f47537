// The MoE combine on the GPU, forward and backward, on raw device pointers and a stream
// (no framework types). The same contract as the CPU kernel (cpp/kernels/grouped_mlp/
// moe_combine.h) and the Paddle op llmpre_moe_combine:
//
//   out[t] = sum_j w[t, j] * y[pos[t, j]]          (j = 0..slots-1, in slot order)
//   dy[pos[t, j]] = w[t, j] * dout[t]              (rows no pair reads: 0)
//   dw[t, j]      = <dout[t], y[pos[t, j]]>
//
//   y, dy [rows, hidden] and out, dout [tokens, hidden]: `dtype` storage (fp32, fp16 or bf16),
//   fp32 arithmetic, each output rounded once; pos [tokens, slots] device int64 (distinct rows
//   in [0, rows)); w, dw [tokens, slots] fp32.
//
// Token-major and without atomics: a block per token (grid-stride over tokens), its threads
// over the row's 16-byte packs. The forward sums a token's slots in slot order (fp32). The
// backward writes each pair's dy row once (pos is distinct), after zeroing dy on the stream
// (rows no pair reads keep the 0: one extra write of dy, the price of a defined gradient
// whatever pos holds); dw is one fp32 dot product per pair, each thread's strided partial sum
// then a fixed-order block reduction (common/rowwise.cuh group_sum), so the same bits on every
// run. The CPU kernel accumulates dw in float64; here fp32 (the error stays within the house
// rule of bench/gpu/check_moe_combine.py). A device kernel cannot throw: a pos entry outside
// [0, rows) gives NaN for that token's out row and that pair's dw, writes no dy row and never
// reads out of bounds; distinctness is not checked here (the CPU op checks it; two pairs on one
// row would race on that dy row). 16-byte aligned pointers with hidden % (16 / size) == 0 take
// the vectorised path, anything else an element-wise one.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/kernel_args.h"

namespace llmpre {
namespace cuda {

struct MoeCombineParams {
  int64_t tokens = 0;
  int64_t slots = 0;
  int64_t rows = 0;
  int64_t hidden = 0;
  DType dtype = DType::kFloat32;   // of y, out, dout, dy
  const void* y = nullptr;         // [rows, hidden]
  const int64_t* pos = nullptr;    // [tokens, slots]
  const float* w = nullptr;        // [tokens, slots]
  void* out = nullptr;             // forward: [tokens, hidden]
  const void* dout = nullptr;      // backward: [tokens, hidden]
  void* dy = nullptr;              // backward: [rows, hidden]
  float* dw = nullptr;             // backward: [tokens, slots]
};

// Throw std::invalid_argument (file:line and the fix) for bad sizes or null
// buffers, std::runtime_error for CUDA errors. Asynchronous on `stream`.
void moe_combine_forward(const MoeCombineParams& p, cudaStream_t stream);
void moe_combine_backward(const MoeCombineParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
