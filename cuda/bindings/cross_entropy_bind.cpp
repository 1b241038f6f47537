// llmpre._cuda: fused cross-entropy launchers on device pointers passed as ints.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings/registry.h"
#include "cross_entropy/cross_entropy_cuda.h"

namespace py = pybind11;
using llmpre::cuda::CrossEntropyParams;

namespace {
CrossEntropyParams sizes(int64_t rows, int64_t vocab, int64_t ignore_index, const std::string& dtype) {
  CrossEntropyParams p;
  p.rows = rows;
  p.vocab = vocab;
  p.ignore_index = ignore_index;
  p.dtype = llmpre::cuda::parse_dtype(dtype);
  return p;
}
}  // namespace

LLMPRE_CUDA_BINDINGS(cross_entropy, m) {
  m.def(
      "cross_entropy_forward",
      [](uintptr_t logits, uintptr_t labels, uintptr_t loss, uintptr_t stats, int64_t rows, int64_t vocab,
         int64_t ignore_index, const std::string& dtype, uintptr_t stream) {
        CrossEntropyParams p = sizes(rows, vocab, ignore_index, dtype);
        p.logits = reinterpret_cast<const void*>(logits);
        p.labels = reinterpret_cast<const int64_t*>(labels);
        p.loss = reinterpret_cast<float*>(loss);
        p.stats = reinterpret_cast<float*>(stats);
        llmpre::cuda::cross_entropy_forward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("logits"), py::arg("labels"), py::arg("loss"), py::arg("stats"), py::arg("rows"), py::arg("vocab"),
      py::arg("ignore_index"), py::arg("dtype"), py::arg("stream") = 0,
      "per-row loss [rows] fp32 and stats [rows, 2] fp32 (max, log-sum-exp - max); labels int64");
  m.def(
      "cross_entropy_backward",
      [](uintptr_t logits, uintptr_t labels, uintptr_t stats, uintptr_t dloss, uintptr_t dlogits, int64_t rows,
         int64_t vocab, int64_t ignore_index, const std::string& dtype, uintptr_t stream) {
        CrossEntropyParams p = sizes(rows, vocab, ignore_index, dtype);
        p.logits = reinterpret_cast<const void*>(logits);
        p.labels = reinterpret_cast<const int64_t*>(labels);
        p.stats = reinterpret_cast<float*>(stats);
        p.dloss = reinterpret_cast<const float*>(dloss);
        p.dlogits = reinterpret_cast<void*>(dlogits);
        llmpre::cuda::cross_entropy_backward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("logits"), py::arg("labels"), py::arg("stats"), py::arg("dloss"), py::arg("dlogits"), py::arg("rows"),
      py::arg("vocab"), py::arg("ignore_index"), py::arg("dtype"), py::arg("stream") = 0,
      "dlogits = dloss[r] * (softmax - onehot(label)) from the forward's stats; dloss [rows] fp32");
}
