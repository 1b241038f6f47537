// llmpre._cuda: the MoE combine launchers on device pointers passed as ints.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings/registry.h"
#include "moe_combine/moe_combine_cuda.h"

namespace py = pybind11;
using llmpre::cuda::MoeCombineParams;

namespace {
template <class P>
P* ptr(uintptr_t v) { return reinterpret_cast<P*>(v); }

MoeCombineParams sizes(int64_t tokens, int64_t slots, int64_t rows, int64_t hidden, const std::string& dtype) {
  MoeCombineParams p;
  p.tokens = tokens;
  p.slots = slots;
  p.rows = rows;
  p.hidden = hidden;
  p.dtype = llmpre::cuda::parse_dtype(dtype);
  return p;
}
}  // namespace

LLMPRE_CUDA_BINDINGS(moe_combine, m) {
  m.def(
      "moe_combine_forward",
      [](uintptr_t y, uintptr_t pos, uintptr_t w, uintptr_t out, int64_t tokens, int64_t slots, int64_t rows,
         int64_t hidden, const std::string& dtype, uintptr_t stream) {
        MoeCombineParams p = sizes(tokens, slots, rows, hidden, dtype);
        p.y = ptr<const void>(y);
        p.pos = ptr<const int64_t>(pos);
        p.w = ptr<const float>(w);
        p.out = ptr<void>(out);
        llmpre::cuda::moe_combine_forward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("y"), py::arg("pos"), py::arg("w"), py::arg("out"), py::arg("tokens"), py::arg("slots"),
      py::arg("rows"), py::arg("hidden"), py::arg("dtype"), py::arg("stream") = 0,
      "out[t] = sum_j w[t, j] * y[pos[t, j]]: y [rows, hidden] and out [tokens, hidden] in `dtype`, "
      "pos [tokens, slots] int64, w fp32");
  m.def(
      "moe_combine_backward",
      [](uintptr_t y, uintptr_t pos, uintptr_t w, uintptr_t dout, uintptr_t dy, uintptr_t dw, int64_t tokens,
         int64_t slots, int64_t rows, int64_t hidden, const std::string& dtype, uintptr_t stream) {
        MoeCombineParams p = sizes(tokens, slots, rows, hidden, dtype);
        p.y = ptr<const void>(y);
        p.pos = ptr<const int64_t>(pos);
        p.w = ptr<const float>(w);
        p.dout = ptr<const void>(dout);
        p.dy = ptr<void>(dy);
        p.dw = ptr<float>(dw);
        llmpre::cuda::moe_combine_backward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("y"), py::arg("pos"), py::arg("w"), py::arg("dout"), py::arg("dy"), py::arg("dw"), py::arg("tokens"),
      py::arg("slots"), py::arg("rows"), py::arg("hidden"), py::arg("dtype"), py::arg("stream") = 0,
      "dy[pos[t, j]] = w[t, j] * dout[t] (other rows 0) and dw[t, j] = <dout[t], y[pos[t, j]]> (fp32)");
}
