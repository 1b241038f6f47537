// Building blocks shared by the forward and backward kernels: the argument
// struct the kernels receive, tile configurations, asynchronous tile loads
// and the three warp-level GEMM shapes (operands from shared memory or from
// registers). Shared-memory tiles are row-major with rows padded by 8
// elements (16 bytes): the 8 row addresses of one ldmatrix then fall in 8
// different 16-byte bank groups, so ldmatrix and the 4-byte fragment stores
// are free of bank conflicts without a swizzle.
#pragma once

#include <cstdint>

#include "flash_attention/arch.cuh"

namespace llmpre {
namespace cuda {
namespace fa {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kInf = __builtin_huge_valf();
// lse / dsum rows are padded to a multiple of this (every query block size divides it).
constexpr int kRowPad = 128;

// Everything a kernel reads, by value. Element pointers are raw 16-bit floats.
struct FaArgs {
  const uint16_t* q = nullptr;
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;
  uint16_t* o = nullptr;
  float* lse = nullptr;
  const float* alibi = nullptr;
  // backward
  const uint16_t* dout = nullptr;
  uint16_t* dq = nullptr;
  uint16_t* dk = nullptr;
  uint16_t* dv = nullptr;
  float* lse2 = nullptr;      // [batch, heads, seq_q_pad]: lse * log2(e), +inf for padding / empty rows
  float* dsum = nullptr;      // [batch, heads, seq_q_pad]: rowsum(dout * out), 0 for padding
  float* dq_accum = nullptr;  // [batch, seq_q, heads, head_dim] fp32 (atomic mode)
  float* dk_part = nullptr;   // [splits, batch, seq_k, kv_heads, head_dim] fp32 (splits > 1)
  float* dv_part = nullptr;

