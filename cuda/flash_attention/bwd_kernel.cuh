// Flash attention backward (FlashAttention-2 scheme on mma.sync).
//
// With P = exp2(s2 - lse2) recomputed tile by tile, dP = dO V^T,
// dS = P * (dP - rowsum(dO * O)):
//   dV = P^T dO,  dK = scale * dS^T Q,  dQ = scale * dS K.
//
// Kernels, in launch order:
//   flash_bwd_prep_kernel   dsum = rowsum(dO * O), lse2 = lse * log2(e) (+inf
//                           for rows that see no key and for padding rows).
//   flash_bwd_dkdv_kernel   key-major: a block owns BN keys of one KV head
//                           (one m16 tile of keys per warp) and walks every
//                           (query head of its GQA group, query block) pair,
//                           keeping dK and dV in registers; so dK/dV are summed
//                           over the group in a fixed order. S^T = K Q^T and
//                           dP^T = V dO^T come out with keys as rows, so P^T
//                           and dS^T feed the dV and dK products straight from
//                           registers. In atomic mode (a.dq_accum set),
//                           dS^T also goes through shared memory and each
//                           block adds its dS K to an fp32 dQ buffer with
//                           atomics (a runtime switch: one kernel per variant
//                           keeps the build time down). With several splits
//                           (few KV heads), a block takes a slice of the
//                           group's heads and writes fp32 partial sums.
//   flash_bwd_dq_kernel     query-major, no atomics (the deterministic mode,
//                           and head_dim 256): recomputes S and dP per key
//                           tile and keeps dQ in registers.
//   flash_bwd_sum_kernel    partial dK/dV sums -> dk, dv (splits > 1), and
//                           fp32 dQ -> dq (atomic mode).
#pragma once

#include "flash_attention/tile.cuh"

