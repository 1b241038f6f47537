// Tile operations of the CPU flash attention, twice: portable loops (any
// CPU; the compiler vectorises them for the baseline ISA) and AVX2+FMA
// intrinsics compiled through target attributes, so the library still runs on
// any x86-64 and picks the fast path at run time (common/isa.h).
//
// Why intrinsics for the AVX2 path: the gemm needs a register-blocked
// micro-kernel (12 accumulators), which GCC does not produce from loops; even
// an array of __m256 accumulators was spilled to the stack on every step
// (whole forward pass ~2x slower). With named registers and one A pointer the
// micro-kernel runs ~80 GFLOP/s on 64x64x64 tiles (one Zen 3 core; six A
// pointers: 54). On the whole forward + backward (one thread, seq 1024,
// head_dim 64) the portable path measured 3-5x slower than the AVX2 one.
#include "flash_attention/flash_attention_tiles.h"

#include "common/isa.h"
#include "common/micro_gemm.h"
#include "common/vmath.h"

#if LLMPRE_HAVE_AVX2_PATH
#include <immintrin.h>
#endif

namespace llmpre::kernels::flash_attention_impl {
namespace {

inline bool visible(const TileMask& mk, int64_t rel) {
  return (!mk.causal || rel <= 0) && (mk.window <= 0 || rel > -mk.window);
}

// ---- portable ---------------------------------------------------------------------

void gemm_baseline(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
                  const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    float* __restrict crow = c + i * ldc;
    if (!accumulate) std::fill(crow, crow + n, 0.f);
    for (int64_t kk = 0; kk < k; ++kk) {
      const float av = a[i * rsa + kk * csa];
      const float* __restrict brow = b + kk * ldb;
      for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
    }
  }
}

void fwd_softmax_baseline(float* st, int64_t ld, int64_t nk, int64_t ncols, int64_t rel0,
                          const TileMask& mk, float* m, double* l, float* alpha) {
  constexpr int64_t kCols = 64;  // columns per pass; the loops over them vectorise
  for (int64_t c0 = 0; c0 < ncols; c0 += kCols) {
    const int64_t nc = std::min(kCols, ncols - c0);
    float mx[kCols], msub[kCols];
    double sum[kCols];
    for (int64_t c = 0; c < nc; ++c) mx[c] = m[c0 + c];
    for (int64_t r = 0; r < nk; ++r) {
      float* row = st + r * ld + c0;
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t rel = rel0 + r - (c0 + c);
        float s = row[c];
        if (mk.alibi) s += mk.slope * static_cast<float>(rel);
        if (mk.check && !visible(mk, rel)) s = kNegInf;
        row[c] = s;
        mx[c] = std::max(mx[c], s);
      }
    }
    for (int64_t c = 0; c < nc; ++c) {
      msub[c] = mx[c] == kNegInf ? 0.f : mx[c];
      alpha[c0 + c] = exp_f(m[c0 + c] - msub[c]);
      m[c0 + c] = mx[c];
      sum[c] = 0.0;
    }
    for (int64_t r = 0; r < nk; ++r) {
      float* row = st + r * ld + c0;
      for (int64_t c = 0; c < nc; ++c) {
        row[c] = exp_f(row[c] - msub[c]);
        sum[c] += row[c];
      }
    }
    for (int64_t c = 0; c < nc; ++c) l[c0 + c] = l[c0 + c] * alpha[c0 + c] + sum[c];
  }
}

void bwd_probs_baseline(float* s, int64_t ld, int64_t nq, int64_t nk, int64_t ncols, int64_t rel0,
                       const TileMask& mk, const float* lse) {
  for (int64_t r = 0; r < nq; ++r) {
    float* row = s + r * ld;
    for (int64_t c = 0; c < ncols; ++c) {
      const int64_t rel = rel0 + c - r;
      if (c >= nk || (mk.check && !visible(mk, rel))) {
        row[c] = 0.f;
        continue;
      }
      float x = row[c];
      if (mk.alibi) x += mk.slope * static_cast<float>(rel);
      row[c] = exp_f(x - lse[r]);
    }
  }
}

#if LLMPRE_HAVE_AVX2_PATH
// ---- AVX2 + FMA -----------------------------------------------------------------

#define LLMPRE_AVX2 __attribute__((target("avx2,fma")))

// e^x for x <= 88 to ~2 ulp; exactly 0 below -87.33 (so masked scores, which
// are -inf, give 0) and NaN stays NaN. Range reduction x = n ln2 + r with
// |r| <= ln2/2 (ln2 split in two for exactness), then e^r by its Taylor
// polynomial to degree 7 (truncation < 1e-8 relative on that interval).
LLMPRE_AVX2 inline __m256 exp_avx2(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.0f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));  // NaN passes through (second operand)
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.98412698e-4f);  // 1/7!
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.38888889e-3f));  // 1/6!
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.33333333e-3f));  // 1/5!
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.16666667e-2f));  // 1/4!
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.66666667e-1f));  // 1/3!
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

// All-ones lanes where a key at distance rel (exact small integers as floats) is visible.
LLMPRE_AVX2 inline __m256 visible_avx2(const TileMask& mk, __m256 rel) {
  __m256 vis = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  if (mk.causal) vis = _mm256_and_ps(vis, _mm256_cmp_ps(rel, _mm256_setzero_ps(), _CMP_LE_OQ));
  if (mk.window > 0)
    vis = _mm256_and_ps(vis, _mm256_cmp_ps(rel, _mm256_set1_ps(-static_cast<float>(mk.window)),
                                           _CMP_GT_OQ));
  return vis;
}

