// Flash attention backward for Hopper (sm_90a): the dK/dV kernel on TMA and
// wgmma with warp specialisation (FlashAttention-3 scheme). The math and the
// kernels around it (prep: lse2 and dsum; dQ sum; the deterministic dQ
// pass) are those of bwd_kernel.cuh.
//
// One block = BN = 128 keys of one KV head, 384 threads. Warpgroup 0 is the
// producer: one thread loads K and V once, then for every (query head of
// the block's slice of the GQA group, query block of BM = 64 rows) a Q tile
// with its lse2 row and a dO tile with its dsum row into a ring of STAGES
// buffers (full/empty mbarriers). Warpgroups 1 and 2 each own 64 keys:
//
//   S^T = K Q^T,  dP^T = V dO^T        wgmma, shared x shared (K-major)
//   P^T = exp2(S^T scale log2e - lse2), dS^T = P^T (dP^T - dsum)   registers
//   dV += P^T dO,  dK += dS^T Q        wgmma, P^T / dS^T from registers
//   dQ += dS K     (atomic mode)       dS^T through shared memory, wgmma with
//                                      both operands M/N-major; each 64 x 64
//                                      panel added to the fp32 accumulator by
//                                      one bulk reduction (cp.reduce.async.bulk)
//
// dK and dV stay in registers for the whole walk (fixed order: reproducible)
// and leave through shared memory and TMA stores, or as fp32 partial sums
// when the group is split across blocks.
#pragma once

#include "flash_attention/arch_sm90.cuh"
#include "flash_attention/sm90_config.h"
#include "flash_attention/tile.cuh"

