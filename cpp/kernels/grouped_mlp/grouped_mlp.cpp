// Grouped SwiGLU expert MLPs (grouped_mlp.h). Every product is one call of a
// fp32 GEMM with a portable version and an AVX2+FMA one (chosen at run time,
// common/isa.h); the AVX2 GEMM is a register-blocked 6 x 16 micro-kernel over
// k-blocks of kKc so that a 16-column panel of B stays in L1. Experts are
// handed to threads one at a time (an atomic counter); an expert's work is
// done by one thread, so results are the same for any thread count.
#include "grouped_mlp/grouped_mlp.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/isa.h"
#include "common/micro_gemm.h"
#include "common/parallel.h"
#include "common/vmath.h"

#if LLMPRE_HAVE_AVX2_PATH
#include <immintrin.h>
#endif

namespace llmpre::kernels {
namespace grouped_mlp_impl {
namespace baseline {
#include "grouped_mlp/grouped_mlp_body.inc"
}  // namespace baseline
LLMPRE_BEGIN_AVX2
namespace avx2 {
#include "grouped_mlp/grouped_mlp_body.inc"
}  // namespace avx2
LLMPRE_END_AVX2

namespace {

// A[m x k] of a GEMM: A(r, c) = a[R(r) * rs + C(c) * cs], R(r) = rows ? rows[r] : r and
// C(c) = cols ? cols[c] : c. A transposed operand is a strided view; an index gathers rows of
// a matrix (forward: the rows of x, index on R; weight gradients: x^T, index on C) while the
// GEMM packs its A operand, so no gathered copy is made.
struct AView {
  const float* a;
  int64_t rs, cs;
  const int64_t* rows = nullptr;
  const int64_t* cols = nullptr;

