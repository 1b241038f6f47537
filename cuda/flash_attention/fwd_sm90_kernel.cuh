// Flash attention forward for Hopper (sm_90a): TMA loads, wgmma, warp
// specialisation (FlashAttention-3 scheme, written for llmpre's contract in
// flash_attention_cuda.h).
//
// One block = BM = 128 query rows of one (batch, head), 384 threads in three
// warpgroups. Warpgroup 0 is the producer: it gives up registers
// (setmaxnreg) and one of its threads issues every TMA load: Q once, then
// K(n) and V(n) for the visible key tiles, last to first, into a ring of
// STAGES buffers guarded by full/empty mbarriers. Warpgroups 1 and 2 are
// consumers, each owning 64 query rows (one wgmma M = 64 slice):
//
//   S = Q K(n)^T        wgmma, both operands in shared memory (K-major)
//   P = softmax part    registers (online softmax in the log2 domain)
//   O += P V(n)         wgmma, P from registers, V M/N-major in shared memory
//
// with the softmax of tile n overlapping the P V product of tile n+1 (the
// previous one in walk order): S(n) = Q K(n)^T and O += P(n+1) V(n+1) are
// issued together, the softmax of S(n) runs while the second is in flight,
// and O is rescaled once it has retired. The two consumers also take turns
// issuing their GEMMs (named barriers), so one's softmax overlaps the
// other's tensor-core work. The epilogue normalises O, writes
// lse, stages O through its rows of the Q buffer and stores it with TMA,
// which clips rows past seq_q.
#pragma once

#include "flash_attention/arch_sm90.cuh"
#include "flash_attention/sm90_config.h"
#include "flash_attention/tile.cuh"

