// llmpre._cuda: the grouped bf16 GEMM launchers on device pointers passed as ints.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/registry.h"
#include "grouped_gemm/grouped_gemm_cuda.h"

namespace py = pybind11;

LLMPRE_CUDA_BINDINGS(grouped_gemm, m) {
  m.def(
      "grouped_gemm_workspace_bytes", [](int64_t experts) { return llmpre::cuda::grouped_gemm_workspace_bytes(experts); },
      py::arg("experts"), "bytes of device scratch grouped_gemm_bf16 needs for `experts` groups");
  m.def(
      "grouped_gemm_bf16",
      [](uintptr_t a, uintptr_t b_pointers, uintptr_t c, uintptr_t offsets, uintptr_t workspace,
         size_t workspace_bytes, int64_t rows, int64_t n, int64_t k, int64_t experts, bool b_transposed,
         bool accumulate, uintptr_t stream) {
        llmpre::cuda::GroupedGemmParams p;
        p.rows = rows;
        p.n = n;
        p.k = k;
        p.experts = experts;
        p.a = reinterpret_cast<const void*>(a);
        p.b = reinterpret_cast<const void* const*>(b_pointers);
        p.c = reinterpret_cast<void*>(c);
        p.offsets = reinterpret_cast<const int64_t*>(offsets);
        p.workspace = reinterpret_cast<void*>(workspace);
        p.workspace_bytes = workspace_bytes;
        p.b_transposed = b_transposed;
        p.accumulate = accumulate;
        llmpre::cuda::grouped_gemm_bf16(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("a"), py::arg("b_pointers"), py::arg("c"), py::arg("offsets"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("rows"), py::arg("n"), py::arg("k"), py::arg("experts"),
      py::arg("b_transposed") = false, py::arg("accumulate") = false, py::arg("stream") = 0,
      "c[r] = a[r] @ b[e] for rows offsets[e]..offsets[e+1] (bf16, fp32 accumulation), rows past "
      "offsets[experts] = 0; b_pointers: a device array of `experts` pointers to [k, n] matrices "
      "([n, k] read as their transpose with b_transposed); accumulate: c += ... (the tail rows kept)");
  m.def(
      "grouped_gemm_weight_grad_bf16",
      [](uintptr_t a, uintptr_t b, uintptr_t c_pointers, uintptr_t offsets, uintptr_t workspace,
         size_t workspace_bytes, int64_t rows, int64_t m_, int64_t n, int64_t experts, uintptr_t stream) {
        llmpre::cuda::GroupedWeightGradParams p;
        p.rows = rows;
        p.m = m_;
        p.n = n;
        p.experts = experts;
        p.a = reinterpret_cast<const void*>(a);
        p.b = reinterpret_cast<const void*>(b);
        p.c = reinterpret_cast<void* const*>(c_pointers);
        p.offsets = reinterpret_cast<const int64_t*>(offsets);
        p.workspace = reinterpret_cast<void*>(workspace);
        p.workspace_bytes = workspace_bytes;
        llmpre::cuda::grouped_gemm_weight_grad_bf16(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("a"), py::arg("b"), py::arg("c_pointers"), py::arg("offsets"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("rows"), py::arg("m"), py::arg("n"), py::arg("experts"),
      py::arg("stream") = 0,
      "c[e] = a[rows of e]^T @ b[rows of e] ([m, n] bf16, fp32 accumulation; 0 for an expert without rows); "
      "a [rows, m], b [rows, n]; c_pointers: a device array of `experts` pointers to [m, n] matrices");
}