  const float* row(int64_t r) const { return a + (rows ? rows[r] : r) * rs; }
  int64_t col(int64_t c) const { return (cols ? cols[c] : c) * cs; }
  AView from_col(int64_t c0) const {   // the view of columns c0.. of this one
    AView v = *this;
    if (cols) v.cols += c0; else v.a += c0 * cs;
    return v;
  }
};

// C[m x n] = (accumulate ? C : 0) + A[m x k] B[k x n]; B(r, c) = b[r * rsb + c * csb] (may be a
// transposed view), C row r at c + r * ldc.
using GemmFn = void (*)(int64_t m, int64_t n, int64_t k, const AView& a, const float* b, int64_t rsb,
                        int64_t csb, float* c, int64_t ldc, bool accumulate);

constexpr int64_t kKc = 256;  // k-block: a 16-column B panel of kKc rows is 16 KiB

// ---- portable ---------------------------------------------------------------------

void gemm_cols_baseline(int64_t m, int64_t j0, int64_t j1, int64_t k, const AView& a, const float* b,
                        int64_t rsb, int64_t csb, float* c, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    float* __restrict crow = c + i * ldc;
    const float* arow = a.row(i);
    if (!accumulate) std::fill(crow + j0, crow + j1, 0.f);
    for (int64_t kk = 0; kk < k; ++kk) {
      const float av = arow[a.col(kk)];
      const float* __restrict brow = b + kk * rsb;
      if (csb == 1)
        for (int64_t j = j0; j < j1; ++j) crow[j] += av * brow[j];
      else
        for (int64_t j = j0; j < j1; ++j) crow[j] += av * brow[j * csb];
    }
  }
}

void gemm_baseline(int64_t m, int64_t n, int64_t k, const AView& a, const float* b, int64_t rsb, int64_t csb,
                   float* c, int64_t ldc, bool accumulate) {
  gemm_cols_baseline(m, 0, n, k, a, b, rsb, csb, c, ldc, accumulate);
}

#if LLMPRE_HAVE_AVX2_PATH
// ---- AVX2 + FMA -----------------------------------------------------------------

#define LLMPRE_AVX2 __attribute__((target("avx2,fma")))

using micro::micro_avx2;   // common/micro_gemm.h


// Both operands are packed per k-block (the BLIS layout): A into 6-row slivers
// (apack[(i / 6) * 6 kc + kk * 6 + r]), B into kc x 16 panels, so the micro-kernel streams
// two contiguous buffers whatever the strides and indices (a transposed or gathered A, or a
// transposed B, costs one packing pass: no separate transpose or gathered copy).
LLMPRE_AVX2 void gemm_avx2(int64_t m, int64_t n, int64_t k, const AView& a, const float* b, int64_t rsb,
                           int64_t csb, float* c, int64_t ldc, bool accumulate) {
  const int64_t n16 = n / 16 * 16, m6 = (m + 5) / 6 * 6;
  thread_local std::vector<float> apack;
  if (n16 > 0 && apack.size() < size_t(m6 * std::min(kKc, k))) apack.resize(size_t(m6 * std::min(kKc, k)));
  for (int64_t k0 = 0; k0 < k; k0 += kKc) {
    const int64_t kc = std::min(kKc, k - k0);
    const bool acc = accumulate || k0 > 0;
    const AView ak = a.from_col(k0);
    const float* bk = b + k0 * rsb;
    if (n16 > 0) {
      for (int64_t i = 0; i < m6; i += 6) {
        float* dst = apack.data() + i * kc;
        for (int64_t r = 0; r < 6; ++r) {
          if (i + r < m) {
            const float* src = ak.row(i + r);
            if (ak.cols)
              for (int64_t kk = 0; kk < kc; ++kk) dst[kk * 6 + r] = src[ak.cols[kk] * ak.cs];
            else
              for (int64_t kk = 0; kk < kc; ++kk) dst[kk * 6 + r] = src[kk * ak.cs];
          } else {
            for (int64_t kk = 0; kk < kc; ++kk) dst[kk * 6 + r] = 0.f;
          }
        }
      }
    }
    for (int64_t j = 0; j < n16; j += 16) {
      alignas(32) float panel[kKc * 16];
      if (csb == 1) {
        for (int64_t kk = 0; kk < kc; ++kk) {
          _mm256_store_ps(panel + kk * 16, _mm256_loadu_ps(bk + kk * rsb + j));
          _mm256_store_ps(panel + kk * 16 + 8, _mm256_loadu_ps(bk + kk * rsb + j + 8));
        }
      } else {
        for (int64_t jj = 0; jj < 16; ++jj) {
          const float* src = bk + (j + jj) * csb;
          for (int64_t kk = 0; kk < kc; ++kk) panel[kk * 16 + jj] = src[kk * rsb];
        }
      }
      for (int64_t i = 0; i < m; i += 6)
        micro_avx2(kc, static_cast<int>(std::min<int64_t>(6, m - i)), apack.data() + i * kc, 1, 6, panel, 16,
                   c + i * ldc + j, ldc, acc);
    }
    if (n16 < n) gemm_cols_baseline(m, n16, n, kc, ak, bk, rsb, csb, c, ldc, acc);
  }
  if (k == 0 && !accumulate)
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.f);
}

#undef LLMPRE_AVX2
#endif  // LLMPRE_HAVE_AVX2_PATH

GemmFn gemm_fn() {
#if LLMPRE_HAVE_AVX2_PATH
  if (use_avx2()) return gemm_avx2;
#endif
  return gemm_baseline;
}

void swiglu(const float* g, const float* u, float* act, int64_t n) {
  if (use_avx2())
    avx2::swiglu_range(g, u, act, n);
  else
    baseline::swiglu_range(g, u, act, n);
}

void swiglu_grad(const float* g, const float* u, float* da, float* du, int64_t n) {
  if (use_avx2())
    avx2::swiglu_grad_range(g, u, da, du, n);
  else
    baseline::swiglu_grad_range(g, u, da, du, n);
}

// Scratch that is written before it is read (no zero fill).
std::unique_ptr<float[]> scratch(int64_t n) { return std::unique_ptr<float[]>(new float[size_t(n)]); }

// Per-expert scratch, one buffer per slot and thread, kept between calls up to kKeep floats
// each: a fresh large allocation faults its pages in on every call (40-60 ms of system time
// per call at 64 experts of 256 x 352, measured), a reused one does not.
constexpr int64_t kKeep = int64_t(4) << 20;   // 16 MiB per slot and thread
enum Slot { kAct, kDGate, kDUp, kRows, kSlots };

class ExpertScratch {
 public:
  float* get(Slot slot, int64_t n) {
    if (n > kKeep) {
      own_[slot] = scratch(n);
      return own_[slot].get();
    }
    thread_local std::vector<float> kept[kSlots];
    if (kept[slot].size() < size_t(n)) kept[slot].resize(size_t(n));
    return kept[slot].data();
  }

