// Blending several datasets by weight, as PaddleNLP's BlendableDataset does
// (helpers.cpp build_blending_indices, the int16 form of fast_dataindex > 0.1.1).
//
// Sample i of the blend is sample dataset_sample_index[i] of dataset
// dataset_index[i]. Datasets are chosen greedily: for i = 0, 1, ... take the
// dataset d with the largest error weights[d] * max(i, 1) - taken[d] (the
// first one on ties), record (d, taken[d]) and increment taken[d].
#pragma once

#include <cstdint>
#include <vector>

#include "llmpre/buffer.h"

namespace llmpre {

struct BlendIndex {
  Buffer<int16_t> dataset_index;
  Buffer<int64_t> dataset_sample_index;
  std::vector<int64_t> taken;  // samples drawn from each dataset
};

// `weights` are used as given (PaddleNLP normalises them before the call).
BlendIndex build_blend_index(const double* weights, int64_t num_datasets, int64_t size);

}  // namespace llmpre
