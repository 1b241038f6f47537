// The row moves of the grouped expert MLP on the GPU (paddle_ops/cuda/grouped_mlp_cuda.cc),
// on raw device pointers and a stream:
//
//   gather_rows:       dst[r, :] = src[index[r], :]                     r < rows
//   segment_sum_rows:  dst[t, :] = sum_{j = starts[t]}^{starts[t+1]-1} src[perm[j], :]   t < tokens
//   bucket_starts:     starts[t] = the first j with sorted[j] >= t, t <= tokens (sorted: [rows]
//                      non-decreasing ids, e.g. index sorted; starts[tokens] = rows when every id < tokens)
//
// gather_rows packs the tokens' rows in expert order before the grouped GEMMs; segment_sum_rows
// is its backward: each token sums its rows' input gradients in the order perm lists them
// (the row order, as the CPU kernel sums them), in fp32, rounded once. No atomics: the same
// bits on every run. src/dst: row-major [*, width] in `dtype` storage (fp32, fp16 or bf16);
// index [rows], perm [n], starts [tokens + 1]: device int64. An index or perm entry outside
// [0, src rows) gives a NaN row (a device kernel cannot throw; NaN makes it visible) instead
// of reading out of bounds. 16-byte aligned pointers with width % (16 / size) == 0 take the
// vectorised path.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/kernel_args.h"

namespace llmpre {
namespace cuda {

struct MoeRowsParams {
  int64_t rows = 0;        // gather: rows of dst; segment sum: rows of src
  int64_t tokens = 0;      // gather: rows of src; segment sum: rows of dst
  int64_t width = 0;
  DType dtype = DType::kFloat32;
  const void* src = nullptr;
  void* dst = nullptr;
  const int64_t* index = nullptr;   // gather: [rows]
  const int64_t* perm = nullptr;    // segment sum: [starts[tokens]] row ids
  const int64_t* starts = nullptr;  // segment sum: [tokens + 1], non-decreasing, starts[0] = 0
  const int64_t* sorted = nullptr;  // bucket starts: [rows], non-decreasing
  int64_t* starts_out = nullptr;    // bucket starts: [tokens + 1]
};

// Throw std::invalid_argument (file:line and the fix) for bad sizes or null
// buffers, std::runtime_error for CUDA errors. Asynchronous on `stream`.
void gather_rows(const MoeRowsParams& p, cudaStream_t stream);
void segment_sum_rows(const MoeRowsParams& p, cudaStream_t stream);
void bucket_starts(const MoeRowsParams& p, cudaStream_t stream);

// dst[i] = host[i] for i < count: a device array of pointers (the experts' weights for the
// grouped GEMMs) written by kernels whose arguments carry the values, so nothing is staged
// through pageable memory and nothing waits for the stream.
void write_pointers(void** dst, const void* const* host, int64_t count, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