namespace llmpre {
namespace cuda {
namespace fa {

// grid (seq_q_pad / 64, heads, batch), 128 threads: 16 rows per warp.
template <class T, int D>
FA_GLOBAL void FA_LAUNCH_BOUNDS(128, 4) flash_bwd_prep_kernel(const FaArgs a) {
  constexpr int kChunks = D / 8;           // lanes per row (16 bytes each)
  constexpr int kRowsPerPass = 32 / kChunks;
  static_assert(32 % kChunks == 0, "head_dim must divide 256");
  const int tid = thread_idx(), lane = tid & 31, warp = tid >> 5;
  const int h = block_y(), b = block_z();
  const int64_t row_stride = int64_t(a.heads) * D;
  const int64_t stat0 = (int64_t(b) * a.heads + h) * a.seq_q_pad;
#pragma unroll 1
  for (int pass = 0; pass < 16 / kRowsPerPass; ++pass) {
    const int r = block_x() * 64 + warp * 16 + pass * kRowsPerPass + lane / kChunks;
    const int c = lane % kChunks;
    float acc = 0.f;
    if (r < a.seq_q) {
      const int64_t o = (int64_t(b) * a.seq_q + r) * row_stride + int64_t(h) * D + c * 8;
      uint32_t x[4], y[4];
      ld16(x, a.dout + o);
      ld16(y, a.o + o);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float x0, x1, y0, y1;
        unpack2<T>(x[i], x0, x1);
        unpack2<T>(y[i], y0, y1);
        acc += x0 * y0 + x1 * y1;
      }
    }
#pragma unroll
    for (int m = kChunks / 2; m >= 1; m /= 2) acc += shfl_xor(acc, m);
    if (c == 0 && r < a.seq_q_pad) {
      const float l = r < a.seq_q ? ld_f32(a.lse + (int64_t(b) * a.heads + h) * a.seq_q + r) : -kInf;
      st_f32(a.dsum + stat0 + r, r < a.seq_q ? acc : 0.f);
      st_f32(a.lse2 + stat0 + r, l == -kInf ? kInf : l * kLog2e);
    }
  }
}

// grid (ceil(seq_k / BN), kv_heads * splits, batch), 32 * NW threads.
template <class T, int D, bool Causal, bool kDk, bool kDv>
FA_GLOBAL void FA_LAUNCH_BOUNDS(BwdCfg<D>::NW * 32, 1) flash_bwd_dkdv_kernel(const FaArgs a) {
  using Cfg = BwdCfg<D>;
  constexpr int BN = Cfg::BN, BM = Cfg::BM, NW = Cfg::NW, NT = NW * 32;
  constexpr int LD = D + 8, LDS = BM + 8, NBQ = BM / 8, NBD = D / 8;
  static_assert(BN == 16 * NW && BM % 16 == 0 && BM <= kRowPad && kRowPad % BM == 0, "tile shapes");
  static_assert(BM / 4 * 2 <= NT, "one thread per 16 bytes of lse2 and dsum");
  static_assert(kDk || kDv, "computes something");
  constexpr bool kCanDq = kDk && D <= 128;  // head_dim 256 takes the dQ kernel

  uint16_t* sK = reinterpret_cast<uint16_t*>(smem_base());
  uint16_t* sV = sK + BN * LD;
  uint16_t* sQ = sV + BN * LD;      // [2][BM][LD]
  uint16_t* sdO = sQ + 2 * BM * LD;  // [2][BM][LD]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BM * LD);  // [2][BM]
  float* sDs = sL + 2 * BM;                                  // [2][BM]
  uint16_t* sdS = reinterpret_cast<uint16_t*>(sDs + 2 * BM);  // [BN][LDS], atomic mode only

  const int tid = thread_idx(), lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n_block = block_x(), b = block_z();
  const int n0 = n_block * BN;
  const int off = a.off;
  const int64_t q_stride = int64_t(a.heads) * D, k_stride = int64_t(a.kv_heads) * D;
  const BwdWalk walk = bwd_walk<Causal>(a, block_y(), n0, BN, BM);
  const int hk = walk.hk, split = walk.split, steps = walk.steps;

  const uint16_t* gK = a.k + (int64_t(b) * a.seq_k + n0) * k_stride + int64_t(hk) * D;
  const uint16_t* gV = a.v + (int64_t(b) * a.seq_k + n0) * k_stride + int64_t(hk) * D;
  load_tile_async<BN, D, NT>(sK, gK, k_stride, a.seq_k - n0, a.k, tid);
  load_tile_async<BN, D, NT>(sV, gV, k_stride, a.seq_k - n0, a.v, tid);
  cp_async_commit();

  // Step s (walk.head(s), rows walk.m0(s)) into buffer buf.
  auto load_step = [&](int s, int buf) {
    const int h = walk.head(s);
    const int m0 = walk.m0(s);
    const int64_t o = (int64_t(b) * a.seq_q + m0) * q_stride + int64_t(h) * D;
    load_tile_async<BM, D, NT>(sQ + buf * BM * LD, a.q + o, q_stride, a.seq_q - m0, a.q, tid);
    load_tile_async<BM, D, NT>(sdO + buf * BM * LD, a.dout + o, q_stride, a.seq_q - m0, a.dout, tid);
    const int64_t stat = (int64_t(b) * a.heads + h) * a.seq_q_pad + m0;
    if (tid < BM / 4) {
      cp_async16(sL + buf * BM + tid * 4, a.lse2 + stat + tid * 4, true);
    } else if (tid < BM / 2) {
      const int i = tid - BM / 4;
      cp_async16(sDs + buf * BM + i * 4, a.dsum + stat + i * 4, true);
    }
  };
  if (steps > 0) {
    load_step(0, 0);
    cp_async_commit();
  }

  float acc_dk[1][NBD][4], acc_dv[1][NBD][4];
  zero(acc_dk);
  zero(acc_dv);
  const int key_row0 = n0 + warp * 16;  // this warp's keys

#pragma unroll 1
  for (int s = 0; s < steps; ++s) {
    const int buf = s & 1;
    if (s + 1 < steps) {
      load_step(s + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    sync_threads();
    const int h = walk.head(s);
    const int m0 = walk.m0(s);
    const uint16_t* cQ = sQ + buf * BM * LD;
    const uint16_t* cdO = sdO + buf * BM * LD;
    const float* cL = sL + buf * BM;
    const float* cDs = sDs + buf * BM;

    float acc_s[1][NBQ][4], acc_dp[1][NBQ][4];
    zero(acc_s);
    gemm_ss<T, 1, NBQ, D / 16, LD, LD>(acc_s, sK + warp * 16 * LD, cQ, lane);  // S^T
    if (kDk) {
      zero(acc_dp);
      gemm_ss<T, 1, NBQ, D / 16, LD, LD>(acc_dp, sV + warp * 16 * LD, cdO, lane);  // dP^T
    }

    const bool masked = tile_needs_mask<Causal>(m0, BM, n0, BN, off, a.seq_k, a.window);
    const bool has_alibi = a.alibi != nullptr;
    const float slope2 = has_alibi ? ld_f32(a.alibi + h) * kLog2e : 0.f;
#pragma unroll
    for (int nb = 0; nb < NBQ; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = key_row0 + g + (e >> 1) * 8;
        const int ci = nb * 8 + 2 * t + (e & 1);
        const int pos = m0 + ci + off;
        float s2 = acc_s[0][nb][e] * a.scale_log2;
        if (has_alibi) s2 += slope2 * float(j - pos);
        if (masked && !visible<Causal>(j, pos, a.seq_k, a.window)) s2 = -kInf;
        const float p = exp2_approx(s2 - ld_f32(cL + ci));
        acc_s[0][nb][e] = p;                                          // P^T
        if (kDk) acc_dp[0][nb][e] = p * (acc_dp[0][nb][e] - ld_f32(cDs + ci));  // dS^T
      }

    if (kDv) gemm_rs<T, 1, NBD, BM / 16, LD>(acc_dv, acc_s, cdO, lane);
    if (kDk) gemm_rs<T, 1, NBD, BM / 16, LD>(acc_dk, acc_dp, cQ, lane);

    if constexpr (kCanDq) {
      if (a.dq_accum != nullptr) {
#pragma unroll
        for (int nb = 0; nb < NBQ; ++nb)
#pragma unroll
          for (int hr = 0; hr < 2; ++hr)
            st_u32(sdS + (warp * 16 + g + hr * 8) * LDS + nb * 8 + 2 * t,
                   pack2<T>(acc_dp[0][nb][2 * hr], acc_dp[0][nb][2 * hr + 1]));
        sync_threads();
        // dQ(m0 block) += dS K: warp -> (query m16 tile, slice of head_dim).
        constexpr int MT = BM / 16, DS = NW / MT, NCOL = D / DS;
        static_assert(NW % MT == 0 && NCOL % 16 == 0, "dQ warp tiling");
        const int mt_w = warp % MT, ds_w = warp / MT;
        float acc_dq[1][NCOL / 8][4];
        zero(acc_dq);
        gemm_tt<T, 1, NCOL / 8, BN / 16, LDS, LD>(acc_dq, sdS + mt_w * 16, sK + ds_w * NCOL, lane);
        float* gdq = a.dq_accum + (int64_t(b) * a.seq_q + m0) * q_stride + int64_t(h) * D + ds_w * NCOL;
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int r = mt_w * 16 + g + hr * 8;
          if (m0 + r < a.seq_q) {
#pragma unroll
            for (int nd = 0; nd < NCOL / 8; ++nd) {
              atomic_add_f32(gdq + r * q_stride + nd * 8 + 2 * t, acc_dq[0][nd][2 * hr]);
              atomic_add_f32(gdq + r * q_stride + nd * 8 + 2 * t + 1, acc_dq[0][nd][2 * hr + 1]);
            }
          }
        }
      }
    }
    sync_threads();  // everyone is done with buffer buf (and sdS) before it is refilled
  }

  // Epilogue: dK *= scale; bf16/fp16 out through sK/sV, or fp32 partials.
  cp_async_wait<0>();  // with no step the K/V copies may still be in flight
  sync_threads();
  const int valid = a.seq_k - n0;
  if (a.splits == 1) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = warp * 16 + g + hr * 8;
#pragma unroll
      for (int nd = 0; nd < NBD; ++nd) {
        if (kDk)
          st_u32(sK + r * LD + nd * 8 + 2 * t,
                 pack2<T>(acc_dk[0][nd][2 * hr] * a.scale, acc_dk[0][nd][2 * hr + 1] * a.scale));
        if (kDv)
          st_u32(sV + r * LD + nd * 8 + 2 * t, pack2<T>(acc_dv[0][nd][2 * hr], acc_dv[0][nd][2 * hr + 1]));
      }
    }
    sync_threads();
    const int64_t o = (int64_t(b) * a.seq_k + n0) * k_stride + int64_t(hk) * D;
    if (kDk) store_tile<BN, D, NT>(a.dk + o, k_stride, valid, sK, tid);
    if (kDv) store_tile<BN, D, NT>(a.dv + o, k_stride, valid, sV, tid);
  } else {
    const int64_t o = ((int64_t(split) * a.batch + b) * a.seq_k + n0) * k_stride + int64_t(hk) * D;
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = warp * 16 + g + hr * 8;
      if (r < valid) {
#pragma unroll
        for (int nd = 0; nd < NBD; ++nd) {
          const int64_t e = o + r * k_stride + nd * 8 + 2 * t;
          if (kDk)
            st_f32x2(a.dk_part + e, acc_dk[0][nd][2 * hr] * a.scale, acc_dk[0][nd][2 * hr + 1] * a.scale);
          if (kDv) st_f32x2(a.dv_part + e, acc_dv[0][nd][2 * hr], acc_dv[0][nd][2 * hr + 1]);
        }
      }
    }
  }
}

