// Rotary embedding device code and its per-dtype launch template
// (instantiated in rotary_{fp32,fp16,bf16}.cu; rotary.cu checks and dispatches).
//
// Work item = (token, unit, group of kHeads heads). A unit is the slice of a
// head one thread handles: a rotate_half unit is kN features of the first
// half plus their kN partners r/2 later (two 16-byte packs), an interleaved
// unit is kN adjacent features (kN/2 pairs, one pack), a copy unit is kN
// pass-through features past rot_dim. A thread loads its unit's cos/sin once
// and applies them to kHeads heads with all the heads' loads in flight before
// any math; consecutive threads take consecutive units of the same heads, so
// every warp access is contiguous. One item index division per kHeads heads.
#pragma once

#include <algorithm>
#include <climits>

#include "common/rowwise.cuh"
#include "rotary/rotary_cuda.h"

namespace llmpre {
namespace cuda {
namespace rotary {

constexpr int kCta = 256;
constexpr int kHeads = 4;  // heads per work item (loads in flight per thread)

template <typename T>
struct Args {
  const T* q;
  T* qo;
  const T* k;
  T* ko;
  const float* cos;
  const float* sin;
  const int64_t* ids;
  int64_t tokens;
  int64_t seq;
  int64_t table_rows;
  int ids_shared;  // position_ids has one row for the whole batch
  int hq, hk, head_dim, half_r;
  int rot_units, units, head_groups, items;  // per token: items = units * head_groups
  int threads_per_token, tokens_per_block;
  float sign;  // +1 forward, -1 inverse
};

template <typename T>
__device__ __forceinline__ const T* head_in(const Args<T>& a, int64_t token, int h) {
  return h < a.hq ? a.q + (token * a.hq + h) * a.head_dim : a.k + (token * a.hk + (h - a.hq)) * a.head_dim;
}
template <typename T>
__device__ __forceinline__ T* head_out(const Args<T>& a, int64_t token, int h) {
  return h < a.hq ? a.qo + (token * a.hq + h) * a.head_dim : a.ko + (token * a.hk + (h - a.hq)) * a.head_dim;
}

// kN features per unit; kVector: one access per pack (aligned path) or per element.
template <typename T, int kN, bool kVector, bool kInterleaved>
__global__ void __launch_bounds__(kCta) rotary_kernel(const Args<T> a) {
  constexpr int kTab = kInterleaved ? kN / 2 : kN;  // table entries per unit
  constexpr int kCopyN = kVector ? kN : 1;          // features per copy unit
  const int tl = threadIdx.x / a.threads_per_token;
  const int v0 = threadIdx.x - tl * a.threads_per_token;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * a.tokens_per_block + tl;
  if (tl >= a.tokens_per_block || token >= a.tokens) return;
  const int64_t b = token / a.seq;
  const int64_t s = token - b * a.seq;
  const int64_t pos = a.ids ? a.ids[(a.ids_shared ? 0 : b) * a.seq + s] : s;
  const bool bad = pos < 0 || pos >= a.table_rows;
  const int heads = a.hq + a.hk;

  for (int v = v0; v < a.items; v += a.threads_per_token) {
    const int hg = v / a.units;
    const int u = v - hg * a.units;
    const int h0 = hg * kHeads;
    if (u < a.rot_units) {
      // First feature of the unit within the head, and its table column.
      const int j = u * kN;
      const int tcol = kInterleaved ? j / 2 : j;
      float c[kTab], sn[kTab];
      if (!bad) {
        load_f32s<kTab, kVector>(a.cos + pos * a.half_r + tcol, c);
        load_f32s<kTab, kVector>(a.sin + pos * a.half_r + tcol, sn);
#pragma unroll
        for (int i = 0; i < kTab; ++i) sn[i] *= a.sign;
      } else {
#pragma unroll
        for (int i = 0; i < kTab; ++i) c[i] = sn[i] = __int_as_float(0x7fc00000);  // NaN
      }
      Pack<T, kN> pa[kHeads], pb[kHeads];
#pragma unroll
      for (int hh = 0; hh < kHeads; ++hh) {
        const int h = h0 + hh;
        if (h < heads) {
          const T* src = head_in(a, token, h);
          pa[hh].template load<kVector>(src + j);
          if constexpr (!kInterleaved) pb[hh].template load<kVector>(src + j + a.half_r);
        }
      }
#pragma unroll
      for (int hh = 0; hh < kHeads; ++hh) {
        const int h = h0 + hh;
        if (h >= heads) continue;
        T* dst = head_out(a, token, h);
        if constexpr (kInterleaved) {
          float f[kN];
          pa[hh].unpack(f);
#pragma unroll
          for (int i = 0; i < kN / 2; ++i) {
            const float x0 = f[2 * i], x1 = f[2 * i + 1];
            f[2 * i] = fmaf(x0, c[i], -(x1 * sn[i]));
            f[2 * i + 1] = fmaf(x1, c[i], x0 * sn[i]);
          }
          Pack<T, kN> o;
          o.pack(f);
          o.template store<kVector>(dst + j);
        } else {
          float fa[kN], fb[kN], oa[kN], ob[kN];
          pa[hh].unpack(fa);
          pb[hh].unpack(fb);
#pragma unroll
          for (int i = 0; i < kN; ++i) {
            oa[i] = fmaf(fa[i], c[i], -(fb[i] * sn[i]));
            ob[i] = fmaf(fb[i], c[i], fa[i] * sn[i]);
          }
          Pack<T, kN> o;
          o.pack(oa);
          o.template store<kVector>(dst + j);
          o.pack(ob);
          o.template store<kVector>(dst + j + a.half_r);
        }
      }
    } else {
      // Pass-through features; nothing to move for a tensor rotated in place.
      const int j = 2 * a.half_r + (u - a.rot_units) * kCopyN;
      Pack<T, kCopyN> pc[kHeads];
#pragma unroll
      for (int hh = 0; hh < kHeads; ++hh) {
        const int h = h0 + hh;
        const bool in_place = h < a.hq ? a.qo == a.q : a.ko == a.k;
        if (h < heads && !in_place) pc[hh].template load<kVector>(head_in(a, token, h) + j);
      }
#pragma unroll
      for (int hh = 0; hh < kHeads; ++hh) {
        const int h = h0 + hh;
        const bool in_place = h < a.hq ? a.qo == a.q : a.ko == a.k;
        if (h < heads && !in_place) pc[hh].template store<kVector>(head_out(a, token, h) + j);
      }
    }
  }
}

// The launch for one storage type.
template <typename T>
void apply(const RotaryParams& p, cudaStream_t stream) {
  constexpr int kV = vec16<T>();
  const int half_r = static_cast<int>(p.rot_dim / 2);
  const bool kv = p.heads_k > 0;
  bool vec = p.head_dim % kV == 0 && (p.interleaved ? p.rot_dim % kV == 0 : half_r % kV == 0) &&
             aligned16(p.q) && aligned16(p.q_out) && aligned16(p.cos) && aligned16(p.sin);
  if (kv) vec = vec && aligned16(p.k) && aligned16(p.k_out);
  const int n = vec ? kV : (p.interleaved ? 2 : 1);  // features per rotation unit
  const int copy_n = vec ? kV : 1;                   // features per copy unit

  Args<T> a;
  a.q = static_cast<const T*>(p.q);
  a.qo = static_cast<T*>(p.q_out);
  a.k = static_cast<const T*>(p.k);
  a.ko = static_cast<T*>(p.k_out);
  a.cos = p.cos;
  a.sin = p.sin;
  a.ids = p.position_ids;
  a.tokens = p.batch * p.seq;
  a.seq = p.seq;
  a.table_rows = p.table_rows;
  a.ids_shared = p.ids_batch == 1;
  a.hq = static_cast<int>(p.heads_q);
  a.hk = static_cast<int>(p.heads_k);
  a.head_dim = static_cast<int>(p.head_dim);
  a.half_r = half_r;
  a.rot_units = static_cast<int>(p.interleaved ? p.rot_dim / n : half_r / n);
  a.units = a.rot_units + static_cast<int>((p.head_dim - p.rot_dim) / copy_n);
  a.head_groups = (a.hq + a.hk + kHeads - 1) / kHeads;
  a.items = a.units * a.head_groups;
  a.threads_per_token = std::min(a.items, kCta);
  a.tokens_per_block = kCta / a.threads_per_token;
  a.sign = p.inverse ? -1.0f : 1.0f;
  if (a.tokens == 0) return;

  const int64_t blocks = (a.tokens + a.tokens_per_block - 1) / a.tokens_per_block;
  LLMPRE_REQUIRE(blocks <= INT_MAX, "rotary_apply: ", a.tokens, " tokens need ", blocks,
                 " blocks, more than one launch allows; split the batch");
  const dim3 grid(static_cast<unsigned>(blocks));
  auto kernel = vec ? (p.interleaved ? rotary_kernel<T, kV, true, true> : rotary_kernel<T, kV, true, false>)
                   : (p.interleaved ? rotary_kernel<T, 2, false, true> : rotary_kernel<T, 1, false, false>);
  LLMPRE_LAUNCH(kernel, grid, kCta, 0, stream, a);
  LLMPRE_CUDA_CHECK_LAUNCH();
}

}  // namespace rotary
}  // namespace cuda
}  // namespace llmpre
