// Flash attention forward (FlashAttention-2 scheme on mma.sync).
//
// One block = BM query rows of one (batch, head); NW warps, each owning
// MW = BM / (16 NW) m16 tiles of rows, so the whole softmax of a row lives in
// the 4 lanes of one quad and never crosses warps. The block walks its
// visible key tiles from the last to the first (the masked diagonal and
// sequence tail come first) keeping O, the running row max m and the running
// row sum l in registers (online softmax in the log2 domain: s2 = s * scale *
// log2(e)). Loads overlap compute with cp.async: V(n) is fetched while
// S = Q K(n)^T runs, K(n-1) while O += P V(n) runs.
//
// Writes out = O / l and lse = (m + log2 l) * ln 2; a row that sees no key
// gets out = 0, lse = -inf.
#pragma once

#include "flash_attention/tile.cuh"

namespace llmpre {
namespace cuda {
namespace fa {

template <class T, int D, bool Causal>
FA_GLOBAL void FA_LAUNCH_BOUNDS(FwdCfg<D>::NW * 32, 1) flash_fwd_kernel(const FaArgs a) {
  using Cfg = FwdCfg<D>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, NW = Cfg::NW, NT = NW * 32;
  constexpr int MW = BM / (16 * NW), LD = D + 8, NBN = BN / 8, NBD = D / 8;
  static_assert(BM % (16 * NW) == 0 && BN % 16 == 0 && D % 16 == 0, "tile shapes");

  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem_base());
  uint16_t* sK = sQ + BM * LD;
  uint16_t* sV = sK + BN * LD;

  const int tid = thread_idx(), lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int m_block = grid_x() - 1 - block_x();  // longest (causal) blocks first
  const int h = block_y(), b = block_z(), hk = h / a.group;
  const int m0 = m_block * BM;
  const int off = a.off;
  const int64_t q_stride = int64_t(a.heads) * D, k_stride = int64_t(a.kv_heads) * D;
  const uint16_t* gQ = a.q + (int64_t(b) * a.seq_q + m0) * q_stride + int64_t(h) * D;
  const uint16_t* gK = a.k + int64_t(b) * a.seq_k * k_stride + int64_t(hk) * D;
  const uint16_t* gV = a.v + int64_t(b) * a.seq_k * k_stride + int64_t(hk) * D;

  int key_begin, key_end;
  key_range<Causal>(m0, BM, off, a.seq_k, a.window, key_begin, key_end);
  const int tile_begin = key_begin / BN;
  const int tile_end = key_end > key_begin ? (key_end + BN - 1) / BN : tile_begin;

  load_tile_async<BM, D, NT>(sQ, gQ, q_stride, a.seq_q - m0, a.q, tid);
  cp_async_commit();
  if (tile_end > tile_begin) {
    const int n0 = (tile_end - 1) * BN;
    load_tile_async<BN, D, NT>(sK, gK + n0 * k_stride, k_stride, a.seq_k - n0, a.k, tid);
    cp_async_commit();
  }

  float acc_o[MW][NBD][4];
  zero(acc_o);
  float row_max[MW][2], row_sum[MW][2];
#pragma unroll
  for (int mt = 0; mt < MW; ++mt) {
    row_max[mt][0] = row_max[mt][1] = -kInf;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }
  const bool has_alibi = a.alibi != nullptr;
  const float slope2 = has_alibi ? ld_f32(a.alibi + h) * kLog2e : 0.f;
  const int warp_row0 = warp * MW * 16;

