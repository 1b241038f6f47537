// llmpre._cuda: SwiGLU launchers on device pointers passed as ints.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings/registry.h"
#include "swiglu/swiglu_cuda.h"

namespace py = pybind11;
using llmpre::cuda::SwiGluParams;

namespace {
template <class P>
P* ptr(uintptr_t v) { return reinterpret_cast<P*>(v); }
}  // namespace

LLMPRE_CUDA_BINDINGS(swiglu, m) {
  m.def(
      "swiglu_forward",
      [](uintptr_t gate, uintptr_t up, uintptr_t out, int64_t n, const std::string& dtype, uintptr_t stream) {
        SwiGluParams p;
        p.n = n;
        p.dtype = llmpre::cuda::parse_dtype(dtype);
        p.gate = ptr<const void>(gate);
        p.up = ptr<const void>(up);
        p.out = ptr<void>(out);
        llmpre::cuda::swiglu_forward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("gate"), py::arg("up"), py::arg("out"), py::arg("n"), py::arg("dtype"), py::arg("stream") = 0,
      "out = silu(gate) * up over n elements in `dtype`");
  m.def(
      "swiglu_backward",
      [](uintptr_t gate, uintptr_t up, uintptr_t dout, uintptr_t dgate, uintptr_t dup, int64_t n,
         const std::string& dtype, uintptr_t stream) {
        SwiGluParams p;
        p.n = n;
        p.dtype = llmpre::cuda::parse_dtype(dtype);
        p.gate = ptr<const void>(gate);
        p.up = ptr<const void>(up);
        p.dout = ptr<const void>(dout);
        p.dgate = ptr<void>(dgate);
        p.dup = ptr<void>(dup);
        llmpre::cuda::swiglu_backward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("gate"), py::arg("up"), py::arg("dout"), py::arg("dgate"), py::arg("dup"), py::arg("n"),
      py::arg("dtype"), py::arg("stream") = 0, "dgate and dup of swiglu_forward for upstream gradient dout");
}