 private:
  std::unique_ptr<float[]> own_[kSlots];   // this call's buffers past kKeep
};

void check(const GroupedMlpParams& p, const int64_t* index, const int64_t* offsets, const char* fn,
           std::initializer_list<const void*> buffers) {
  const std::string f(fn);
  if (p.dtype != DType::kFloat32)
    throw std::invalid_argument(f + ": dtype must be float32 (bf16 grouped MLPs take the reference op), got " +
                                dtype_name(p.dtype));
  if (p.rows < 0 || p.tokens < 0 || p.hidden <= 0 || p.inter <= 0 || p.experts <= 0)
    throw std::invalid_argument(f + ": need rows, tokens >= 0 and hidden, inter, experts > 0, got rows " +
                                std::to_string(p.rows) + ", tokens " + std::to_string(p.tokens) + ", hidden " +
                                std::to_string(p.hidden) + ", inter " + std::to_string(p.inter) + ", experts " +
                                std::to_string(p.experts));
  if (index == nullptr && p.tokens != p.rows)
    throw std::invalid_argument(f + ": without an index x must have the " + std::to_string(p.rows) +
                                " rows, got " + std::to_string(p.tokens));
  if (offsets == nullptr) throw std::invalid_argument(f + ": offsets is null");
  for (const void* b : buffers)
    if (b == nullptr && p.rows > 0) throw std::invalid_argument(f + ": a buffer pointer is null");
  if (offsets[0] != 0)
    throw std::invalid_argument(f + ": offsets[0] must be 0, got " + std::to_string(offsets[0]));
  for (int64_t e = 0; e < p.experts; ++e)
    if (offsets[e + 1] < offsets[e])
      throw std::invalid_argument(f + ": offsets must be non-decreasing, got offsets[" + std::to_string(e) +
                                  "] = " + std::to_string(offsets[e]) + " > offsets[" + std::to_string(e + 1) +
                                  "] = " + std::to_string(offsets[e + 1]));
  if (offsets[p.experts] > p.rows)
    throw std::invalid_argument(f + ": offsets[experts] = " + std::to_string(offsets[p.experts]) +
                                " exceeds the " + std::to_string(p.rows) + " rows");
  if (index != nullptr)
    for (int64_t r = 0; r < p.rows; ++r)
      if (index[r] < 0 || index[r] >= p.tokens)
        throw std::invalid_argument(f + ": index[" + std::to_string(r) + "] = " + std::to_string(index[r]) +
                                    " is outside the " + std::to_string(p.tokens) + " rows of x");
}

// dx[t] = the sum of drows[r] over the rows r < kept with index[r] = t, in row order: each
// token's rows are listed first (a counting sort), then every token sums its own (no atomics,
// the same result for any thread count); tokens without rows get 0.
void gather_grad(const int64_t* index, int64_t kept, int64_t tokens, int64_t h, const float* drows, float* dx) {
  std::vector<int64_t> start(static_cast<size_t>(tokens + 1), 0);
  std::vector<int64_t> list(static_cast<size_t>(kept));
  for (int64_t r = 0; r < kept; ++r) ++start[size_t(index[r] + 1)];
  for (int64_t t = 0; t < tokens; ++t) start[size_t(t + 1)] += start[size_t(t)];
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  for (int64_t r = 0; r < kept; ++r) list[size_t(next[size_t(index[r])]++)] = r;
  const int64_t per_token = std::max<int64_t>(1, kept / std::max<int64_t>(1, tokens));
  parallel_for(tokens, grain_for(h * per_token), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* __restrict d = dx + t * h;
      const int64_t b = start[size_t(t)], e = start[size_t(t + 1)];
      if (b == e) {
        std::fill(d, d + h, 0.f);
        continue;
      }
      std::copy(drows + list[size_t(b)] * h, drows + list[size_t(b)] * h + h, d);
      for (int64_t i = b + 1; i < e; ++i) {
        const float* __restrict src = drows + list[size_t(i)] * h;
        for (int64_t j = 0; j < h; ++j) d[j] += src[j];
      }
    }
  });
}