  for (int n = tile_end - 1; n >= tile_begin; --n) {
    const int n0 = n * BN;
    cp_async_wait<0>();  // Q and K(n) have landed
    sync_threads();      // ... for every thread; and nobody reads V(n+1) any more
    load_tile_async<BN, D, NT>(sV, gV + n0 * k_stride, k_stride, a.seq_k - n0, a.v, tid);
    cp_async_commit();

    float acc_s[MW][NBN][4];
    zero(acc_s);
    gemm_ss<T, MW, NBN, D / 16, LD, LD>(acc_s, sQ + warp_row0 * LD, sK, lane);

    const bool masked = tile_needs_mask<Causal>(m0, BM, n0, BN, off, a.seq_k, a.window);
#pragma unroll
    for (int mt = 0; mt < MW; ++mt)
#pragma unroll
      for (int nb = 0; nb < NBN; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int pos = m0 + warp_row0 + mt * 16 + g + (e >> 1) * 8 + off;
          const int j = n0 + nb * 8 + 2 * t + (e & 1);
          float s = acc_s[mt][nb][e] * a.scale_log2;
          if (has_alibi) s += slope2 * float(j - pos);
          if (masked && !visible<Causal>(j, pos, a.seq_k, a.window)) s = -kInf;
          acc_s[mt][nb][e] = s;
        }

    // Online softmax; each row's 8 * NBN values sit in one quad (lanes 4g..4g+3).
#pragma unroll
    for (int mt = 0; mt < MW; ++mt)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        float mx = -kInf;
#pragma unroll
        for (int nb = 0; nb < NBN; ++nb) {
          mx = fmaxf(mx, acc_s[mt][nb][2 * hr]);
          mx = fmaxf(mx, acc_s[mt][nb][2 * hr + 1]);
        }
        mx = fmaxf(mx, shfl_xor(mx, 1));
        mx = fmaxf(mx, shfl_xor(mx, 2));
        const float m_new = fmaxf(row_max[mt][hr], mx);
        const float m_use = m_new == -kInf ? 0.f : m_new;  // all masked so far: keep p = 0, no NaN
        const float corr = exp2_approx(row_max[mt][hr] - m_use);
        row_max[mt][hr] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < NBN; ++nb)
#pragma unroll
          for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
            const float p = exp2_approx(acc_s[mt][nb][e] - m_use);
            acc_s[mt][nb][e] = p;
            sum += p;
          }
        row_sum[mt][hr] = row_sum[mt][hr] * corr + sum;
#pragma unroll
        for (int nd = 0; nd < NBD; ++nd) {
          acc_o[mt][nd][2 * hr] *= corr;
          acc_o[mt][nd][2 * hr + 1] *= corr;
        }
      }

    cp_async_wait<0>();  // V(n) has landed
    sync_threads();      // ... and every warp is done with K(n)
    if (n > tile_begin) {
      const int np0 = n0 - BN;
      load_tile_async<BN, D, NT>(sK, gK + np0 * k_stride, k_stride, a.seq_k - np0, a.k, tid);
      cp_async_commit();
    }
    gemm_rs<T, MW, NBD, BN / 16, LD>(acc_o, acc_s, sV, lane);
  }

  // Epilogue: normalise, write lse, stage O through sQ for 16-byte stores.
  cp_async_wait<0>();  // with no key tile the Q copy may still be in flight
  sync_threads();
  float* lse_row = a.lse + (int64_t(b) * a.heads + h) * a.seq_q;
#pragma unroll
  for (int mt = 0; mt < MW; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float l = row_sum[mt][hr];
      l += shfl_xor(l, 1);
      l += shfl_xor(l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int r = warp_row0 + mt * 16 + g + hr * 8;
      if (t == 0 && m0 + r < a.seq_q) {
        st_f32(lse_row + m0 + r, l > 0.f ? (row_max[mt][hr] + log2f(l)) * kLn2 : -kInf);
      }
#pragma unroll
      for (int nd = 0; nd < NBD; ++nd) {
        st_u32(sQ + r * LD + nd * 8 + 2 * t,
               pack2<T>(acc_o[mt][nd][2 * hr] * inv, acc_o[mt][nd][2 * hr + 1] * inv));
      }
    }
  sync_threads();
  store_tile<BM, D, NT>(a.o + (int64_t(b) * a.seq_q + m0) * q_stride + int64_t(h) * D, q_stride,
                        a.seq_q - m0, sQ, tid);
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