namespace llmpre {
namespace cuda {
namespace fa {

// Named barriers of the consumer warpgroups (ids 1..15).
constexpr int kBarDsFree = 1, kBarDsReady = 2, kBarEpilogue = 3, kBarStore0 = 4, kBarDq0 = 6;

template <class T, int D, bool Causal>
FA_GLOBAL void FA_LAUNCH_BOUNDS(384, 1) flash_bwd_sm90_kernel(const FA_GRID_CONSTANT Sm90BwdArgs p) {
#if FA_SM90_ENABLED
  using C = Sm90BwdCfg<D>;
  using L = Sm90BwdSmem<D>;
  constexpr int BN = C::BN, BM = C::BM, S = C::STAGES;
  constexpr int NA = BM / 2, NK = D / 2, KD = D / 16, KQ = BM / 16, KN = BN / 16;
  const FaArgs& a = p.a;

  unsigned char* sm = smem_base_1024();
  uint64_t* bars = reinterpret_cast<uint64_t*>(sm + L::kBars);
  uint64_t* kv_full = bars;
  uint64_t* q_full = bars + 1;
  uint64_t* q_empty = q_full + S;
  uint64_t* do_full = q_empty + S;
  uint64_t* do_empty = do_full + S;

  const int tid = thread_idx();
  const int wg = tid / 128;
  const int b = block_z();
  const int n0 = block_x() * BN;
  const int off = a.off;
  const BwdWalk walk = bwd_walk<Causal>(a, block_y(), n0, BN, BM);
  const int hk = walk.hk, split = walk.split, steps = walk.steps;

  if (tid == 0) {
    mbar_init(kv_full, 1);
    for (int s = 0; s < S; ++s) {
      mbar_init(q_full + s, 1);
      mbar_init(do_full + s, 1);
      mbar_init(q_empty + s, 2);  // one arrival per consumer warpgroup
      mbar_init(do_empty + s, 2);
    }
    mbar_init_fence();
  }
  sync_threads();

  if (wg == 0) {
    // ---- producer ----
    reg_dealloc<24>();
    if (tid == 0 && steps > 0) {
      mbar_arrive_expect_tx(kv_full, 2 * BN * D * 2);
      for (int c = 0; c < D / 64; ++c) {
        tma_load_4d(sm + L::kK + c * BN * 128, &p.tk, 64 * c, hk, n0, b, kv_full);
        tma_load_4d(sm + L::kV + c * BN * 128, &p.tv, 64 * c, hk, n0, b, kv_full);
      }
      for (int it = 0; it < steps; ++it) {
        const int s = it % S, par = (it / S) & 1;
        const int h = walk.head(it);
        const int m0 = walk.m0(it);
        const int64_t stat = (int64_t(b) * a.heads + h) * a.seq_q_pad + m0;
        mbar_wait(q_empty + s, par ^ 1);
        mbar_arrive_expect_tx(q_full + s, BM * D * 2 + BM * 4);
        for (int c = 0; c < D / 64; ++c)
          tma_load_4d(sm + L::kQ + s * L::kStep + c * BM * 128, &p.tq, 64 * c, h, m0, b, q_full + s);
        bulk_load(sm + L::kLse + s * BM * 4, a.lse2 + stat, BM * 4, q_full + s);
        mbar_wait(do_empty + s, par ^ 1);
        mbar_arrive_expect_tx(do_full + s, BM * D * 2 + BM * 4);
        for (int c = 0; c < D / 64; ++c)
          tma_load_4d(sm + L::kdO + s * L::kStep + c * BM * 128, &p.tdo, 64 * c, h, m0, b, do_full + s);
        bulk_load(sm + L::kDsum + s * BM * 4, a.dsum + stat, BM * 4, do_full + s);
      }
    }
    return;
  }

  // ---- consumers ----
  reg_alloc<240>();
  const int cw = wg - 1;  // keys [64 cw, 64 cw + 64) of the block
  const int l = tid % 128, w = l / 32, g = (l % 32) / 4, t = l % 4;
  const int key0 = 64 * cw + 16 * w + g;  // this thread's keys (block rows): key0 and key0 + 8
  const uint32_t k_addr = smem_u32(sm + L::kK), v_addr = smem_u32(sm + L::kV);
  const uint32_t ds_addr = smem_u32(sm + L::kdS);
  const bool dq_atomic = a.dq_accum != nullptr;
  // dQ columns of this warpgroup: one 64-wide panel of head_dim (head_dim 64: warpgroup 0 only).
  const bool do_dq = dq_atomic && cw < D / 64;
  const bool has_alibi = a.alibi != nullptr;

  float dk[NK], dv[NK];
#pragma unroll
  for (int i = 0; i < NK; ++i) dk[i] = dv[i] = 0.f;
  float st[NA], dpt[NA], dq[32];
  uint32_t pr[KQ][4], dsr[KQ][4];

  // S^T = K Q^T and dP^T = V dO^T: this warpgroup's 64 rows of a key tile
  // times a query tile, both K-major over head_dim.
  auto issue_keys_x_queries = [&](float (&acc)[NA], uint32_t keys, uint32_t queries) {
    fence_acc(acc);
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      const uint32_t ko = uint32_t(kk / 4) * BN * 128 + uint32_t(cw) * 64 * 128 + uint32_t(kk % 4) * 32;
      const uint32_t qo = uint32_t(kk / 4) * BM * 128 + uint32_t(kk % 4) * 32;
      Wgmma<T, BM>::template ss<0, 0>(acc, kmajor_desc(keys + ko), kmajor_desc(queries + qo), kk > 0 ? 1 : 0);
    }
  };

