// CPU flash attention forward: one work item per (batch, head, query tile),
// online softmax over the key tiles of the visible band.
//
// Per item the query tile is packed once, transposed and scaled, Q^T [d x bq].
// Each key tile then gives the transposed scores S^T = K Q^T [nk x bq] (K is
// read in place when fp32), so the softmax statistics of a query are a column
// reduction (vertical SIMD), and O += P V reads P^T through gemm's strided A.
#include "flash_attention/flash_attention_tiles.h"

namespace llmpre::kernels {

namespace flash_attention_impl {

namespace {
void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("flash_attention: " + what);
}
}  // namespace

void check_params(const FlashAttentionFwdParams& p, bool backward) {
  require(p.batch >= 0 && p.seq_q >= 0 && p.seq_k >= 0, "batch, seq_q and seq_k must be >= 0");
  require(p.heads >= 1 && p.kv_heads >= 1 && p.heads % p.kv_heads == 0,
          "heads (" + std::to_string(p.heads) + ") must be a positive multiple of kv_heads (" +
              std::to_string(p.kv_heads) + ")");
  require(p.head_dim >= 1 && p.v_head_dim >= 1, "head_dim and v_head_dim must be >= 1");
  require(std::isfinite(p.scale) && p.scale > 0.f, "scale must be a positive finite number");
  check_dtype(p.dtype, "flash_attention");
  const bool has_q = p.batch * p.seq_q > 0, has_k = p.batch * p.seq_k > 0;
  require(!has_q || (p.q && p.out && p.lse), "q, out and lse must not be null");
  require(!has_k || (p.k && p.v), "k and v must not be null");
  if (backward) {
    const auto& b = static_cast<const FlashAttentionBwdParams&>(p);
    require(!has_q || (b.dout && b.dq), "dout and dq must not be null");
    require(!has_k || (b.dk && b.dv), "dk and dv must not be null");
  }
}

}  // namespace flash_attention_impl

using namespace flash_attention_impl;

namespace {
constexpr int64_t kBlockQ = 64;  // queries per work item (a multiple of kNR)
constexpr int64_t kBlockK = 64;  // keys per tile
}  // namespace