// grid (ceil(seq_q / BM), heads, batch), 32 * NW threads; BM = 16 * NW.
template <class T, int D, bool Causal>
FA_GLOBAL void FA_LAUNCH_BOUNDS(DqCfg<D>::NW * 32, 1) flash_bwd_dq_kernel(const FaArgs a) {
  using Cfg = DqCfg<D>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, NW = Cfg::NW, NT = NW * 32;
  constexpr int LD = D + 8, NBN = BN / 8, NBD = D / 8;
  static_assert(BM == 16 * NW && BN % 16 == 0 && kRowPad % BM == 0, "tile shapes");

  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem_base());
  uint16_t* sdO = sQ + BM * LD;
  uint16_t* sK = sdO + BM * LD;     // [2][BN][LD]
  uint16_t* sV = sK + 2 * BN * LD;  // [2][BN][LD]

  const int tid = thread_idx(), lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int m_block = grid_x() - 1 - block_x();
  const int h = block_y(), b = block_z(), hk = h / a.group;
  const int m0 = m_block * BM;
  const int off = a.off;
  const int64_t q_stride = int64_t(a.heads) * D, k_stride = int64_t(a.kv_heads) * D;
  const int64_t qo = (int64_t(b) * a.seq_q + m0) * q_stride + int64_t(h) * D;
  const uint16_t* gK = a.k + int64_t(b) * a.seq_k * k_stride + int64_t(hk) * D;
  const uint16_t* gV = a.v + int64_t(b) * a.seq_k * k_stride + int64_t(hk) * D;

  int key_begin, key_end;
  key_range<Causal>(m0, BM, off, a.seq_k, a.window, key_begin, key_end);
  const int tile_begin = key_begin / BN;
  const int tiles = key_end > key_begin ? (key_end + BN - 1) / BN - tile_begin : 0;

  load_tile_async<BM, D, NT>(sQ, a.q + qo, q_stride, a.seq_q - m0, a.q, tid);
  load_tile_async<BM, D, NT>(sdO, a.dout + qo, q_stride, a.seq_q - m0, a.dout, tid);
  cp_async_commit();
  auto load_kv = [&](int i, int buf) {
    const int n0 = (tile_begin + i) * BN;
    load_tile_async<BN, D, NT>(sK + buf * BN * LD, gK + n0 * k_stride, k_stride, a.seq_k - n0, a.k, tid);
    load_tile_async<BN, D, NT>(sV + buf * BN * LD, gV + n0 * k_stride, k_stride, a.seq_k - n0, a.v, tid);
  };
  if (tiles > 0) {
    load_kv(0, 0);
    cp_async_commit();
  }

  const int warp_row0 = warp * 16;
  const int64_t stat = (int64_t(b) * a.heads + h) * a.seq_q_pad + m0 + warp_row0 + g;
  const float lse2[2] = {ld_f32(a.lse2 + stat), ld_f32(a.lse2 + stat + 8)};
  const float dsum[2] = {ld_f32(a.dsum + stat), ld_f32(a.dsum + stat + 8)};
  const bool has_alibi = a.alibi != nullptr;
  const float slope2 = has_alibi ? ld_f32(a.alibi + h) * kLog2e : 0.f;

  float acc_dq[1][NBD][4];
  zero(acc_dq);