using micro::micro_avx2;   // common/micro_gemm.h

LLMPRE_AVX2 void gemm_avx2(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa,
                           int64_t csa, const float* b, int64_t ldb, float* c, int64_t ldc,
                           bool accumulate) {
  for (int64_t j = 0; j < n; j += kNR)
    for (int64_t i = 0; i < m; i += 6)
      micro_avx2(k, static_cast<int>(std::min<int64_t>(6, m - i)), a + i * rsa, rsa, csa, b + j,
                 ldb, c + i * ldc + j, ldc, accumulate);
}

LLMPRE_AVX2 void fwd_softmax_avx2(float* st, int64_t ld, int64_t nk, int64_t ncols, int64_t rel0,
                                  const TileMask& mk, float* m, double* l, float* alpha) {
  const __m256 ninf = _mm256_set1_ps(kNegInf);
  const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 slope = _mm256_set1_ps(mk.slope);
  const bool touch = mk.alibi || mk.check;
  for (int64_t c0 = 0; c0 < ncols; c0 += 8) {
    const __m256 col = _mm256_add_ps(iota, _mm256_set1_ps(static_cast<float>(c0)));
    const __m256 m_old = _mm256_loadu_ps(m + c0);
    __m256 mx = m_old;
    for (int64_t r = 0; r < nk; ++r) {
      float* p = st + r * ld + c0;
      __m256 s = _mm256_loadu_ps(p);
      if (touch) {
        const __m256 rel = _mm256_sub_ps(_mm256_set1_ps(static_cast<float>(rel0 + r)), col);
        if (mk.alibi) s = _mm256_add_ps(s, _mm256_mul_ps(slope, rel));
        if (mk.check) s = _mm256_blendv_ps(ninf, s, visible_avx2(mk, rel));
        _mm256_storeu_ps(p, s);
      }
      mx = _mm256_max_ps(mx, s);
    }
    const __m256 msub = _mm256_andnot_ps(_mm256_cmp_ps(mx, ninf, _CMP_EQ_OQ), mx);
    const __m256 a = exp_avx2(_mm256_sub_ps(m_old, msub));
    // Four partial sums (depth nk/4), then l = l * alpha + sum in float64.
    __m256 sum[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (int64_t r = 0; r < nk; ++r) {
      float* pr = st + r * ld + c0;
      const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(pr), msub));
      _mm256_storeu_ps(pr, e);
      sum[r & 3] = _mm256_add_ps(sum[r & 3], e);
    }
    const __m256 ts = _mm256_add_ps(_mm256_add_ps(sum[0], sum[1]), _mm256_add_ps(sum[2], sum[3]));
    const __m256d lo = _mm256_fmadd_pd(_mm256_loadu_pd(l + c0), _mm256_cvtps_pd(_mm256_castps256_ps128(a)),
                                       _mm256_cvtps_pd(_mm256_castps256_ps128(ts)));
    const __m256d hi = _mm256_fmadd_pd(_mm256_loadu_pd(l + c0 + 4),
                                       _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)),
                                       _mm256_cvtps_pd(_mm256_extractf128_ps(ts, 1)));
    _mm256_storeu_pd(l + c0, lo);
    _mm256_storeu_pd(l + c0 + 4, hi);
    _mm256_storeu_ps(m + c0, mx);
    _mm256_storeu_ps(alpha + c0, a);
  }
}

LLMPRE_AVX2 void bwd_probs_avx2(float* s, int64_t ld, int64_t nq, int64_t nk, int64_t ncols,
                                int64_t rel0, const TileMask& mk, const float* lse) {
  const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 slope = _mm256_set1_ps(mk.slope);
  const __m256 nkv = _mm256_set1_ps(static_cast<float>(nk));
  for (int64_t r = 0; r < nq; ++r) {
    float* row = s + r * ld;
    const __m256 lse_r = _mm256_set1_ps(lse[r]);
    for (int64_t c0 = 0; c0 < ncols; c0 += 8) {
      __m256 x = _mm256_loadu_ps(row + c0);
      const __m256 col = _mm256_add_ps(iota, _mm256_set1_ps(static_cast<float>(c0)));
      __m256 keep = _mm256_cmp_ps(col, nkv, _CMP_LT_OQ);
      if (mk.alibi || mk.check) {
        const __m256 rel = _mm256_add_ps(_mm256_set1_ps(static_cast<float>(rel0 - r)), col);
        if (mk.alibi) x = _mm256_add_ps(x, _mm256_mul_ps(slope, rel));
        if (mk.check) keep = _mm256_and_ps(keep, visible_avx2(mk, rel));
      }
      _mm256_storeu_ps(row + c0, _mm256_and_ps(keep, exp_avx2(_mm256_sub_ps(x, lse_r))));
    }
  }
}

#undef LLMPRE_AVX2
#endif  // LLMPRE_HAVE_AVX2_PATH

const TileOps kBaseline = {gemm_baseline, fwd_softmax_baseline, bwd_probs_baseline};
#if LLMPRE_HAVE_AVX2_PATH
const TileOps kAvx2 = {gemm_avx2, fwd_softmax_avx2, bwd_probs_avx2};
#endif

}  // namespace

const TileOps& tile_ops() {
#if LLMPRE_HAVE_AVX2_PATH
  if (use_avx2()) return kAvx2;
#endif
  return kBaseline;
}

}  // namespace llmpre::kernels::flash_attention_impl