// Every expert's weight (or gradient) buffer pointer is set.
void check_experts(const GroupedMlpParams& p, const char* fn, std::initializer_list<const void* const*> arrays) {
  for (const void* const* array : arrays)
    for (int64_t e = 0; e < p.experts; ++e)
      if (array[e] == nullptr)
        throw std::invalid_argument(std::string(fn) + ": the buffer of expert " + std::to_string(e) + " is null");
}

// Calls f(expert, worker) for every expert on up to max_threads() threads (one
// thread when the whole call is small: waking a second costs more on a busy box).
template <class F>
void for_each_expert(const GroupedMlpParams& p, const F& f) {
  const int64_t work = p.rows * p.hidden * p.inter;
  const int workers = static_cast<int>(std::min<int64_t>(
      {int64_t(max_threads()), p.experts, std::max<int64_t>(1, work / (kMinElementsPerThread * 64))}));
  if (workers <= 1) {
    for (int64_t e = 0; e < p.experts; ++e) f(e, 0);
    return;
  }
#ifdef _OPENMP
  std::atomic<int64_t> next{0};  // not `omp for schedule(dynamic)`: Paddle's libiomp5 lacks GOMP_loop_nonmonotonic_*
#pragma omp parallel num_threads(workers)
  {
    const int w = omp_get_thread_num();
    for (int64_t e = next++; e < p.experts; e = next++) f(e, w);
  }
#else
  for (int64_t e = 0; e < p.experts; ++e) f(e, 0);
#endif
}

}  // namespace
}  // namespace grouped_mlp_impl

void grouped_mlp_forward(const GroupedMlpParams& p, const void* x_, const int64_t* index, const int64_t* offsets,
                         const void* const* wg_, const void* const* wu_, const void* const* wd_, void* out_,
                         void* gate_, void* up_) {
  using namespace grouped_mlp_impl;
  check(p, index, offsets, "grouped_mlp_forward", {x_, wg_, wu_, wd_, out_, gate_, up_});
  check_experts(p, "grouped_mlp_forward", {wg_, wu_, wd_});
  const int64_t h = p.hidden, n_i = p.inter;
  const float* x = static_cast<const float*>(x_);
  auto weight = [](const void* const* w, int64_t e) { return static_cast<const float*>(w[e]); };
  float *out = static_cast<float*>(out_), *gate = static_cast<float*>(gate_), *up = static_cast<float*>(up_);
  const GemmFn gemm = gemm_fn();
  const int64_t kept = offsets[p.experts];
  std::fill(out + kept * h, out + p.rows * h, 0.f);
  std::fill(gate + kept * n_i, gate + p.rows * n_i, 0.f);
  std::fill(up + kept * n_i, up + p.rows * n_i, 0.f);
  for_each_expert(p, [&](int64_t e, int) {
    const int64_t r0 = offsets[e], ne = offsets[e + 1] - r0;
    if (ne == 0) return;
    const AView xe = index ? AView{x, h, 1, index + r0} : AView{x + r0 * h, h, 1};   // the expert's rows [ne, h]
    float *ge = gate + r0 * n_i, *ue = up + r0 * n_i;
    gemm(ne, n_i, h, xe, weight(wg_, e), n_i, 1, ge, n_i, false);   // [ne, I]
    gemm(ne, n_i, h, xe, weight(wu_, e), n_i, 1, ue, n_i, false);   // [ne, I]
    ExpertScratch work;
    float* act = work.get(kAct, ne * n_i);
    swiglu(ge, ue, act, ne * n_i);
    gemm(ne, h, n_i, AView{act, n_i, 1}, weight(wd_, e), h, 1, out + r0 * h, h, false);  // [ne, h]
  });
}