  int batch = 0, seq_q = 0, seq_k = 0, heads = 0, kv_heads = 0, group = 1;
  int window = -1, seq_q_pad = 0, splits = 1, heads_per_split = 1;
  int off = 0;                // key position of query 0 (seq_k - seq_q unless a block sets it)
  float scale = 0.f, scale_log2 = 0.f;
};

// Tile shapes. Forward: BM query rows per block (MW m16 tiles per warp), BN
// keys per step. Backward dK/dV: BN = 16 * NW keys per block (one m16 tile
// per warp), BM queries per step. Backward dQ (query-major): BM = 16 * NW.
// Forward head_dim 128 uses 32-key steps: with 64, O (128 fp32 registers per
// thread) plus S (64) spill on sm_90 (ptxas -v); 32 keeps two 16-row tiles
// per warp, so each K/V fragment read from shared memory feeds two mma.
template <int D> struct FwdCfg;
template <> struct FwdCfg<64> { static constexpr int BM = 128, BN = 64, NW = 4; };
template <> struct FwdCfg<128> { static constexpr int BM = 128, BN = 32, NW = 4; };
template <> struct FwdCfg<256> { static constexpr int BM = 64, BN = 64, NW = 4; };

template <int D> struct BwdCfg;
template <> struct BwdCfg<64> { static constexpr int BN = 128, BM = 64, NW = 8; };
template <> struct BwdCfg<128> { static constexpr int BN = 128, BM = 64, NW = 8; };
// head_dim 256: dK and dV do not both fit in registers; they are computed in
// two passes (and dQ always by the query-major kernel).
template <> struct BwdCfg<256> { static constexpr int BN = 64, BM = 32, NW = 4; };

template <int D> struct DqCfg;
template <> struct DqCfg<64> { static constexpr int BM = 64, BN = 64, NW = 4; };
template <> struct DqCfg<128> { static constexpr int BM = 64, BN = 64, NW = 4; };
template <> struct DqCfg<256> { static constexpr int BM = 64, BN = 32, NW = 4; };

template <int D>
constexpr int fwd_smem_bytes() {
  return (FwdCfg<D>::BM + 2 * FwdCfg<D>::BN) * (D + 8) * 2;
}
template <int D>
constexpr int bwd_smem_bytes(bool dq_atomic) {
  using C = BwdCfg<D>;
  return (2 * C::BN + 4 * C::BM) * (D + 8) * 2  // K, V, 2 x (Q, dO)
         + 4 * C::BM * 4                         // 2 x (lse2, dsum)
         + (dq_atomic ? C::BN * (C::BM + 8) * 2 : 0);  // dS^T
}
template <int D>
constexpr int dq_smem_bytes() {
  return (2 * DqCfg<D>::BM + 4 * DqCfg<D>::BN) * (D + 8) * 2;
}

// Asynchronously copies rows [0, ROWS) x D of a global tile (row stride
// gstride elements) into shared memory with row stride D + 8. Rows >= valid
// are filled with zeros (their source address is `safe`, never read).
// Thread tid copies chunk tid % (D / 8) of rows tid / (D / 8) + i * kStep.
template <int ROWS, int D, int NT>
FA_DEV void load_tile_async(uint16_t* s, const uint16_t* g, int64_t gstride, int valid,
                            const uint16_t* safe, int tid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kStep = NT / kChunks;
  static_assert(NT % kChunks == 0 && ROWS % kStep == 0, "whole rows per pass");
  const int r0 = tid / kChunks, c = tid % kChunks;
  const uint16_t* src = g + r0 * gstride + c * 8;
  uint16_t* dst = s + r0 * (D + 8) + c * 8;
#pragma unroll
  for (int i = 0; i < ROWS / kStep; ++i) {
    const bool ok = r0 + i * kStep < valid;
    cp_async16(dst + i * kStep * (D + 8), ok ? src : safe, ok);
    src += kStep * gstride;
  }
}

// Copies rows [0, ROWS) x D from shared memory (row stride D + 8) to global
// memory (row stride gstride); rows >= valid are skipped.
template <int ROWS, int D, int NT>
FA_DEV void store_tile(uint16_t* g, int64_t gstride, int valid, const uint16_t* s, int tid) {
  constexpr int kChunks = D / 8;
  constexpr int kStep = NT / kChunks;
  static_assert(NT % kChunks == 0 && ROWS % kStep == 0, "whole rows per pass");
  const int r0 = tid / kChunks, c = tid % kChunks;
  uint16_t* dst = g + r0 * gstride + c * 8;
  const uint16_t* src = s + r0 * (D + 8) + c * 8;
#pragma unroll
  for (int i = 0; i < ROWS / kStep; ++i) {
    if (r0 + i * kStep < valid) {
      uint32_t v[4];
      ld16(v, src + i * kStep * (D + 8));
      st16(dst, v);
    }
    dst += kStep * gstride;
  }
}

// acc[mt][nb] += A[mt*16.., :] * B[nb*8.., :]^T over K = 16 * KS columns.
// A: shared, [m][k] with row stride LDA (already offset to the warp's rows);
// B: shared, [n][k] with row stride LDB. Both through ldmatrix (no .trans).
template <class T, int MT, int NB, int KS, int LDA, int LDB>
FA_DEV void gemm_ss(float (&acc)[MT][NB][4], const uint16_t* sA, const uint16_t* sB, int lane) {
  static_assert(NB % 2 == 0, "n blocks come in pairs (one ldmatrix.x4)");
  const int q = lane >> 3;
  const int a_row = lane & 15, a_col = (lane >> 4) * 8;
  const int b_row = (q >> 1) * 8 + (lane & 7), b_col = (q & 1) * 8;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ldsm_x4(a[mt], sA + (mt * 16 + a_row) * LDA + ks * 16 + a_col);
#pragma unroll
    for (int np = 0; np < NB / 2; ++np) {
      uint32_t bf[4];
      ldsm_x4(bf, sB + (np * 16 + b_row) * LDB + ks * 16 + b_col);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma16816<T>(acc[mt][2 * np], a[mt], bf[0], bf[1]);
        mma16816<T>(acc[mt][2 * np + 1], a[mt], bf[2], bf[3]);
      }
    }
  }
}

// acc[mt][nb] += P[mt*16.., :] * B[:, nb*8..] over K = 16 * KS.
// P: registers, fp32 C fragments whose columns are the K index (k block kb =
// 8 columns), rounded to T here; B: shared, [k][n] with row stride LDB,
// through ldmatrix.trans.
template <class T, int MT, int NB, int KS, int LDB>
FA_DEV void gemm_rs(float (&acc)[MT][NB][4], const float (&p)[MT][2 * KS][4], const uint16_t* sB,
                    int lane) {
  static_assert(NB % 2 == 0, "n blocks come in pairs (one ldmatrix.x4)");
  const int q = lane >> 3;
  const int b_row = (q & 1) * 8 + (lane & 7), b_col = (q >> 1) * 8;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      a[mt][0] = pack2<T>(p[mt][2 * ks][0], p[mt][2 * ks][1]);
      a[mt][1] = pack2<T>(p[mt][2 * ks][2], p[mt][2 * ks][3]);
      a[mt][2] = pack2<T>(p[mt][2 * ks + 1][0], p[mt][2 * ks + 1][1]);
      a[mt][3] = pack2<T>(p[mt][2 * ks + 1][2], p[mt][2 * ks + 1][3]);
    }
#pragma unroll
    for (int np = 0; np < NB / 2; ++np) {
      uint32_t bf[4];
      ldsm_x4_trans(bf, sB + (ks * 16 + b_row) * LDB + np * 16 + b_col);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma16816<T>(acc[mt][2 * np], a[mt], bf[0], bf[1]);
        mma16816<T>(acc[mt][2 * np + 1], a[mt], bf[2], bf[3]);
      }
    }
  }
}