namespace llmpre {
namespace cuda {
namespace fa {

// Named barriers of the consumer warpgroups (ids 1..15): the epilogue's, one
// per warpgroup, and the ping-pong turns.
constexpr int kBarFwdStore0 = 1, kBarTurn0 = 3;

template <class T, int D, bool Causal>
FA_GLOBAL void FA_LAUNCH_BOUNDS(384, 1) flash_fwd_sm90_kernel(const FA_GRID_CONSTANT Sm90FwdArgs p) {
#if FA_SM90_ENABLED
  using C = Sm90FwdCfg<D>;
  using L = Sm90FwdSmem<D>;
  constexpr int BM = C::BM, BN = C::BN, S = C::STAGES;
  constexpr int NS = BN / 2, NO = D / 2, KQ = D / 16, KP = BN / 16;
  static_assert(D % 64 == 0 && BN % 16 == 0, "tile shapes");
  const FaArgs& a = p.a;

  unsigned char* sm = smem_base_1024();
  uint16_t* sQ = reinterpret_cast<uint16_t*>(sm + L::kQ);
  uint64_t* bars = reinterpret_cast<uint64_t*>(sm + L::kBars);
  uint64_t* q_full = bars;
  uint64_t* k_full = bars + 1;
  uint64_t* k_empty = k_full + S;
  uint64_t* v_full = k_empty + S;
  uint64_t* v_empty = v_full + S;

  const int tid = thread_idx();
  const int wg = tid / 128;
  const int m_block = grid_x() - 1 - block_x();  // longest (causal) blocks first
  const int h = block_y(), b = block_z(), hk = h / a.group;
  const int m0 = m_block * BM;
  const int off = a.off;

  int key_begin, key_end;
  key_range<Causal>(m0, BM, off, a.seq_k, a.window, key_begin, key_end);
  const int tile_begin = key_begin / BN;
  const int tile_end = key_end > key_begin ? (key_end + BN - 1) / BN : tile_begin;

  if (tid == 0) {
    mbar_init(q_full, 1);
    for (int s = 0; s < S; ++s) {
      mbar_init(k_full + s, 1);
      mbar_init(v_full + s, 1);
      mbar_init(k_empty + s, 2);  // one arrival per consumer warpgroup
      mbar_init(v_empty + s, 2);
    }
    mbar_init_fence();
  }
  sync_threads();

  if (wg == 0) {
    // ---- producer ----
    reg_dealloc<24>();
    if (tid == 0 && tile_end > tile_begin) {
      tma_prefetch_desc(&p.tq);
      tma_prefetch_desc(&p.tk);
      tma_prefetch_desc(&p.tv);
      mbar_arrive_expect_tx(q_full, BM * D * 2);
      for (int c = 0; c < D / 64; ++c) tma_load_4d(sQ + c * BM * 64, &p.tq, 64 * c, h, m0, b, q_full);
      int it = 0;
      for (int n = tile_end - 1; n >= tile_begin; --n, ++it) {
        const int s = it % S, par = (it / S) & 1;
        uint16_t* sK = reinterpret_cast<uint16_t*>(sm + L::kK + s * L::kTile);
        uint16_t* sV = reinterpret_cast<uint16_t*>(sm + L::kV + s * L::kTile);
        mbar_wait(k_empty + s, par ^ 1);
        mbar_arrive_expect_tx(k_full + s, BN * D * 2);
        for (int c = 0; c < D / 64; ++c) tma_load_4d(sK + c * BN * 64, &p.tk, 64 * c, hk, n * BN, b, k_full + s);
        mbar_wait(v_empty + s, par ^ 1);
        mbar_arrive_expect_tx(v_full + s, BN * D * 2);
        for (int c = 0; c < D / 64; ++c) tma_load_4d(sV + c * BN * 64, &p.tv, 64 * c, hk, n * BN, b, v_full + s);
      }
    }
    return;
  }

  // ---- consumers ----
  reg_alloc<240>();
  const int cw = wg - 1;  // rows [64 cw, 64 cw + 64) of the tile
  const int l = tid % 128, w = l / 32, g = (l % 32) / 4, t = l % 4;
  const int row0 = 64 * cw + 16 * w + g;  // this thread's rows: row0 and row0 + 8
  const uint32_t q_addr = smem_u32(sQ) + uint32_t(cw) * 64 * 128;
  const bool has_alibi = a.alibi != nullptr;
  const float slope2 = has_alibi ? ld_f32(a.alibi + h) * kLog2e : 0.f;

  float o[NO];
#pragma unroll
  for (int i = 0; i < NO; ++i) o[i] = 0.f;
  float s[NS];
  uint32_t pr[KP][4];
  float row_max[2] = {-kInf, -kInf}, row_sum[2] = {0.f, 0.f};

  // S = Q K^T for the tile in stage st (issue only).
  auto issue_qk = [&](int st) {
    const uint32_t k_addr = smem_u32(sm + L::kK + st * L::kTile);
    fence_acc(s);
#pragma unroll
    for (int kk = 0; kk < KQ; ++kk) {
      const uint64_t da = kmajor_desc(q_addr + uint32_t(kk / 4) * BM * 128 + uint32_t(kk % 4) * 32);
      const uint64_t db = kmajor_desc(k_addr + uint32_t(kk / 4) * BN * 128 + uint32_t(kk % 4) * 32);
      Wgmma<T, BN>::template ss<0, 0>(s, da, db, kk > 0 ? 1 : 0);
    }
  };
  // O += P V for the tile in stage st (issue only).
  auto issue_pv = [&](int st) {
    const uint32_t v_addr = smem_u32(sm + L::kV + st * L::kTile);
    fence_acc(o);
#pragma unroll
    for (int kk = 0; kk < KP; ++kk) {
      const uint64_t db = mnmajor_desc(v_addr + uint32_t(kk) * 16 * 128, BN);
      Wgmma<T, D>::template rs<1>(o, pr[kk], db, 1);
    }
  };
  // Mask, online softmax of s (tile starting at key n0): s becomes
  // exp2(s - max); returns the factor O must be scaled by.
  auto softmax = [&](int n0, float (&corr)[2]) {
    const bool masked = tile_needs_mask<Causal>(m0, BM, n0, BN, off, a.seq_k, a.window);
#pragma unroll
    for (int i = 0; i < NS; ++i) {
      const int e = i % 4;
      const int pos = m0 + row0 + (e >> 1) * 8 + off;
      const int j = n0 + 8 * (i / 4) + 2 * t + (e & 1);
      float x = s[i] * a.scale_log2;
      if (has_alibi) x += slope2 * float(j - pos);
      if (masked && !visible<Causal>(j, pos, a.seq_k, a.window)) x = -kInf;
      s[i] = x;
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -kInf;
#pragma unroll
      for (int i = 0; i < NS; ++i)
        if ((i % 4) / 2 == hr) mx = fmaxf(mx, s[i]);
      mx = fmaxf(mx, shfl_xor(mx, 1));
      mx = fmaxf(mx, shfl_xor(mx, 2));
      const float m_new = fmaxf(row_max[hr], mx);
      const float m_use = m_new == -kInf ? 0.f : m_new;  // all masked so far: p = 0, no NaN
      corr[hr] = exp2_approx(row_max[hr] - m_use);
      row_max[hr] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < NS; ++i)
        if ((i % 4) / 2 == hr) {
          const float pv = exp2_approx(s[i] - m_use);
          s[i] = pv;
          sum += pv;
        }
      row_sum[hr] = row_sum[hr] * corr[hr] + sum;
    }
  };
  auto rescale_and_convert = [&](const float (&corr)[2]) {
#pragma unroll
    for (int i = 0; i < NO; ++i) o[i] *= corr[(i % 4) / 2];
#pragma unroll
    for (int kk = 0; kk < KP; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) pr[kk][r] = pack2<T>(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
  };

  // Ping-pong between the consumer warpgroups: each issues its GEMMs only on
  // its turn and then hands the turn over, so one warpgroup's softmax runs
  // while the other's GEMMs occupy the tensor cores. Warpgroup 1 hands the
  // first turn to warpgroup 0 and skips its last hand-over (the arrivals on
  // both barriers then balance).
  const int n_tiles = tile_end - tile_begin;
  int phases_left = n_tiles + 1;  // first S, n_tiles - 1 loop steps, last P V
  auto turn_wait = [&] { named_bar_sync(kBarTurn0 + cw, 256); };
  auto turn_pass = [&] {
    if (--phases_left > 0 || cw == 0) named_bar_arrive(kBarTurn0 + (1 - cw), 256);
  };

  if (n_tiles > 0) {
    if (cw == 1) named_bar_arrive(kBarTurn0, 256);
    mbar_wait(q_full, 0);
    int it = 0;
    int n = tile_end - 1;
    // First tile: S, softmax, P.
    mbar_wait(k_full, 0);
    turn_wait();
    wgmma_fence();
    issue_qk(0);
    wgmma_commit();
    turn_pass();
    wgmma_wait<0>();
    fence_acc(s);
    if (l == 0) mbar_arrive(k_empty);
    {
      float corr[2];
      softmax(n * BN, corr);
      rescale_and_convert(corr);
    }
    for (--n; n >= tile_begin; --n, ++it) {
      const int cur = it % S, cur_par = (it / S) & 1;
      const int nxt = (it + 1) % S, nxt_par = ((it + 1) / S) & 1;
      mbar_wait(k_full + nxt, nxt_par);
      mbar_wait(v_full + cur, cur_par);
      turn_wait();
      wgmma_fence();
      issue_qk(nxt);
      wgmma_commit();
      fence_regs(pr);
      wgmma_fence();
      issue_pv(cur);
      wgmma_commit();
      turn_pass();
      wgmma_wait<1>();  // S(n) done; P V of the previous tile may still run
      fence_acc(s);
      if (l == 0) mbar_arrive(k_empty + nxt);
      float corr[2];
      softmax(n * BN, corr);
      wgmma_wait<0>();
      fence_acc(o);
      if (l == 0) mbar_arrive(v_empty + cur);
      rescale_and_convert(corr);
    }
    const int cur = it % S, cur_par = (it / S) & 1;
    mbar_wait(v_full + cur, cur_par);
    turn_wait();
    fence_regs(pr);
    wgmma_fence();
    issue_pv(cur);
    wgmma_commit();
    turn_pass();
    wgmma_wait<0>();
    fence_acc(o);
    if (l == 0) mbar_arrive(v_empty + cur);
  }

  // ---- epilogue ----
  float inv[2];
  float* lse_row = a.lse + (int64_t(b) * a.heads + h) * a.seq_q;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float lsum = row_sum[hr];
    lsum += shfl_xor(lsum, 1);
    lsum += shfl_xor(lsum, 2);
    inv[hr] = lsum > 0.f ? 1.f / lsum : 0.f;
    const int r = m0 + row0 + hr * 8;
    if (t == 0 && r < a.seq_q) st_f32(lse_row + r, lsum > 0.f ? (row_max[hr] + log2f(lsum)) * kLn2 : -kInf);
  }
  // O (rows of this warpgroup) into its rows of the Q buffer, then TMA.
  unsigned char* sO = reinterpret_cast<unsigned char*>(sQ);
#pragma unroll
  for (int i = 0; i < NO; i += 2) {
    const int e = i % 4;
    const int r = row0 + (e >> 1) * 8, c = 8 * (i / 4) + 2 * t;
    st_u32(sO + sw128_offset(r, c, BM), pack2<T>(o[i] * inv[e >> 1], o[i + 1] * inv[e >> 1]));
  }
  fence_proxy_async();
  named_bar_sync(kBarFwdStore0 + cw, 128);
  if (l == 0) {
    for (int c = 0; c < D / 64; ++c)
      tma_store_4d(&p.to, sO + c * BM * 128 + cw * 64 * 128, 64 * c, h, m0 + 64 * cw, b);
    tma_store_commit();
    tma_store_wait_all();
  }
#else
  __trap();
#endif
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
