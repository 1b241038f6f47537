// llmpre._cuda: the grouped expert MLP launchers on device pointers passed as ints.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/registry.h"
#include "grouped_mlp/grouped_mlp_cuda.h"

namespace py = pybind11;
using llmpre::cuda::GroupedMlpParams;

namespace {
template <class P>
P* ptr(uintptr_t v) { return reinterpret_cast<P*>(v); }

GroupedMlpParams sizes(int64_t tokens, int64_t rows, int64_t hidden, int64_t inter, int64_t experts, uintptr_t x,
                       uintptr_t index, uintptr_t offsets, uintptr_t w_gate, uintptr_t w_up, uintptr_t w_down,
                       uintptr_t gate, uintptr_t up, uintptr_t workspace, size_t workspace_bytes) {
  GroupedMlpParams p;
  p.tokens = tokens;
  p.rows = rows;
  p.hidden = hidden;
  p.inter = inter;
  p.experts = experts;
  p.x = ptr<const void>(x);
  p.index = ptr<const int64_t>(index);
  p.offsets = ptr<const int64_t>(offsets);
  p.w_gate = ptr<const void* const>(w_gate);
  p.w_up = ptr<const void* const>(w_up);
  p.w_down = ptr<const void* const>(w_down);
  p.gate = ptr<void>(gate);
  p.up = ptr<void>(up);
  p.workspace = ptr<void>(workspace);
  p.workspace_bytes = workspace_bytes;
  return p;
}
}  // namespace

LLMPRE_CUDA_BINDINGS(grouped_mlp, m) {
  m.def(
      "grouped_mlp_workspace_bytes",
      [](int64_t tokens, int64_t rows, int64_t hidden, int64_t inter, int64_t experts, bool indexed, bool backward) {
        GroupedMlpParams p = sizes(tokens, rows, hidden, inter, experts, 0, indexed ? 1 : 0, 0, 0, 0, 0, 0, 0, 0, 0);
        return llmpre::cuda::grouped_mlp_workspace_bytes(p, backward);
      },
      py::arg("tokens"), py::arg("rows"), py::arg("hidden"), py::arg("inter"), py::arg("experts"),
      py::arg("indexed"), py::arg("backward"), "bytes of device scratch grouped_mlp_forward/backward need");
  m.def(
      "grouped_mlp_forward",
      [](uintptr_t x, uintptr_t index, uintptr_t offsets, uintptr_t w_gate, uintptr_t w_up, uintptr_t w_down,
         uintptr_t out, uintptr_t gate, uintptr_t up, uintptr_t workspace, size_t workspace_bytes, int64_t tokens,
         int64_t rows, int64_t hidden, int64_t inter, int64_t experts, uintptr_t stream) {
        GroupedMlpParams p = sizes(tokens, rows, hidden, inter, experts, x, index, offsets, w_gate, w_up, w_down, gate,
                                   up, workspace, workspace_bytes);
        p.out = ptr<void>(out);
        llmpre::cuda::grouped_mlp_forward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("x"), py::arg("index"), py::arg("offsets"), py::arg("w_gate"), py::arg("w_up"), py::arg("w_down"),
      py::arg("out"), py::arg("gate"), py::arg("up"), py::arg("workspace"), py::arg("workspace_bytes"),
      py::arg("tokens"), py::arg("rows"), py::arg("hidden"), py::arg("inter"), py::arg("experts"),
      py::arg("stream") = 0,
      "every expert's SwiGLU MLP over its rows (row r = x[index[r]], index 0: x's rows); w_*: device arrays of "
      "per-expert pointers; gate/up: the pre-activations the backward needs");
  m.def(
      "grouped_mlp_backward",
      [](uintptr_t x, uintptr_t index, uintptr_t index_sorted, uintptr_t perm, uintptr_t offsets, uintptr_t w_gate,
         uintptr_t w_up, uintptr_t w_down, uintptr_t gate, uintptr_t up, uintptr_t dout, uintptr_t dx,
         uintptr_t dw_gate, uintptr_t dw_up, uintptr_t dw_down, uintptr_t workspace, size_t workspace_bytes,
         int64_t tokens, int64_t rows, int64_t hidden, int64_t inter, int64_t experts, uintptr_t stream) {
        GroupedMlpParams p = sizes(tokens, rows, hidden, inter, experts, x, index, offsets, w_gate, w_up, w_down, gate,
                                   up, workspace, workspace_bytes);
        p.index_sorted = ptr<const int64_t>(index_sorted);
        p.perm = ptr<const int64_t>(perm);
        p.dout = ptr<const void>(dout);
        p.dx = ptr<void>(dx);
        p.dw_gate = ptr<void* const>(dw_gate);
        p.dw_up = ptr<void* const>(dw_up);
        p.dw_down = ptr<void* const>(dw_down);
        llmpre::cuda::grouped_mlp_backward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("x"), py::arg("index"), py::arg("index_sorted"), py::arg("perm"), py::arg("offsets"), py::arg("w_gate"),
      py::arg("w_up"), py::arg("w_down"), py::arg("gate"), py::arg("up"), py::arg("dout"), py::arg("dx"),
      py::arg("dw_gate"), py::arg("dw_up"), py::arg("dw_down"), py::arg("workspace"), py::arg("workspace_bytes"),
      py::arg("tokens"), py::arg("rows"), py::arg("hidden"), py::arg("inter"), py::arg("experts"),
      py::arg("stream") = 0,
      "dx and every expert's weight gradients (dw_*: device arrays of per-expert pointers); index_sorted/perm: "
      "a stable sort of index (0 without an index)");
}