void grouped_mlp_backward(const GroupedMlpParams& p, const void* x_, const int64_t* index, const int64_t* offsets,
                          const void* const* wg_, const void* const* wu_, const void* const* wd_, const void* gate_,
                          const void* up_, const void* dout_, void* dx_, void* const* dwg_, void* const* dwu_,
                          void* const* dwd_, void* workspace) {
  using namespace grouped_mlp_impl;
  check(p, index, offsets, "grouped_mlp_backward", {x_, wg_, wu_, wd_, gate_, up_, dout_, dx_, dwg_, dwu_, dwd_});
  check_experts(p, "grouped_mlp_backward", {wg_, wu_, wd_, dwg_, dwu_, dwd_});
  const int64_t h = p.hidden, n_i = p.inter;
  const float* x = static_cast<const float*>(x_);
  const float *gate = static_cast<const float*>(gate_), *up = static_cast<const float*>(up_);
  const float* dout = static_cast<const float*>(dout_);
  auto weight = [](const void* const* w, int64_t e) { return static_cast<const float*>(w[e]); };
  auto grad = [](void* const* g, int64_t e) { return static_cast<float*>(g[e]); };
  const GemmFn gemm = gemm_fn();
  const int64_t kept = offsets[p.experts];
  // the rows' input gradients: dx itself without an index, else scratch summed per token below
  std::unique_ptr<float[]> rows_grad = index && !workspace ? scratch(kept * h) : nullptr;
  float* drows = !index ? static_cast<float*>(dx_) : workspace ? static_cast<float*>(workspace) : rows_grad.get();
  if (!index) std::fill(drows + kept * h, drows + p.rows * h, 0.f);
  for_each_expert(p, [&](int64_t e, int) {
    const int64_t r0 = offsets[e], ne = offsets[e + 1] - r0;
    float *dwg_e = grad(dwg_, e), *dwu_e = grad(dwu_, e), *dwd_e = grad(dwd_, e);
    if (ne == 0) {
      std::fill(dwg_e, dwg_e + h * n_i, 0.f);
      std::fill(dwu_e, dwu_e + h * n_i, 0.f);
      std::fill(dwd_e, dwd_e + n_i * h, 0.f);
      return;
    }
    const float *ge = gate + r0 * n_i, *ue = up + r0 * n_i, *dye = dout + r0 * h;
    // X^T [h, ne] of the expert's rows, a strided view. With an index the rows are first
    // gathered into the expert's own scratch (ne x h, cache-sized): packing X^T reads a few
    // floats of every row per k-block, which from scattered rows defeats the prefetcher.
    ExpertScratch work;
    float* rows = index ? work.get(kRows, ne * h) : nullptr;
    if (index)
      for (int64_t i = 0; i < ne; ++i) std::copy(x + index[r0 + i] * h, x + index[r0 + i] * h + h, rows + i * h);
    const AView xt{index ? rows : x + r0 * h, 1, h};
    // Transposed operands are strided views; the GEMM's packing reads them once per k-block.
    float *act = work.get(kAct, ne * n_i), *dg = work.get(kDGate, ne * n_i), *du = work.get(kDUp, ne * n_i);
    const float *wg_e = weight(wg_, e), *wu_e = weight(wu_, e), *wd_e = weight(wd_, e);
    swiglu(ge, ue, act, ne * n_i);
    gemm(n_i, h, ne, AView{act, 1, n_i}, dye, h, 1, dwd_e, h, false);      // dWd = act^T dY  [I, h]
    gemm(ne, n_i, h, AView{dye, h, 1}, wd_e, 1, h, dg, n_i, false);        // d act = dY Wd^T [ne, I]
    swiglu_grad(ge, ue, dg, du, ne * n_i);
    gemm(h, n_i, ne, xt, dg, n_i, 1, dwg_e, n_i, false);                   // dWg = X^T dG [h, I]
    gemm(h, n_i, ne, xt, du, n_i, 1, dwu_e, n_i, false);                   // dWu = X^T dU [h, I]
    gemm(ne, h, n_i, AView{dg, n_i, 1}, wg_e, 1, n_i, drows + r0 * h, h, false);  // dX = dG Wg^T
    gemm(ne, h, n_i, AView{du, n_i, 1}, wu_e, 1, n_i, drows + r0 * h, h, true);   //    + dU Wu^T
  });
  if (index) gather_grad(index, kept, p.tokens, h, drows, static_cast<float*>(dx_));
}

}  // namespace llmpre::kernels
