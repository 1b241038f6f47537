// Rotary launcher: checks the arguments, then hands the call to the per-dtype
// launch template of rotary_kernels.cuh (instantiated in rotary_<dtype>.cu).
#include <climits>

#include "common/rowwise.cuh"
#include "rotary/rotary_cuda.h"

namespace llmpre {
namespace cuda {
namespace rotary {
template <typename T>
void apply(const RotaryParams& p, cudaStream_t stream);  // rotary_kernels.cuh
}  // namespace rotary

void rotary_apply(const RotaryParams& p, cudaStream_t stream) {
  constexpr const char* fn = "rotary_apply";
  LLMPRE_REQUIRE(p.batch >= 0 && p.seq >= 0, fn, ": batch and seq must be >= 0, got batch=", p.batch,
                 ", seq=", p.seq);
  LLMPRE_REQUIRE(p.heads_q >= 1 && p.heads_k >= 0 && p.heads_q + p.heads_k <= INT_MAX / 2, fn,
                 ": heads_q must be >= 1 and heads_k >= 0 (0: no k), got heads_q=", p.heads_q,
                 ", heads_k=", p.heads_k);
  LLMPRE_REQUIRE(p.head_dim >= 2 && p.head_dim <= 65536, fn, ": head_dim must be in [2, 65536], got ",
                 p.head_dim);
  LLMPRE_REQUIRE(p.rot_dim >= 2 && p.rot_dim % 2 == 0 && p.rot_dim <= p.head_dim, fn,
                 ": rot_dim (2 x the tables' width) must be even and in [2, head_dim=", p.head_dim,
                 "], got ", p.rot_dim);
  LLMPRE_REQUIRE(p.table_rows >= 1, fn, ": the cos/sin tables need at least one row, got table_rows=",
                 p.table_rows);
  LLMPRE_REQUIRE(p.ids_batch == 0 || p.ids_batch == 1 || p.ids_batch == p.batch, fn,
                 ": position_ids must have 1 or batch=", p.batch, " rows, got ids_batch=", p.ids_batch);
  LLMPRE_REQUIRE((p.ids_batch == 0) == (p.position_ids == nullptr), fn,
                 ": pass position_ids together with ids_batch >= 1, or neither (got ids_batch=", p.ids_batch,
                 ", position_ids=", static_cast<const void*>(p.position_ids), ")");
  LLMPRE_REQUIRE(p.position_ids != nullptr || p.seq <= p.table_rows, fn, ": without position_ids positions run to seq-1=",
                 p.seq - 1, " but the tables have ", p.table_rows, " rows; pass longer tables or position_ids");
  if (p.batch == 0 || p.seq == 0) return;
  LLMPRE_REQUIRE(p.q && p.q_out && p.cos && p.sin, fn, ": q, q_out, cos and sin must be device buffers (got q=",
                 p.q, ", q_out=", p.q_out, ", cos=", static_cast<const void*>(p.cos),
                 ", sin=", static_cast<const void*>(p.sin), ")");
  LLMPRE_REQUIRE(p.heads_k == 0 || (p.k && p.k_out), fn, ": heads_k=", p.heads_k,
                 " needs k and k_out device buffers (or heads_k=0 to rotate q only)");
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, rotary::apply<T>(p, stream));
}

}  // namespace cuda
}  // namespace llmpre
