// Internal to the CPU flash attention: the tile-level operations that have an
// AVX2+FMA and a portable implementation (flash_attention_tiles.cpp), plus small
// ISA-neutral helpers shared by flash_attention_fwd.cpp and flash_attention_bwd.cpp.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "flash_attention/flash_attention.h"

namespace llmpre::kernels::flash_attention_impl {

// gemm's n (and every padded row length below) is a multiple of this.
constexpr int64_t kNR = 16;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

// How keys relate to queries inside one tile. With rel = key index - query
// position, a key is visible when (!causal || rel <= 0) && (window <= 0 ||
// rel > -window), and ALiBi adds slope * rel.
struct TileMask {
  bool check = false;  // some entry of the tile may be invisible: test each one
  bool causal = false;
  int64_t window = 0;  // > 0 or 0 for none
  bool alibi = false;
  float slope = 0.f;
};

// C[m x n] = (accumulate ? C : 0) + A[m x k] * B[k x n], fp32.
// A(r, c) = a[r * rsa + c * csa] (any strides, so A may be a transposed view);
// B row c starts at b + c * ldb; C row r at c + r * ldc. n % kNR == 0.
using GemmFn = void (*)(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa,
                        int64_t csa, const float* b, int64_t ldb, float* c, int64_t ldc,
                        bool accumulate);

// Forward online-softmax step on a transposed score tile: st[r * ld + c] is
// the score of key (j0 + r) for query column c, rel = rel0 + r - c with
// rel0 = j0 - (position of column 0). Rows nk, columns ncols (% kNR == 0).
// Adds ALiBi, applies the mask, then per column: m_new = max(m, max_r s),
// alpha = exp(m - m_new) (the factor for the old accumulators), st <- exp(s -
// m_new), l = l * alpha + sum_r st, m = m_new. A column with no visible key
// so far keeps m = -inf, l = 0 and gets alpha = 0, P = 0 (no NaN).
// l is carried in float64: the backward pass recomputes P = exp(s - lse)
// without renormalising, so an error in l becomes a bias of every P of the
// row (a float32 running sum over thousands of keys made dK/dV several times
// less accurate than the composed softmax's at seq 2048).
using FwdSoftmaxFn = void (*)(float* st, int64_t ld, int64_t nk, int64_t ncols, int64_t rel0,
                              const TileMask& mask, float* m, double* l, float* alpha);

// Backward probabilities on a score tile s[r * ld + c]: row r is the query at
// position p0 + r, column c the key j0 + c, rel = rel0 + c - r with rel0 =
// j0 - p0. Rows nq, columns ncols (% kNR == 0); columns >= nk are padding.
// s <- exp(s + alibi - lse[r]) for visible entries, 0 otherwise. lse of a row
// without visible keys must be +inf (so that nothing is NaN).
using BwdProbsFn = void (*)(float* s, int64_t ld, int64_t nq, int64_t nk, int64_t ncols,
                            int64_t rel0, const TileMask& mask, const float* lse);

struct TileOps {
  GemmFn gemm;
  FwdSoftmaxFn fwd_softmax;
  BwdProbsFn bwd_probs;
};

// The implementation common/isa.h's use_avx2() selects.
const TileOps& tile_ops();

// ---- storage conversions ------------------------------------------------------

// dst[0..n) = scale * src[0..n) as fp32; dst[n..n_pad) = 0.
inline void load_row(const void* src, DType dt, int64_t n, int64_t n_pad, float scale,
                     float* __restrict dst) {
  if (dt == DType::kFloat32) {
    const float* s = static_cast<const float*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = scale * s[i];
  } else {
    const bf16* s = static_cast<const bf16*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = scale * to_float(s[i]);
  }
  for (int64_t i = n; i < n_pad; ++i) dst[i] = 0.f;
}

// dst[0..n) = scale * src[0..n) in storage dtype dt (bf16: round to nearest even).
inline void store_row(const float* __restrict src, int64_t n, float scale, DType dt, void* dst) {
  if (dt == DType::kFloat32) {
    float* d = static_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = scale * src[i];
  } else {
    bf16* d = static_cast<bf16*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = from_float<bf16>(scale * src[i]);
  }
}

inline size_t elem_size(DType dt) { return dt == DType::kFloat32 ? 4 : 2; }

inline const void* offset(const void* base, int64_t elems, DType dt) {
  return static_cast<const char*>(base) + elems * static_cast<int64_t>(elem_size(dt));
}
inline void* offset(void* base, int64_t elems, DType dt) {
  return static_cast<char*>(base) + elems * static_cast<int64_t>(elem_size(dt));
}

// dst[r][c] = row_scale[r] * dst[r][c] + src[r][c] (row_scale null: 1), for
// rows x cols. Products of one tile pair go to a fresh buffer and are added
// here rather than accumulated by gemm into a long-lived accumulator: the
// sums then run in two levels (<= 64 terms, then one term per tile), which
// keeps dK/dV of the first keys under a causal mask (sums over thousands of
// queries) as accurate as the composed reference.
inline void add_tile(float* __restrict dst, int64_t ldd, const float* __restrict src, int64_t lds,
                     int64_t rows, int64_t cols, const float* row_scale = nullptr) {
  for (int64_t r = 0; r < rows; ++r) {
    float* d = dst + r * ldd;
    const float* s = src + r * lds;
    const float f = row_scale ? row_scale[r] : 1.f;
    for (int64_t c = 0; c < cols; ++c) d[c] = f * d[c] + s[c];
  }
}

// ---- the visible band ---------------------------------------------------------

// Keys visible to at least one query position in [p_lo, p_hi]: [lo, hi]
// (empty when lo > hi).
inline void key_range(const FlashAttentionFwdParams& p, int64_t p_lo, int64_t p_hi, int64_t* lo,
                      int64_t* hi) {
  *lo = p.window > 0 ? std::max<int64_t>(0, p_lo - p.window + 1) : 0;
  *hi = p.causal ? std::min(p.seq_k - 1, p_hi) : p.seq_k - 1;
}

// Query positions that see at least one key in [j_lo, j_hi].
inline void position_range(const FlashAttentionFwdParams& p, int64_t j_lo, int64_t j_hi, int64_t* lo,
                           int64_t* hi) {
  *lo = p.causal ? j_lo : std::numeric_limits<int64_t>::min() / 4;
  *hi = p.window > 0 ? j_hi + p.window - 1 : std::numeric_limits<int64_t>::max() / 4;
}

// Does every (key in [j_lo, j_hi], position in [p_lo, p_hi]) pair see each other?
inline bool all_visible(const FlashAttentionFwdParams& p, int64_t j_lo, int64_t j_hi, int64_t p_lo,
                        int64_t p_hi) {
  if (p.causal && j_hi > p_lo) return false;
  if (p.window > 0 && j_lo <= p_hi - p.window) return false;
  return true;
}

// ---- threads --------------------------------------------------------------------

// Calls f(item, worker) for item in [0, n) on up to `workers` threads of the
// process's OpenMP pool (worker < workers indexes per-thread scratch). Items
// are handed out dynamically (their costs differ under causal masks); each
// item writes disjoint outputs, so the schedule never changes a result.
// f must not throw. Without OpenMP everything runs on the calling thread.
template <class F>
void parallel_items(int64_t n, int workers, const F& f) {
  if (n <= 0) return;
  if (workers <= 1 || n == 1) {
    for (int64_t i = 0; i < n; ++i) f(i, 0);
    return;
  }
#ifdef _OPENMP
  // A shared counter rather than `omp for schedule(dynamic)`: GCC lowers the
  // latter to GOMP_loop_nonmonotonic_* entry points, which the libiomp5 that
  // Paddle ships (and the op library links) does not export.
  std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(workers)
  {
    const int w = omp_get_thread_num();
    for (int64_t i = next++; i < n; i = next++) f(i, w);
  }
#else
  for (int64_t i = 0; i < n; ++i) f(i, 0);
#endif
}

// Checks shared by forward and backward; throws std::invalid_argument naming the field.
void check_params(const FlashAttentionFwdParams& p, bool backward);

}  // namespace llmpre::kernels::flash_attention_impl
