// Grouped bf16 GEMM on the GPU for the MoE experts of one layer: rows grouped by
// expert, every expert's product in one launch, no host synchronisation (the
// per-expert row counts are read on the device).
//
//   rows offsets[e]..offsets[e+1] of a:   c[r, :] = a[r, :] @ b[e]       (fp32 accumulation)
//   rows offsets[experts]..rows:          c[r, :] = 0                     (dropped by a capacity limit)
//
//   a       [rows, k] bf16 row-major, the rows sorted by expert
//   b       device array of `experts` pointers, each to a [k, n] bf16 row-major matrix
//   c       [rows, n] bf16 row-major
//   offsets device int64 [experts + 1], offsets[0] = 0, non-decreasing, offsets[experts] <= rows
//
// The GEMM is CUTLASS's grouped kernel (the nvidia-cutlass headers) on the sm_80 tensor-core
// path (mma.sync 16x8x16, 128x128x32 tiles, 4 stages; it also runs on sm_90), with the device
// scheduler (GroupScheduleMode::kDeviceOnly): problem sizes and pointers are written by a small
// setup kernel into `workspace` (grouped_gemm_workspace_bytes), so nothing comes back to the host.
// k and n must be multiples of 8 and every pointer 16-byte aligned (128-bit loads).
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
};

// Bytes of device scratch for `experts` groups (problem sizes, pointer and stride arrays).
size_t grouped_gemm_workspace_bytes(int64_t experts);

// Launches on `stream`; throws std::invalid_argument on bad sizes or alignment and
// std::runtime_error on a CUDA/CUTLASS failure (both name file:line).
void grouped_gemm_bf16(const GroupedGemmParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
