// llmpre._cuda: the MoE row gather and per-token segment sum on device pointers passed as ints.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/registry.h"
#include "moe_rows/moe_rows_cuda.h"

namespace py = pybind11;
using llmpre::cuda::MoeRowsParams;

namespace {
template <class P>
P* ptr(uintptr_t v) { return reinterpret_cast<P*>(v); }
}  // namespace

LLMPRE_CUDA_BINDINGS(moe_rows, m) {
  m.def(
      "gather_rows",
      [](uintptr_t src, uintptr_t index, uintptr_t dst, int64_t rows, int64_t tokens, int64_t width,
         const std::string& dtype, uintptr_t stream) {
        MoeRowsParams p;
        p.rows = rows;
        p.tokens = tokens;
        p.width = width;
        p.dtype = llmpre::cuda::parse_dtype(dtype);
        p.src = ptr<const void>(src);
        p.index = ptr<const int64_t>(index);
        p.dst = ptr<void>(dst);
        llmpre::cuda::gather_rows(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("src"), py::arg("index"), py::arg("dst"), py::arg("rows"), py::arg("tokens"), py::arg("width"),
      py::arg("dtype"), py::arg("stream") = 0, "dst[r] = src[index[r]] for r < rows; src has `tokens` rows");
  m.def(
      "segment_sum_rows",
      [](uintptr_t src, uintptr_t perm, uintptr_t starts, uintptr_t dst, int64_t rows, int64_t tokens, int64_t width,
         const std::string& dtype, uintptr_t stream) {
        MoeRowsParams p;
        p.rows = rows;
        p.tokens = tokens;
        p.width = width;
        p.dtype = llmpre::cuda::parse_dtype(dtype);
        p.src = ptr<const void>(src);
        p.perm = ptr<const int64_t>(perm);
        p.starts = ptr<const int64_t>(starts);
        p.dst = ptr<void>(dst);
        llmpre::cuda::segment_sum_rows(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("src"), py::arg("perm"), py::arg("starts"), py::arg("dst"), py::arg("rows"), py::arg("tokens"),
      py::arg("width"), py::arg("dtype"), py::arg("stream") = 0,
      "dst[t] = sum of src[perm[j]] for j in starts[t]..starts[t+1] (fp32, in that order); src has `rows` rows");
  m.def(
      "bucket_starts",
      [](uintptr_t sorted, uintptr_t starts, int64_t rows, int64_t tokens, uintptr_t stream) {
        MoeRowsParams p;
        p.rows = rows;
        p.tokens = tokens;
        p.sorted = ptr<const int64_t>(sorted);
        p.starts_out = ptr<int64_t>(starts);
        llmpre::cuda::bucket_starts(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("sorted"), py::arg("starts"), py::arg("rows"), py::arg("tokens"), py::arg("stream") = 0,
      "starts[t] = first j with sorted[j] >= t for t in 0..tokens (sorted: [rows] non-decreasing int64)");
  m.def(
      "write_pointers",
      [](uintptr_t dst, const std::vector<uintptr_t>& values, uintptr_t stream) {
        std::vector<const void*> host;
        for (uintptr_t v : values) host.push_back(reinterpret_cast<const void*>(v));
        llmpre::cuda::write_pointers(ptr<void*>(dst), host.data(), static_cast<int64_t>(host.size()),
                                     reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("dst"), py::arg("values"), py::arg("stream") = 0,
      "dst[i] = values[i]: a device array of pointers written by kernel arguments");
}
