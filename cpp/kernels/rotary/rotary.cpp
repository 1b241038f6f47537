#include "rotary/rotary.h"

#include <stdexcept>
#include <string>

#include "common/dtype.h"
#include "common/isa.h"
#include "common/parallel.h"

namespace llmpre::kernels {
namespace rotary_impl {
namespace baseline {
#include "rotary/rotary_body.inc"
}  // namespace baseline
LLMPRE_BEGIN_AVX2
namespace avx2 {
#include "rotary/rotary_body.inc"
}  // namespace avx2
LLMPRE_END_AVX2

std::string S(int64_t v) { return std::to_string(v); }

void check(const RotaryParams& p, const void* x, const float* cos, const float* sin,
           const int64_t* ids, const void* out) {
  check_dtype(p.dtype, "rotary");
  if (p.batch < 0 || p.seq < 0 || p.heads < 0 || p.head_dim <= 0)
    throw std::invalid_argument("rotary: bad shape [batch=" + S(p.batch) + ", seq=" + S(p.seq) +
                                ", heads=" + S(p.heads) + ", head_dim=" + S(p.head_dim) + "]");
  if (p.rot_dim < 2 || p.rot_dim % 2 != 0 || p.rot_dim > p.head_dim)
    throw std::invalid_argument("rotary: the rotated dimension (2 x table width) must be even, "
                                ">= 2 and <= head_dim " + S(p.head_dim) + ", got " + S(p.rot_dim));
  if (ids == nullptr && p.seq > p.table_rows)
    throw std::invalid_argument("rotary: cos/sin tables cover " + S(p.table_rows) +
                                " positions but the sequence has " + S(p.seq));
  if (ids != nullptr && p.ids_batch != 1 && p.ids_batch != p.batch)
    throw std::invalid_argument("rotary: position_ids must have 1 or batch=" + S(p.batch) +
                                " rows of seq=" + S(p.seq) + ", got " + S(p.ids_batch) + " rows");
  if (p.batch * p.seq * p.heads == 0) return;
  if (!x || !cos || !sin || !out) throw std::invalid_argument("rotary: a buffer pointer is null");
  if (ids != nullptr) {
    const int64_t n = p.ids_batch * p.seq;
    for (int64_t i = 0; i < n; ++i)
      if (ids[i] < 0 || ids[i] >= p.table_rows)
        throw std::out_of_range("rotary: position_ids[" + S(i / p.seq) + ", " + S(i % p.seq) +
                                "] = " + S(ids[i]) + " is outside the cos/sin tables' " +
                                S(p.table_rows) + " positions");
  }
}

template <class T>
void apply(const RotaryParams& p, const void* x, const float* cos, const float* sin,
           const int64_t* ids, void* out) {
  const bool avx2 = use_avx2();
  const int64_t per_token = p.heads * p.head_dim;
  parallel_for(p.batch * p.seq, grain_for(2 * per_token), [&](int64_t t0, int64_t t1) {
    auto xs = static_cast<const T*>(x);
    auto os = static_cast<T*>(out);
    if (avx2)
      avx2::rotate_tokens(p, xs, cos, sin, ids, os, t0, t1);
    else
      baseline::rotate_tokens(p, xs, cos, sin, ids, os, t0, t1);
  });
}
}  // namespace rotary_impl

void rotary_apply(const RotaryParams& p, const void* x, const float* cos, const float* sin,
                  const int64_t* position_ids, void* out) {
  rotary_impl::check(p, x, cos, sin, position_ids, out);
  if (p.batch * p.seq * p.heads == 0) return;
  if (p.dtype == DType::kFloat32)
    rotary_impl::apply<float>(p, x, cos, sin, position_ids, out);
  else
    rotary_impl::apply<bf16>(p, x, cos, sin, position_ids, out);
}

}  // namespace llmpre::kernels
