// The grouped expert MLP on the GPU, forward and backward, on raw device pointers and a stream:
// every expert's SwiGLU MLP over the rows routed to it, in a fixed number of launches whatever
// the routing (the per-expert row counts are read on the device: no host synchronisation).
// The same contract as the CPU kernel (cpp/kernels/grouped_mlp) and the Paddle op
// llmpre_grouped_mlp, in bfloat16 (the grouped GEMMs are CUTLASS's bf16 grouped kernel,
// cuda/grouped_gemm; fp32 accumulation, every stored intermediate rounded once to bf16).
//
// forward  (row r reads x[index[r]], or x[r] without an index):
//   a    = gather_rows(x, index)                 [rows, hidden]   (cuda/moe_rows)
//   gate = a @ WGate[e], up = a @ WUp[e]          [rows, inter]    rows offsets[e]..offsets[e+1]
//   out  = swiglu(gate, up) @ WDown[e]            [rows, hidden]   (cuda/swiglu); rows past offsets[E] = 0
// backward (gate and up are the forward's; a and h = swiglu(gate, up) are recomputed):
//   dWDown[e] = h_e^T dout_e;  dh = dout @ WDown[e]^T;  dgate, dup = swiglu_backward(gate, up, dh)
//   dWGate[e] = a_e^T dgate_e;  dWUp[e] = a_e^T dup_e;  da = dgate @ WGate[e]^T + dup @ WUp[e]^T
//   dx[t] = the sum of da over t's rows in the order perm lists them (cuda/moe_rows; no atomics)
//
// Weights and their gradients come as device arrays of per-expert pointers (the experts' own
// parameters, never stacked): WGate, WUp [hidden, inter], WDown [inter, hidden], row-major.
// hidden and inter must be multiples of 8, every buffer 16-byte aligned.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace llmpre {
namespace cuda {

struct GroupedMlpParams {
  int64_t tokens = 0;                  // rows of x
  int64_t rows = 0;                    // rows routed (= tokens without an index)
  int64_t hidden = 0;
  int64_t inter = 0;
  int64_t experts = 0;
  const void* x = nullptr;             // [tokens, hidden] bf16
  const int64_t* index = nullptr;      // [rows] in [0, tokens), or null
  const int64_t* offsets = nullptr;    // [experts + 1], non-decreasing, offsets[experts] <= rows
  const void* const* w_gate = nullptr; // device arrays of `experts` pointers
  const void* const* w_up = nullptr;
  const void* const* w_down = nullptr;
  void* out = nullptr;                 // forward: [rows, hidden]
  void* gate = nullptr;                // forward writes, backward reads: [rows, inter]
  void* up = nullptr;                  // forward writes, backward reads: [rows, inter]
  const void* dout = nullptr;          // backward: [rows, hidden]
  void* dx = nullptr;                  // backward: [tokens, hidden]
  void* const* dw_gate = nullptr;      // backward: device arrays of `experts` pointers
  void* const* dw_up = nullptr;
  void* const* dw_down = nullptr;
  const int64_t* index_sorted = nullptr;  // backward with an index: index sorted (stable)
  const int64_t* perm = nullptr;          // backward with an index: the sort's permutation
  void* workspace = nullptr;           // grouped_mlp_workspace_bytes(p, backward)
  size_t workspace_bytes = 0;
};

// Bytes of device scratch for these sizes (the gathered rows, intermediates, GEMM setup arrays).
size_t grouped_mlp_workspace_bytes(const GroupedMlpParams& p, bool backward);

// Throw std::invalid_argument (file:line and the fix) for bad sizes, alignment or null
// buffers, std::runtime_error for CUDA/CUTLASS errors. Asynchronous on `stream`.
void grouped_mlp_forward(const GroupedMlpParams& p, cudaStream_t stream);
void grouped_mlp_backward(const GroupedMlpParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