void flash_attention_forward(const FlashAttentionFwdParams& p) {
  check_params(p, false);
  if (p.batch * p.seq_q == 0) return;
  const TileOps& ops = tile_ops();
  const int64_t H = p.heads, KV = p.kv_heads, groups = H / KV;
  const int64_t d = p.head_dim, dv = p.v_head_dim, dv_pad = round_up(dv, kNR);
  const int64_t sq = p.seq_q, sk = p.seq_k, off = query_offset(p);  // query i sits at key position i + off
  const bool v_in_place = p.dtype == DType::kFloat32 && dv % kNR == 0;

  const int64_t n_qtiles = ceil_div(sq, kBlockQ);
  const int64_t n_bh = p.batch * H;
  const int64_t n_items = n_bh * n_qtiles;
  const int workers = static_cast<int>(std::min<int64_t>(max_threads(), n_items));

  // Per-worker scratch, all fp32.
  const int64_t sz_qt = d * kBlockQ, sz_st = kBlockK * kBlockQ, sz_k = kBlockK * d;
  const int64_t sz_v = kBlockK * dv_pad, sz_o = kBlockQ * dv_pad, sz_stat = kBlockQ;
  const int64_t per_worker = sz_qt + sz_st + sz_k + sz_v + 2 * sz_o + 2 * sz_stat;
  std::vector<float> scratch(static_cast<size_t>(per_worker) * workers);
  std::vector<double> row_sums(static_cast<size_t>(sz_stat) * workers);

  parallel_items(n_items, workers, [&](int64_t item, int w) {
    // Largest tiles first (under a causal mask the last query tiles see the most keys).
    const int64_t t = n_qtiles - 1 - item / n_bh;
    const int64_t bh = item % n_bh, b = bh / H, h = bh % H, g = h / groups;
    float* qt = scratch.data() + static_cast<size_t>(per_worker) * w;
    float* st = qt + sz_qt;
    float* kbuf = st + sz_st;
    float* vbuf = kbuf + sz_k;
    float* o = vbuf + sz_v;
    float* pv = o + sz_o;  // this key tile's P V, before add_tile
    float* m = pv + sz_o;
    float* alpha = m + sz_stat;
    double* l = row_sums.data() + static_cast<size_t>(sz_stat) * w;

    const int64_t i0 = t * kBlockQ, nq = std::min(kBlockQ, sq - i0), nq_pad = round_up(nq, kNR);
    const int64_t p_lo = i0 + off, p_hi = i0 + nq - 1 + off;
    int64_t klo, khi;
    key_range(p, p_lo, p_hi, &klo, &khi);

    // Q^T, scaled: qt[c * nq_pad + i] = scale * q[b, i0 + i, h, c]; padding columns 0.
    std::fill(qt, qt + d * nq_pad, 0.f);
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t q_off = ((b * sq + i0 + i) * H + h) * d;
      if (p.dtype == DType::kFloat32) {
        const float* src = static_cast<const float*>(p.q) + q_off;
        for (int64_t c = 0; c < d; ++c) qt[c * nq_pad + i] = p.scale * src[c];
      } else {
        const bf16* src = static_cast<const bf16*>(p.q) + q_off;
        for (int64_t c = 0; c < d; ++c) qt[c * nq_pad + i] = p.scale * to_float(src[c]);
      }
    }
    std::fill(m, m + nq_pad, kNegInf);
    std::fill(l, l + nq_pad, 0.0);
    std::fill(o, o + nq * dv_pad, 0.f);

    TileMask mk;
    mk.causal = p.causal;
    mk.window = p.window > 0 ? p.window : 0;
    mk.alibi = p.alibi_slopes != nullptr;
    mk.slope = mk.alibi ? p.alibi_slopes[h] : 0.f;

    for (int64_t j0 = klo; j0 <= khi; j0 += kBlockK) {
      const int64_t nk = std::min(kBlockK, khi + 1 - j0);
      mk.check = !all_visible(p, j0, j0 + nk - 1, p_lo, p_hi);
      const int64_t k_row0 = (b * sk + j0) * KV + g;  // row index of key j0 in [b*sk*KV] rows

      // S^T = K Q^T: [nk x nq_pad].
      const float* a = kbuf;
      int64_t rsa = d;
      if (p.dtype == DType::kFloat32) {
        a = static_cast<const float*>(p.k) + k_row0 * d;
        rsa = KV * d;
      } else {
        for (int64_t r = 0; r < nk; ++r)
          load_row(offset(p.k, (k_row0 + r * KV) * d, p.dtype), p.dtype, d, d, 1.f, kbuf + r * d);
      }
      ops.gemm(nk, nq_pad, d, a, rsa, 1, qt, nq_pad, st, nq_pad, false);
      ops.fwd_softmax(st, nq_pad, nk, nq_pad, j0 - p_lo, mk, m, l, alpha);

      // O = alpha * O + P V with P = (S^T)^T: A(i, j) = st[j * nq_pad + i].
      const float* bv = vbuf;
      int64_t ldv = dv_pad;
      if (v_in_place) {
        bv = static_cast<const float*>(p.v) + k_row0 * dv;
        ldv = KV * dv;
      } else {
        for (int64_t r = 0; r < nk; ++r)
          load_row(offset(p.v, (k_row0 + r * KV) * dv, p.dtype), p.dtype, dv, dv_pad, 1.f,
                   vbuf + r * dv_pad);
      }
      ops.gemm(nq, dv_pad, nk, st, 1, nq_pad, bv, ldv, pv, dv_pad, false);
      add_tile(o, dv_pad, pv, dv_pad, nq, dv_pad, alpha);
    }

    for (int64_t i = 0; i < nq; ++i) {
      const bool any = l[i] > 0.0;
      store_row(o + i * dv_pad, dv, any ? static_cast<float>(1.0 / l[i]) : 0.f, p.dtype,
                offset(p.out, ((b * sq + i0 + i) * H + h) * dv, p.dtype));
      p.lse[(b * H + h) * sq + i0 + i] =
          any ? static_cast<float>(static_cast<double>(m[i]) + std::log(l[i])) : kNegInf;
    }
  });
}

}  // namespace llmpre::kernels