#pragma unroll 1
  for (int i = 0; i < tiles; ++i) {
    const int buf = i & 1;
    if (i + 1 < tiles) {
      load_kv(i + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    sync_threads();
    const int n0 = (tile_begin + i) * BN;
    const uint16_t* cK = sK + buf * BN * LD;
    const uint16_t* cV = sV + buf * BN * LD;
    float acc_s[1][NBN][4], acc_dp[1][NBN][4];
    zero(acc_s);
    zero(acc_dp);
    gemm_ss<T, 1, NBN, D / 16, LD, LD>(acc_s, sQ + warp_row0 * LD, cK, lane);
    gemm_ss<T, 1, NBN, D / 16, LD, LD>(acc_dp, sdO + warp_row0 * LD, cV, lane);
    const bool masked = tile_needs_mask<Causal>(m0, BM, n0, BN, off, a.seq_k, a.window);
#pragma unroll
    for (int nb = 0; nb < NBN; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int pos = m0 + warp_row0 + g + (e >> 1) * 8 + off;
        const int j = n0 + nb * 8 + 2 * t + (e & 1);
        float s2 = acc_s[0][nb][e] * a.scale_log2;
        if (has_alibi) s2 += slope2 * float(j - pos);
        if (masked && !visible<Causal>(j, pos, a.seq_k, a.window)) s2 = -kInf;
        const float p = exp2_approx(s2 - lse2[e >> 1]);
        acc_dp[0][nb][e] = p * (acc_dp[0][nb][e] - dsum[e >> 1]);  // dS
      }
    gemm_rs<T, 1, NBD, BN / 16, LD>(acc_dq, acc_dp, cK, lane);
    sync_threads();  // everyone is done with buffer buf before it is refilled
  }

  cp_async_wait<0>();
  sync_threads();
#pragma unroll
  for (int hr = 0; hr < 2; ++hr)
#pragma unroll
    for (int nd = 0; nd < NBD; ++nd)
      st_u32(sQ + (warp_row0 + g + hr * 8) * LD + nd * 8 + 2 * t,
             pack2<T>(acc_dq[0][nd][2 * hr] * a.scale, acc_dq[0][nd][2 * hr + 1] * a.scale));
  sync_threads();
  store_tile<BM, D, NT>(a.dq + qo, q_stride, a.seq_q - m0, sQ, tid);
}

// out[i] = T(scale * sum_s part[s * n + i]) for i < n (a multiple of 8),
// summing the parts in order; grid-stride, 8 elements per thread.
template <class T>
FA_GLOBAL void FA_LAUNCH_BOUNDS(256, 4) flash_bwd_sum_kernel(uint16_t* out, const float* part, int parts,
                                                             int64_t n, float scale) {
  const int64_t stride = int64_t(grid_x()) * 256 * 8;
#pragma unroll 1
  for (int64_t i = (int64_t(block_x()) * 256 + thread_idx()) * 8; i < n; i += stride) {
    float x[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int s = 0; s < parts; ++s) {
      float u[4], w[4];
      ld_f32x4(u, part + s * n + i);
      ld_f32x4(w, part + s * n + i + 4);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        x[e] += u[e];
        x[e + 4] += w[e];
      }
    }
    uint32_t r[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) r[e] = pack2<T>(x[2 * e] * scale, x[2 * e + 1] * scale);
    st16(out + i, r);
  }
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
