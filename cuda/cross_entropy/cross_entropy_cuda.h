// Fused softmax cross-entropy for large vocabularies on the GPU, on raw device
// pointers and a stream, without materialising the softmax.
//
// logits: [rows, vocab] in `dtype` storage (fp32, fp16, bf16; fp32 math);
// labels: [rows] int64. The forward reads each logit once, keeping an online
// (max, sum of exp) per thread, and writes per row
//   stats[r] = (m, l): m = max_j logits[r, j], l = log(sum_j exp(logits[r, j] - m))
//   loss[r]  = (m - logits[r, label]) + l
// Rows whose label is ignore_index read nothing and get loss 0 and stats 0.
// The backward recomputes the softmax from the saved stats:
//   dlogits[r, j] = dloss[r] * (exp((logits[r, j] - m) - l) - [j == label[r]])
// (zeros on ignored rows). Same contract as the CPU kernel
// (cpp/kernels/cross_entropy) and the Paddle op llmpre_cross_entropy.
//
// A label that is neither ignore_index nor in [0, vocab) cannot throw from the
// device: its row's loss is NaN and its dlogits row is NaN, so the error shows.
// A NaN logit in a kept row makes that row's loss, l and dlogits NaN (m is
// the max of the other logits).
// Buffers must not overlap. Rows may start at any element-aligned address
// (the unaligned head and tail of each row are peeled off the 16-byte body);
// the backward uses 16-byte accesses when logits and dlogits share their
// alignment modulo 16 bytes, else element-wise ones.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/kernel_args.h"

namespace llmpre {
namespace cuda {

struct CrossEntropyParams {
  int64_t rows = 0;
  int64_t vocab = 0;
  int64_t ignore_index = -100;
  DType dtype = DType::kFloat32;

  const void* logits = nullptr;     // [rows, vocab]
  const int64_t* labels = nullptr;  // [rows]
  float* loss = nullptr;            // forward: [rows]
  float* stats = nullptr;           // forward writes, backward reads: [rows, 2]
  const float* dloss = nullptr;     // backward: [rows]
  void* dlogits = nullptr;          // backward: [rows, vocab]
};

// Throw std::invalid_argument (file:line, the argument and the fix) for bad
// sizes or null buffers, std::runtime_error for CUDA errors. Asynchronous.
void cross_entropy_forward(const CrossEntropyParams& p, cudaStream_t stream);
void cross_entropy_backward(const CrossEntropyParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
