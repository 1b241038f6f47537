// llmpre._cuda: RMSNorm launchers on device pointers passed as ints.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings/registry.h"
#include "rms_norm/rms_norm_cuda.h"

namespace py = pybind11;
using llmpre::cuda::RmsNormParams;

namespace {
RmsNormParams sizes(int64_t rows, int64_t hidden, float eps, const std::string& dtype) {
  RmsNormParams p;
  p.rows = rows;
  p.hidden = hidden;
  p.eps = eps;
  p.dtype = llmpre::cuda::parse_dtype(dtype);
  return p;
}
template <class P>
P* ptr(uintptr_t v) { return reinterpret_cast<P*>(v); }
}  // namespace

LLMPRE_CUDA_BINDINGS(rms_norm, m) {
  m.def(
      "rms_norm_forward",
      [](uintptr_t x, uintptr_t weight, uintptr_t y, uintptr_t inv_rms, int64_t rows, int64_t hidden, float eps,
         const std::string& dtype, uintptr_t stream) {
        RmsNormParams p = sizes(rows, hidden, eps, dtype);
        p.x = ptr<const void>(x);
        p.weight = ptr<const void>(weight);
        p.y = ptr<void>(y);
        p.inv_rms = ptr<float>(inv_rms);
        llmpre::cuda::rms_norm_forward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("x"), py::arg("weight"), py::arg("y"), py::arg("inv_rms"), py::arg("rows"), py::arg("hidden"),
      py::arg("eps"), py::arg("dtype"), py::arg("stream") = 0,
      "y = weight * x / rms(x) over rows of `hidden`; x, weight, y in `dtype`, inv_rms [rows] fp32");
  m.def(
      "rms_norm_backward_workspace_bytes",
      [](int64_t rows, int64_t hidden, const std::string& dtype) {
        return llmpre::cuda::rms_norm_backward_workspace_bytes(sizes(rows, hidden, 0.0f, dtype));
      },
      py::arg("rows"), py::arg("hidden"), py::arg("dtype"),
      "bytes of fp32 scratch rms_norm_backward needs on the current device");
  m.def(
      "rms_norm_backward",
      [](uintptr_t x, uintptr_t weight, uintptr_t inv_rms, uintptr_t dy, uintptr_t dx, uintptr_t dweight,
         uintptr_t workspace, size_t workspace_bytes, int64_t rows, int64_t hidden, const std::string& dtype,
         uintptr_t stream) {
        RmsNormParams p = sizes(rows, hidden, 0.0f, dtype);
        p.x = ptr<const void>(x);
        p.weight = ptr<const void>(weight);
        p.inv_rms = ptr<float>(inv_rms);
        p.dy = ptr<const void>(dy);
        p.dx = ptr<void>(dx);
        p.dweight = ptr<void>(dweight);
        p.workspace = ptr<void>(workspace);
        p.workspace_bytes = workspace_bytes;
        llmpre::cuda::rms_norm_backward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("x"), py::arg("weight"), py::arg("inv_rms"), py::arg("dy"), py::arg("dx"), py::arg("dweight"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg("rows"), py::arg("hidden"), py::arg("dtype"),
      py::arg("stream") = 0, "dx and dweight of rms_norm_forward for upstream gradient dy");
}
