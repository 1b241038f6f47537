// Grouped bf16 GEMMs on the GPU for the MoE experts of one layer: rows grouped by
// expert, every expert's product in one launch, no host synchronisation (the
// per-expert row counts are read on the device).
//
// grouped_gemm_bf16, the forward and the input gradients:
//   rows offsets[e]..offsets[e+1] of a:   c[r, :] = a[r, :] @ b[e]       (fp32 accumulation)
//                                         c[r, :] = a[r, :] @ b[e]^T     (b_transposed)
//                                         c[r, :] += ...                 (accumulate: c's old value is added
//                                                                          in fp32, rounded once)
//   rows offsets[experts]..rows:          c[r, :] = 0                     (dropped by a capacity limit;
//                                                                          left as they are when accumulating)
//
//   a       [rows, k] bf16 row-major, the rows sorted by expert
//   b       device array of `experts` pointers, each to a [k, n] bf16 row-major matrix
//           ([n, k] when b_transposed: an expert's own weight read as its transpose)
//   c       [rows, n] bf16 row-major
//   offsets device int64 [experts + 1], offsets[0] = 0, non-decreasing, offsets[experts] <= rows
//
// grouped_gemm_weight_grad_bf16, the weight gradients (the group's rows are the sum's K):
//   c[e] = a[rows of e]^T @ b[rows of e]     [m, n], fp32 accumulation; 0 for an expert without rows
//
//   a       [rows, m] bf16 row-major, b [rows, n] bf16 row-major (the same row order and offsets)
//   c       device array of `experts` pointers, each to a [m, n] bf16 row-major matrix
//
// The GEMM is CUTLASS's grouped kernel (the nvidia-cutlass headers) on the sm_80 tensor-core
// path (mma.sync 16x8x16, 128x128x32 tiles, 4 stages; it also runs on sm_90), with the device
// scheduler (GroupScheduleMode::kDeviceOnly): problem sizes and pointers are written by a small
// setup kernel into `workspace` (grouped_gemm_workspace_bytes), so nothing comes back to the host.
// One instantiation per operand layout (row-major b, transposed b, transposed a), each in its own
// file. k, n (and m) must be multiples of 8 and every pointer 16-byte aligned (128-bit loads).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace llmpre {
namespace cuda {

struct GroupedGemmParams {
  int64_t rows = 0;
  int64_t n = 0;
  int64_t k = 0;
  int64_t experts = 0;
  const void* a = nullptr;             // [rows, k] bf16
  const void* const* b = nullptr;      // device array: experts x [k, n] bf16
  void* c = nullptr;                   // [rows, n] bf16
  const int64_t* offsets = nullptr;    // device [experts + 1]
  void* workspace = nullptr;           // device, grouped_gemm_workspace_bytes(experts) bytes
  size_t workspace_bytes = 0;
  bool b_transposed = false;           // b[e] is [n, k]: c = a @ b[e]^T
  bool accumulate = false;             // c += a @ b[e]
};

struct GroupedWeightGradParams {
  int64_t rows = 0;
  int64_t m = 0;
  int64_t n = 0;
  int64_t experts = 0;
  const void* a = nullptr;             // [rows, m] bf16
  const void* b = nullptr;             // [rows, n] bf16
  void* const* c = nullptr;            // device array: experts x [m, n] bf16
  const int64_t* offsets = nullptr;    // device [experts + 1]
  void* workspace = nullptr;           // device, grouped_gemm_workspace_bytes(experts) bytes
  size_t workspace_bytes = 0;
};

// Bytes of device scratch for `experts` groups (problem sizes, pointer and stride arrays).
size_t grouped_gemm_workspace_bytes(int64_t experts);

// Launches on `stream`; throws std::invalid_argument on bad sizes or alignment and
// std::runtime_error on a CUDA/CUTLASS failure (both name file:line).
void grouped_gemm_bf16(const GroupedGemmParams& p, cudaStream_t stream);
void grouped_gemm_weight_grad_bf16(const GroupedWeightGradParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