// acc[mt][nb] += A[mt*16.., :] * B[:, nb*8..] over K = 16 * KS, both
// operands stored K-major in shared memory: A as [k][m] (row stride LDA,
// offset to the warp's first m column), B as [k][n]; both through ldmatrix.trans.
template <class T, int MT, int NB, int KS, int LDA, int LDB>
FA_DEV void gemm_tt(float (&acc)[MT][NB][4], const uint16_t* sA, const uint16_t* sB, int lane) {
  static_assert(NB % 2 == 0, "n blocks come in pairs (one ldmatrix.x4)");
  const int q = lane >> 3;
  const int a_row = (q >> 1) * 8 + (lane & 7), a_col = (q & 1) * 8;
  const int b_row = (q & 1) * 8 + (lane & 7), b_col = (q >> 1) * 8;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ldsm_x4_trans(a[mt], sA + (ks * 16 + a_row) * LDA + mt * 16 + a_col);
#pragma unroll
    for (int np = 0; np < NB / 2; ++np) {
      uint32_t bf[4];
      ldsm_x4_trans(bf, sB + (ks * 16 + b_row) * LDB + np * 16 + b_col);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma16816<T>(acc[mt][2 * np], a[mt], bf[0], bf[1]);
        mma16816<T>(acc[mt][2 * np + 1], a[mt], bf[2], bf[3]);
      }
    }
  }
}

template <int MT, int NB>
FA_DEV void zero(float (&acc)[MT][NB][4]) {
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
}

// Positions use int: the dispatcher limits sequences to 2^30 and clamps
// window to at most seq_k, so no sum below overflows.
//
// Whether key j is visible to the query at key position pos (window <= 0: none).
template <bool Causal>
FA_DEV bool visible(int j, int pos, int seq_k, int window) {
  return j < seq_k && (!Causal || j <= pos) && (window <= 0 || j > pos - window);
}

// Whether a tile of queries [m0, m0 + bm) x keys [n0, n0 + bn) needs the
// per-element mask (some pair is invisible); off = FaArgs::off. Rows past
// seq_q never matter: the forward does not store them and the backward gives
// them zero probability through lse2 = +inf.
template <bool Causal>
FA_DEV bool tile_needs_mask(int m0, int bm, int n0, int bn, int off, int seq_k, int window) {
  return n0 + bn > seq_k || (Causal && n0 + bn - 1 > m0 + off) ||
         (window > 0 && n0 <= m0 + bm - 1 + off - window);
}

// The key range [begin, end) that queries [m0, m0 + bm) can see.
template <bool Causal>
FA_DEV void key_range(int m0, int bm, int off, int seq_k, int window, int& begin, int& end) {
  end = seq_k;
  if (Causal) end = end < m0 + bm + off ? end : m0 + bm + off;
  begin = 0;
  if (window > 0) {
    const int lo = m0 + off - window + 1;
    begin = lo > 0 ? lo : 0;
  }
}

// The query range [begin, end) that can see some key of [n0, n0 + bn).
template <bool Causal>
FA_DEV void query_range(int n0, int bn, int off, int seq_q, int window, int& begin, int& end) {
  begin = 0;
  if (Causal) begin = n0 - off > 0 ? n0 - off : 0;
  end = seq_q;
  if (window > 0) {
    const int hi = n0 + bn + window - 1 - off;
    end = end < hi ? end : hi;
  }
}

// The (query head, query block) steps of a key-major backward block: block y
// = hk * splits + split owns keys [n0, n0 + bn) of KV head hk and the split-th
// slice of its GQA group's query heads, and walks those heads, each over the
// bm-row query blocks that can see its keys. Step s is head head(s), rows m0(s).
struct BwdWalk {
  int hk = 0, split = 0, h_first = 0, m_begin = 0, nm = 0, steps = 0, bm = 1;
  FA_DEV int head(int s) const { return h_first + s / nm; }
  FA_DEV int m0(int s) const { return (m_begin + s % nm) * bm; }
};

template <bool Causal>
FA_DEV BwdWalk bwd_walk(const FaArgs& a, int block_y, int n0, int bn, int bm) {
  BwdWalk w;
  w.bm = bm;
  w.hk = block_y / a.splits;
  w.split = block_y % a.splits;
  w.h_first = w.hk * a.group + w.split * a.heads_per_split;
  const int group_end = (w.hk + 1) * a.group;
  const int h_stop = w.h_first + a.heads_per_split < group_end ? w.h_first + a.heads_per_split : group_end;
  int q_begin, q_end;
  query_range<Causal>(n0, bn, a.off, a.seq_q, a.window, q_begin, q_end);
  w.m_begin = q_begin < a.seq_q ? q_begin / bm : 0;
  w.nm = (q_begin < a.seq_q && q_end > q_begin) ? (q_end + bm - 1) / bm - w.m_begin : 0;
  w.steps = h_stop > w.h_first ? (h_stop - w.h_first) * w.nm : 0;
  return w;
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
