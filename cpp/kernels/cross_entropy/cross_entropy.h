// Softmax cross-entropy over large vocabularies on raw CPU buffers, without
// materialising the softmax.
//
// logits: [rows, vocab] in `dtype` (fp32 or bf16 storage, fp32 arithmetic);
// labels: [rows] int64. Forward writes, per row, stats[r] = (m, l): the row's
// max m and l = log(sum_j exp(logits[r, j] - m)), computed online block by
// block (each logit is read once), and the loss (m - logits[label]) + l; rows
// whose label is ignore_index get loss 0 (and stats 0). The log-sum-exp is
// kept as two numbers because m + l rounded to one fp32 loses the low bits of
// l when |m| is large, and the backward needs them:
//   dlogits[r, j] = dloss[r] * (exp((logits[r, j] - m) - l) - [j == label[r]])
// (zeros on ignored rows).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace llmpre::kernels {

struct CrossEntropyParams {
  int64_t rows = 0;
  int64_t vocab = 0;
  int64_t ignore_index = -100;
  DType dtype = DType::kFloat32;
};

// Throws std::invalid_argument for bad sizes and std::out_of_range for a label
// that is neither ignore_index nor in [0, vocab), naming the row.
// loss: [rows] fp32; stats: [rows, 2] fp32.
void cross_entropy_forward(const CrossEntropyParams& p, const void* logits, const int64_t* labels,
                           float* loss, float* stats);

void cross_entropy_backward(const CrossEntropyParams& p, const void* logits, const int64_t* labels,
                            const float* stats, const float* dloss, void* dlogits);

}  // namespace llmpre::kernels
