#include "llmpre/blend_index.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "llmpre/corpus.h"

namespace llmpre {

BlendIndex build_blend_index(const double* weights, int64_t num_datasets, int64_t size) {
  if (num_datasets < 1 || num_datasets >= 32767) {
    throw DataError("blending needs 1 to 32766 datasets (PaddleNLP's int16 dataset index), got " +
                    std::to_string(num_datasets));
  }
  if (size < 0) throw DataError("blend size must be >= 0, got " + std::to_string(size));
  for (int64_t d = 0; d < num_datasets; ++d) {
    if (!std::isfinite(weights[d]) || weights[d] < 0) {
      throw DataError("blend weight " + std::to_string(d) + " is " + std::to_string(weights[d]) +
                      "; weights must be finite and non-negative");
    }
  }
  BlendIndex b;
  b.dataset_index = Buffer<int16_t>(static_cast<size_t>(size));
  b.dataset_sample_index = Buffer<int64_t>(static_cast<size_t>(size));
  b.taken.assign(static_cast<size_t>(num_datasets), 0);
  int64_t* taken = b.taken.data();
  for (int64_t i = 0; i < size; ++i) {
    const double s = std::max(static_cast<double>(i), 1.0);
    int64_t best = 0;
    double best_error = weights[0] * s - static_cast<double>(taken[0]);
    for (int64_t d = 1; d < num_datasets; ++d) {
      const double error = weights[d] * s - static_cast<double>(taken[d]);
      if (error > best_error) {
        best_error = error;
        best = d;
      }
    }
    b.dataset_index[static_cast<size_t>(i)] = static_cast<int16_t>(best);
    b.dataset_sample_index[static_cast<size_t>(i)] = taken[best];
    ++taken[best];
  }
  return b;
}

}  // namespace llmpre
