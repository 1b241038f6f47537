// CPU flash attention backward (FlashAttention-2 recurrences, P recomputed
// from the saved lse):
//   P = exp(S - lse), dV += P^T dO, dP = dO V^T, dS = P * (dP - D) with
//   D_i = rowsum(dO_i * O_i), dK += scale * dS^T Q, dQ += scale * dS K.
// Operand layouts avoid transposes inside the tile loop: per key tile K,
// scale * K^T and V^T are packed once; Q and dO are read in place (fp32 with
// head dims that are multiples of 16, else converted per tile) and P^T, dS^T
// are strided views for the gemm's A operand.
//
// Work items are (batch, kv head, key chunk). An item owns dK and dV of its
// key tiles outright (summed over the query heads of the group in a fixed
// order) and adds the dQ of its keys into its own fp32 slice; the slices are
// summed in chunk order at the end. The chunk count depends on the shapes
// only, so the result is the same for any thread count. With one chunk and
// fp32 dq (the common case: batch * kv_heads >= kMinItems) dQ accumulates
// straight into the output and there is no slice.
#include <memory>

#include "flash_attention/flash_attention_tiles.h"

namespace llmpre::kernels {

using namespace flash_attention_impl;

namespace {
constexpr int64_t kBlockQ = 64;    // queries per tile
constexpr int64_t kBlockK = 64;    // keys per tile (a multiple of kNR)
constexpr int64_t kMinItems = 32;  // split keys into chunks until there are this many items
constexpr int64_t kMaxChunks = 8;  // ... but never more (each chunk costs one fp32 dq slice)
}  // namespace

void flash_attention_backward(const FlashAttentionBwdParams& p) {
  check_params(p, true);
  const int64_t B = p.batch, H = p.heads, KV = p.kv_heads, groups = H / KV;
  const int64_t sq = p.seq_q, sk = p.seq_k, off = query_offset(p);
  const int64_t d = p.head_dim, dv = p.v_head_dim;
  const int64_t d_pad = round_up(d, kNR), dv_pad = round_up(dv, kNR);
  const DType dt = p.dtype;
  const bool in_place = dt == DType::kFloat32 && d == d_pad && dv == dv_pad;
  if (B * sk == 0 && B * sq == 0) return;
  const TileOps& ops = tile_ops();
  const int max_w = max_threads();

  // D[b, h, i] = sum_c dO[b, i, h, c] * O[b, i, h, c] (from the stored O, as
  // FlashAttention-2 does; with bf16 storage its rounding of O is the largest
  // error term of dq when head_dim is tiny) and the lse with -inf (a query
  // that sees nothing) turned into +inf so that exp(s - lse) = 0.
  std::vector<float> D(static_cast<size_t>(B * H * sq)), lse(static_cast<size_t>(B * H * sq));
  {
    const int workers = static_cast<int>(std::min<int64_t>(max_w, B * H));
    std::vector<float> rows(static_cast<size_t>(2 * dv) * std::max(workers, 1));
    parallel_items(B * H, workers, [&](int64_t bh, int w) {
      const int64_t b = bh / H, h = bh % H;
      float* o_row = rows.data() + 2 * dv * w;
      float* do_row = o_row + dv;
      for (int64_t i = 0; i < sq; ++i) {
        const int64_t e = ((b * sq + i) * H + h) * dv;
        load_row(offset(p.out, e, dt), dt, dv, dv, 1.f, o_row);
        load_row(offset(p.dout, e, dt), dt, dv, dv, 1.f, do_row);
        float s = 0.f;
        for (int64_t c = 0; c < dv; ++c) s += o_row[c] * do_row[c];
        D[bh * sq + i] = s;
        const float x = p.lse[bh * sq + i];
        lse[bh * sq + i] = x == kNegInf ? kPosInf : x;
      }
    });
  }

  const int64_t n_ktiles = ceil_div(sk, kBlockK);
  int64_t chunks = std::max<int64_t>(1, std::min({ceil_div(kMinItems, std::max<int64_t>(B * KV, 1)),
                                                  kMaxChunks, n_ktiles}));
  const int64_t tiles_per_chunk = std::max<int64_t>(1, ceil_div(n_ktiles, chunks));
  chunks = std::max<int64_t>(1, ceil_div(n_ktiles, tiles_per_chunk));

  // Where dQ accumulates: row i of head h of batch b in chunk c is
  // acc + c*cs + b*bs + h*hs + i*rs (d_pad floats, the first d meaningful).
  const bool dq_in_place = chunks == 1 && dt == DType::kFloat32 && d == d_pad;
  std::unique_ptr<float[]> dq_slices;
  float* acc;
  int64_t cs, bs, hs, rs;
  if (dq_in_place) {
    acc = static_cast<float*>(p.dq);
    cs = 0, bs = sq * H * d, hs = d, rs = H * d;
  } else {
    dq_slices.reset(new float[static_cast<size_t>(chunks * B * H * sq * d_pad)]);
    acc = dq_slices.get();
    rs = d_pad, hs = sq * d_pad, bs = H * hs, cs = B * bs;
  }

  // Per-worker scratch, all fp32.
  const int64_t sz_kj = kBlockK * d_pad, sz_kjt = d * kBlockK, sz_vjt = dv * kBlockK;
  const int64_t sz_dk = kBlockK * d_pad, sz_dv = kBlockK * dv_pad;
  const int64_t sz_q = kBlockQ * d_pad, sz_do = kBlockQ * dv_pad, sz_s = kBlockQ * kBlockK;
  const int64_t sz_part = std::max(kBlockK * std::max(d_pad, dv_pad), kBlockQ * d_pad);
  const int64_t per_worker =
      sz_kj + sz_kjt + sz_vjt + sz_dk + sz_dv + sz_q + sz_do + 2 * sz_s + 2 * kBlockQ + sz_part;
  const int64_t n_items = B * KV * chunks;
  const int workers = static_cast<int>(std::min<int64_t>(max_w, n_items));
  std::vector<float> scratch(static_cast<size_t>(per_worker) * std::max(workers, 1));

  parallel_items(n_items, workers, [&](int64_t item, int w) {
    const int64_t c = item % chunks, bg = item / chunks, b = bg / KV, g = bg % KV;
    float* kj = scratch.data() + static_cast<size_t>(per_worker) * w;  // K tile [nk x d_pad]
    float* kjt = kj + sz_kj;      // scale * K^T [d x nk_pad]
    float* vjt = kjt + sz_kjt;    // V^T [dv x nk_pad]
    float* dk_acc = vjt + sz_vjt; // [nk x d_pad]
    float* dv_acc = dk_acc + sz_dk;
    float* qbuf = dv_acc + sz_dv; // Q tile [nq x d_pad] (when not read in place)
    float* dobuf = qbuf + sz_q;   // dO tile [nq x dv_pad] (idem)
    float* s = dobuf + sz_do;     // S, then P [nq x nk_pad]
    float* dp = s + sz_s;         // dP, then dS [nq x nk_pad]
    float* lse_t = dp + sz_s;     // [nq]
    float* d_t = lse_t + kBlockQ; // [nq]
    float* part = d_t + kBlockQ;  // one tile pair's dK, dV or dQ, before add_tile

    // This item's dQ slice starts at zero (all rows: the reduction reads them all).
    for (int64_t h = g * groups; h < (g + 1) * groups; ++h)
      for (int64_t i = 0; i < sq; ++i) {
        float* row = acc + c * cs + b * bs + h * hs + i * rs;
        std::fill(row, row + d_pad, 0.f);
      }

    TileMask mk;
    mk.causal = p.causal;
    mk.window = p.window > 0 ? p.window : 0;
    mk.alibi = p.alibi_slopes != nullptr;

    const int64_t t_end = std::min(n_ktiles, (c + 1) * tiles_per_chunk);
    for (int64_t t = c * tiles_per_chunk; t < t_end; ++t) {
      const int64_t j0 = t * kBlockK, nk = std::min(kBlockK, sk - j0), nk_pad = round_up(nk, kNR);
      const int64_t k_row0 = (b * sk + j0) * KV + g;
      for (int64_t r = 0; r < nk; ++r) {
        float* kr = kj + r * d_pad;
        load_row(offset(p.k, (k_row0 + r * KV) * d, dt), dt, d, d_pad, 1.f, kr);
        for (int64_t x = 0; x < d; ++x) kjt[x * nk_pad + r] = p.scale * kr[x];
        float* vr = dv_acc;  // borrowed as a row buffer; zeroed below
        load_row(offset(p.v, (k_row0 + r * KV) * dv, dt), dt, dv, dv, 1.f, vr);
        for (int64_t x = 0; x < dv; ++x) vjt[x * nk_pad + r] = vr[x];
      }
      for (int64_t r = nk; r < nk_pad; ++r) {
        for (int64_t x = 0; x < d; ++x) kjt[x * nk_pad + r] = 0.f;
        for (int64_t x = 0; x < dv; ++x) vjt[x * nk_pad + r] = 0.f;
      }
      std::fill(dk_acc, dk_acc + nk * d_pad, 0.f);
      std::fill(dv_acc, dv_acc + nk * dv_pad, 0.f);

      int64_t pos_lo, pos_hi;
      position_range(p, j0, j0 + nk - 1, &pos_lo, &pos_hi);
      const int64_t ilo = std::max<int64_t>(0, pos_lo - off);
      const int64_t ihi = std::min<int64_t>(sq - 1, pos_hi - off);
      for (int64_t i0 = ilo; i0 <= ihi; i0 += kBlockQ) {
        const int64_t nq = std::min(kBlockQ, ihi + 1 - i0);
        const int64_t p_lo = i0 + off, p_hi = i0 + nq - 1 + off;
        mk.check = !all_visible(p, j0, j0 + nk - 1, p_lo, p_hi);
        for (int64_t h = g * groups; h < (g + 1) * groups; ++h) {
          const int64_t bh = b * H + h;
          mk.slope = mk.alibi ? p.alibi_slopes[h] : 0.f;
          // Q and dO tiles: read in place (row stride H * d) when fp32 with
          // padded widths, else converted into [nq x d_pad] / [nq x dv_pad].
          const float* qa = qbuf;
          const float* doa = dobuf;
          int64_t ldq = d_pad, lddo = dv_pad;
          const int64_t row0 = (b * sq + i0) * H + h;
          if (in_place) {
            qa = static_cast<const float*>(p.q) + row0 * d;
            doa = static_cast<const float*>(p.dout) + row0 * dv;
            ldq = H * d;
            lddo = H * dv;
          } else {
            for (int64_t i = 0; i < nq; ++i) {
              load_row(offset(p.q, (row0 + i * H) * d, dt), dt, d, d_pad, 1.f, qbuf + i * d_pad);
              load_row(offset(p.dout, (row0 + i * H) * dv, dt), dt, dv, dv_pad, 1.f,
                       dobuf + i * dv_pad);
            }
          }
          for (int64_t i = 0; i < nq; ++i) {
            lse_t[i] = lse[bh * sq + i0 + i];
            d_t[i] = D[bh * sq + i0 + i];
          }
          // P = exp(Q (scale K)^T + alibi - lse), 0 where masked or padding.
          ops.gemm(nq, nk_pad, d, qa, ldq, 1, kjt, nk_pad, s, nk_pad, false);
          ops.bwd_probs(s, nk_pad, nq, nk, nk_pad, j0 - p_lo, mk, lse_t);
          // dV += P^T dO.
          ops.gemm(nk, dv_pad, nq, s, 1, nk_pad, doa, lddo, part, dv_pad, false);
          add_tile(dv_acc, dv_pad, part, dv_pad, nk, dv_pad);
          // dP = dO V^T, then dS = P * (dP - D) in place.
          ops.gemm(nq, nk_pad, dv, doa, lddo, 1, vjt, nk_pad, dp, nk_pad, false);
          for (int64_t i = 0; i < nq; ++i) {
            const float* __restrict pr = s + i * nk_pad;
            float* __restrict dr = dp + i * nk_pad;
            const float di = d_t[i];
            for (int64_t x = 0; x < nk_pad; ++x) dr[x] = pr[x] * (dr[x] - di);
          }
          // dK += dS^T Q;  dQ += dS K (both times scale, applied when stored).
          ops.gemm(nk, d_pad, nq, dp, 1, nk_pad, qa, ldq, part, d_pad, false);
          add_tile(dk_acc, d_pad, part, d_pad, nk, d_pad);
          ops.gemm(nq, d_pad, nk, dp, nk_pad, 1, kj, d_pad, part, d_pad, false);
          add_tile(acc + c * cs + b * bs + h * hs + i0 * rs, rs, part, d_pad, nq, d_pad);
        }
      }
      for (int64_t r = 0; r < nk; ++r) {
        store_row(dk_acc + r * d_pad, d, p.scale, dt, offset(p.dk, (k_row0 + r * KV) * d, dt));
        store_row(dv_acc + r * dv_pad, dv, 1.f, dt, offset(p.dv, (k_row0 + r * KV) * dv, dt));
      }
    }
  });

  // dq = scale * sum over chunks, in chunk order; items of 16 rows.
  const int64_t rows = B * sq, row_items = ceil_div(rows, 16);
  const int red_workers = static_cast<int>(std::min<int64_t>(max_w, row_items));
  std::vector<float> sums(static_cast<size_t>(d_pad) * std::max(red_workers, 1));
  parallel_items(row_items, red_workers, [&](int64_t item, int w) {
    float* sum = sums.data() + d_pad * w;
    for (int64_t bi = item * 16; bi < std::min(rows, item * 16 + 16); ++bi) {
      const int64_t b = bi / sq, i = bi % sq;
      for (int64_t h = 0; h < H; ++h) {
        float* first = acc + b * bs + h * hs + i * rs;
        if (dq_in_place) {
          for (int64_t x = 0; x < d; ++x) first[x] *= p.scale;
          continue;
        }
        std::copy(first, first + d, sum);
        for (int64_t c = 1; c < chunks; ++c) {
          const float* part = acc + c * cs + b * bs + h * hs + i * rs;
          for (int64_t x = 0; x < d; ++x) sum[x] += part[x];
        }
        store_row(sum, d, p.scale, dt, offset(p.dq, ((b * sq + i) * H + h) * d, dt));
      }
    }
  });
}

}  // namespace llmpre::kernels