  if (steps > 0) mbar_wait(kv_full, 0);
#pragma unroll 1
  for (int it = 0; it < steps; ++it) {
    const int s = it % S, par = (it / S) & 1;
    const int h = walk.head(it);
    const int m0 = walk.m0(it);
    const uint32_t q_addr = smem_u32(sm + L::kQ + s * L::kStep);
    const uint32_t do_addr = smem_u32(sm + L::kdO + s * L::kStep);
    const float* sL = reinterpret_cast<const float*>(sm + L::kLse + s * BM * 4);
    const float* sDs = reinterpret_cast<const float*>(sm + L::kDsum + s * BM * 4);

    mbar_wait(q_full + s, par);
    wgmma_fence();
    issue_keys_x_queries(st, k_addr, q_addr);
    mbar_wait(do_full + s, par);
    wgmma_fence();
    issue_keys_x_queries(dpt, v_addr, do_addr);
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(st);
    fence_acc(dpt);

    // P^T and dS^T (rows: keys; columns: queries).
    const bool masked = tile_needs_mask<Causal>(m0, BM, n0, BN, off, a.seq_k, a.window);
    const float slope2 = has_alibi ? ld_f32(a.alibi + h) * kLog2e : 0.f;
#pragma unroll
    for (int i = 0; i < NA; ++i) {
      const int e = i % 4;
      const int j = n0 + key0 + (e >> 1) * 8;
      const int ci = 8 * (i / 4) + 2 * t + (e & 1);
      const int pos = m0 + ci + off;
      float s2 = st[i] * a.scale_log2;
      if (has_alibi) s2 += slope2 * float(j - pos);
      if (masked && !visible<Causal>(j, pos, a.seq_k, a.window)) s2 = -kInf;
      const float pv = exp2_approx(s2 - sL[ci]);
      st[i] = pv;
      dpt[i] = pv * (dpt[i] - sDs[ci]);
    }
#pragma unroll
    for (int kk = 0; kk < KQ; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        pr[kk][r] = pack2<T>(st[8 * kk + 2 * r], st[8 * kk + 2 * r + 1]);
        dsr[kk][r] = pack2<T>(dpt[8 * kk + 2 * r], dpt[8 * kk + 2 * r + 1]);
      }

    // dV += P^T dO, dK += dS^T Q (B operands M/N-major: head_dim contiguous).
    fence_regs(pr);
    fence_regs(dsr);
    wgmma_fence();
    fence_acc(dv);
    fence_acc(dk);
#pragma unroll
    for (int kk = 0; kk < KQ; ++kk)
      Wgmma<T, D>::template rs<1>(dv, pr[kk], mnmajor_desc(do_addr + uint32_t(kk) * 16 * 128, BM), 1);
#pragma unroll
    for (int kk = 0; kk < KQ; ++kk)
      Wgmma<T, D>::template rs<1>(dk, dsr[kk], mnmajor_desc(q_addr + uint32_t(kk) * 16 * 128, BM), 1);
    wgmma_commit();

    if (dq_atomic) {
      // dS^T -> shared (rows: keys, 64 query columns) while dV and dK run
      // (their register operands are only read), then dQ = dS K once they
      // have retired (dK, dV and dQ accumulators alone are live then).
      named_bar_sync(kBarDsFree, 256);  // both warpgroups' previous dQ products have retired
      unsigned char* sdS = sm + L::kdS;
#pragma unroll
      for (int kk = 0; kk < KQ; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int row = key0 + (r & 1) * 8, col = 16 * kk + (r >> 1) * 8 + 2 * t;
          st_u32(sdS + sw128_offset(row, col, BN), dsr[kk][r]);
        }
      fence_proxy_async();
      named_bar_sync(kBarDsReady, 256);
    }
    wgmma_wait<0>();
    fence_acc(dv);
    fence_acc(dk);
    if (l == 0) {  // Q, dO, lse2 and dsum of this stage are no longer read
      mbar_arrive(q_empty + s);
      mbar_arrive(do_empty + s);
    }
    if (do_dq) {
      wgmma_fence();
      fence_acc(dq);
#pragma unroll
      for (int kk = 0; kk < KN; ++kk) {
        const uint64_t da = mnmajor_desc(ds_addr + uint32_t(kk) * 16 * 128, BN);
        const uint64_t db = mnmajor_desc(k_addr + uint32_t(cw) * BN * 128 + uint32_t(kk) * 16 * 128, BN);
        Wgmma<T, 64>::template ss<1, 1>(dq, da, db, kk > 0 ? 1 : 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_acc(dq);
      // Stage the 64 x 64 panel in shared memory and add it to the fp32
      // accumulator with one bulk reduction (rows past seq_q land in padding).
      float* sdq = reinterpret_cast<float*>(sm + L::kDq) + cw * BM * 64;
      if (l == 0) tma_store_wait_read();  // the previous panel has left the staging buffer
      named_bar_sync(kBarDq0 + cw, 128);
#pragma unroll
      for (int i = 0; i < 32; i += 2) {
        const int e = i % 4;
        const int r = 16 * w + g + (e >> 1) * 8, c = 8 * (i / 4) + 2 * t;
        st_f32x2(sdq + sm90_dq_tile_index(r, c), dq[i], dq[i + 1]);
      }
      fence_proxy_async();
      named_bar_sync(kBarDq0 + cw, 128);
      if (l == 0) {
        const int64_t tile = ((int64_t(b) * a.heads + h) * (a.seq_q_pad / BM) + m0 / BM) * (D / 64) + cw;
        bulk_reduce_add_f32(a.dq_accum + tile * BM * 64, sdq, BM * 64 * 4);
        tma_store_commit();
      }
    }
  }

  // ---- epilogue: dK *= scale; out through shared memory and TMA, or fp32 partials ----
  const int64_t k_stride = int64_t(a.kv_heads) * D;
  if (a.splits == 1) {
    named_bar_sync(kBarEpilogue, 256);  // nobody reads K or V any more
    unsigned char* sK = sm + L::kK;
    unsigned char* sV = sm + L::kV;
#pragma unroll
    for (int i = 0; i < NK; i += 2) {
      const int e = i % 4;
      const int r = key0 + (e >> 1) * 8, c = 8 * (i / 4) + 2 * t;
      st_u32(sK + sw128_offset(r, c, BN), pack2<T>(dk[i] * a.scale, dk[i + 1] * a.scale));
      st_u32(sV + sw128_offset(r, c, BN), pack2<T>(dv[i], dv[i + 1]));
    }
    fence_proxy_async();
    named_bar_sync(kBarStore0 + cw, 128);
    if (l == 0) {
      for (int c = 0; c < D / 64; ++c) {
        tma_store_4d(&p.tdk, sK + c * BN * 128 + cw * 64 * 128, 64 * c, hk, n0 + 64 * cw, b);
        tma_store_4d(&p.tdv, sV + c * BN * 128 + cw * 64 * 128, 64 * c, hk, n0 + 64 * cw, b);
      }
      tma_store_commit();
      tma_store_wait_all();
    }
  } else {
    if (l == 0) tma_store_wait_all();  // dQ reductions
    const int64_t o = ((int64_t(split) * a.batch + b) * a.seq_k + n0) * k_stride + int64_t(hk) * D;
#pragma unroll
    for (int i = 0; i < NK; i += 2) {
      const int e = i % 4;
      const int r = key0 + (e >> 1) * 8, c = 8 * (i / 4) + 2 * t;
      if (n0 + r < a.seq_k) {
        st_f32x2(a.dk_part + o + r * k_stride + c, dk[i] * a.scale, dk[i + 1] * a.scale);
        st_f32x2(a.dv_part + o + r * k_stride + c, dv[i], dv[i + 1]);
      }
    }
  }
#else
  __trap();
#endif
}

// dq = T(scale * dq_accum) from the tiled accumulator (sm90_dq_tile_index);
// grid-stride, 8 head_dim elements of one query row per thread.
template <class T, int D>
FA_GLOBAL void FA_LAUNCH_BOUNDS(256, 4) flash_bwd_dq_convert_sm90_kernel(const FaArgs a) {
  const int64_t per_row = D / 8;
  const int64_t n = int64_t(a.batch) * a.seq_q * a.heads * per_row;
  const int64_t stride = int64_t(grid_x()) * 256;
#pragma unroll 1
  for (int64_t i = int64_t(block_x()) * 256 + thread_idx(); i < n; i += stride) {
    const int c8 = int(i % per_row) * 8;
    const int64_t row = i / per_row;  // (b, q, h) in dq's order
    const int h = int(row % a.heads);
    const int64_t bq = row / a.heads;
    const int q = int(bq % a.seq_q), b = int(bq / a.seq_q);
    const int r = q % 64, panel = c8 / 64, c = c8 % 64;
    const float* tile = a.dq_accum + (((int64_t(b) * a.heads + h) * (a.seq_q_pad / 64) + q / 64) * (D / 64) + panel) * 4096;
    float x[8];
    ld_f32x4(*reinterpret_cast<float(*)[4]>(x), tile + sm90_dq_tile_index(r, c));
    ld_f32x4(*reinterpret_cast<float(*)[4]>(x + 4), tile + sm90_dq_tile_index(r, c + 4));
    uint32_t o[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) o[e] = pack2<T>(x[2 * e] * a.scale, x[2 * e + 1] * a.scale);
    st16(a.dq + row * D + c8, o);
  }
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
