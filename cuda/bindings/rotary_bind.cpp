// llmpre._cuda: rotary embedding launcher on device pointers passed as ints.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings/registry.h"
#include "rotary/rotary_cuda.h"

namespace py = pybind11;

LLMPRE_CUDA_BINDINGS(rotary, m) {
  m.def(
      "rotary_apply",
      [](uintptr_t q, uintptr_t q_out, uintptr_t k, uintptr_t k_out, uintptr_t cos, uintptr_t sin,
         uintptr_t position_ids, int64_t batch, int64_t seq, int64_t heads_q, int64_t heads_k, int64_t head_dim,
         int64_t rot_dim, int64_t table_rows, int64_t ids_batch, bool interleaved, bool inverse,
         const std::string& dtype, uintptr_t stream) {
        llmpre::cuda::RotaryParams p;
        p.batch = batch;
        p.seq = seq;
        p.heads_q = heads_q;
        p.heads_k = heads_k;
        p.head_dim = head_dim;
        p.rot_dim = rot_dim;
        p.table_rows = table_rows;
        p.ids_batch = ids_batch;
        p.interleaved = interleaved;
        p.inverse = inverse;
        p.dtype = llmpre::cuda::parse_dtype(dtype);
        p.q = reinterpret_cast<const void*>(q);
        p.q_out = reinterpret_cast<void*>(q_out);
        p.k = reinterpret_cast<const void*>(k);
        p.k_out = reinterpret_cast<void*>(k_out);
        p.cos = reinterpret_cast<const float*>(cos);
        p.sin = reinterpret_cast<const float*>(sin);
        p.position_ids = reinterpret_cast<const int64_t*>(position_ids);
        llmpre::cuda::rotary_apply(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("q"), py::arg("q_out"), py::arg("k"), py::arg("k_out"), py::arg("cos"), py::arg("sin"),
      py::arg("position_ids"), py::arg("batch"), py::arg("seq"), py::arg("heads_q"), py::arg("heads_k"),
      py::arg("head_dim"), py::arg("rot_dim"), py::arg("table_rows"), py::arg("ids_batch"),
      py::arg("interleaved"), py::arg("inverse"), py::arg("dtype"), py::arg("stream") = 0,
      "rotate q [batch, seq, heads_q, head_dim] and k (heads_k > 0; pass 0 pointers and heads_k=0 for "
      "none) by the fp32 cos/sin tables [table_rows, rot_dim/2]; position_ids int64 [ids_batch, seq] or 0; "
      "inverse=True is the backward");
}
