// The GPT sample index, as PaddleNLP's causal_dataset.py defines it.
//
// For one split (a contiguous range of items) and a requested number of
// samples of seq_length+1 tokens:
//   epochs        smallest E with (E*tokens_per_epoch - 1) / seq_length >= num_samples
//   separate      E > 1 and the last epoch contributes < int(0.8 * per_epoch) samples
//   doc_idx       the split's items tiled E times and shuffled (the last epoch
//                 separately when `separate`), one RandomState(seed) per split
//   sample_idx    [N+1, 2] rows (position in doc_idx, token offset); consecutive
//                 samples share one boundary token
//   shuffle_idx   a permutation of [0, N) (first part and tail shuffled apart
//                 when `separate`), drawn from the same RandomState after doc_idx
// Sample i is the tokens from sample_idx[shuffle_idx[i]] through
// sample_idx[shuffle_idx[i] + 1], inclusive.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "llmpre/buffer.h"
#include "llmpre/corpus.h"

namespace llmpre {

// Item boundaries [0, a, b, size] of train/valid/test for a split string such
// as "949,50,1" (also "/"-separated or a single number), with Python's
// round-half-to-even, exactly as get_train_valid_test_split_.
std::array<int64_t, 4> split_ranges(const std::string& split, int64_t size);

struct GptIndexPlan {
  int64_t tokens_per_epoch = 0;
  int64_t num_epochs = 0;
  bool separate_last_epoch = false;
  int64_t samples_from_epochs_minus_one = -1;  // -1 when num_epochs == 1
  int64_t total_samples = 0;                   // N = len(dataset)
};

GptIndexPlan plan_gpt_index(int64_t tokens_per_epoch, int64_t seq_length, int64_t num_samples);

// Tokens in items [begin, end).
int64_t count_tokens(const CorpusView& corpus, int64_t begin, int64_t end);

struct GptIndex {
  GptIndexPlan plan;
  Buffer<int32_t> doc_idx;
  bool sample_idx_int64 = false;  // int32 unless a doc_idx position would overflow it
  Buffer<int32_t> sample_idx32;   // flattened [N+1, 2]
  Buffer<int64_t> sample_idx64;
  bool shuffle_idx_int64 = false;  // uint32 unless N >= 2**32 - 2, like numpy's path
  Buffer<uint32_t> shuffle_idx32;
  Buffer<int64_t> shuffle_idx64;
  // Wall seconds of each phase, for benchmarks: "draws+shuffle_idx" (the
  // generator thread), "doc_idx" (fill + swaps), "sample_idx".
  std::vector<std::pair<std::string, double>> timings;
};

// The whole index in C++. `threads` (0: all cores, at most 8) only changes the
// speed: the result is the same for any value. With two or more threads one
// thread draws the random numbers (doc_idx, then shuffle_idx, which it also
// shuffles) while another swaps doc_idx entries; sample_idx is then filled in
// parallel from prefix sums of the shuffled document sizes.
GptIndex build_gpt_index(const CorpusView& corpus, int64_t begin, int64_t end,
                         int64_t num_samples, int64_t seq_length, uint32_t seed,
                         int threads = 0);

// Read-only typed view of an index array (numpy arrays may come from the
// cache with any of the dtypes PaddleNLP writes).
struct IndexArray {
  enum Kind { kInt32, kUInt32, kInt64 };
  const void* data = nullptr;
  Kind kind = kInt64;
  int64_t length = 0;
  int64_t get(int64_t i) const {
    switch (kind) {
      case kInt32: return static_cast<const int32_t*>(data)[i];
      case kUInt32: return static_cast<const uint32_t*>(data)[i];
      default: return static_cast<const int64_t*>(data)[i];
    }
  }
};

// Writes samples `indices[0..n)` (dataset positions) as int64 rows of
// seq_length+1 tokens into out[n, seq_length+1]. Checks every index.
void gather_samples(const CorpusView& corpus, const IndexArray& doc_idx,
                    const IndexArray& sample_idx /* flattened [N+1, 2] */,
                    const IndexArray& shuffle_idx, const int64_t* indices, int64_t n,
                    int64_t seq_length, int64_t* out);

}  // namespace llmpre
