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

// C[m x n] = (accumulate ? C : 0) + A[m x k] B[k x n]; A(r, c) = a[r * rsa + c * csa] and
// B(r, c) = b[r * rsb + c * csb] (either may be a transposed view), C row r at c + r * ldc.
using GemmFn = void (*)(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
                        const float* b, int64_t rsb, int64_t csb, float* c, int64_t ldc, bool accumulate);

constexpr int64_t kKc = 256;  // k-block: a 16-column B panel of kKc rows is 16 KiB

// ---- portable ---------------------------------------------------------------------

void gemm_cols_baseline(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* a, int64_t rsa,
                        int64_t csa, const float* b, int64_t rsb, int64_t csb, float* c, int64_t ldc,
                        bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    float* __restrict crow = c + i * ldc;
    if (!accumulate) std::fill(crow + j0, crow + j1, 0.f);
    for (int64_t kk = 0; kk < k; ++kk) {
      const float av = a[i * rsa + kk * csa];
      const float* __restrict brow = b + kk * rsb;
      if (csb == 1)
        for (int64_t j = j0; j < j1; ++j) crow[j] += av * brow[j];
      else
        for (int64_t j = j0; j < j1; ++j) crow[j] += av * brow[j * csb];
    }
  }
}

void gemm_baseline(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa, const float* b,
                   int64_t rsb, int64_t csb, float* c, int64_t ldc, bool accumulate) {
  gemm_cols_baseline(m, 0, n, k, a, rsa, csa, b, rsb, csb, c, ldc, accumulate);
}

#if LLMPRE_HAVE_AVX2_PATH
// ---- AVX2 + FMA -----------------------------------------------------------------

#define LLMPRE_AVX2 __attribute__((target("avx2,fma")))

using micro::micro_avx2;   // common/micro_gemm.h


// Both operands are packed per k-block (the BLIS layout): A into 6-row slivers
// (apack[(i / 6) * 6 kc + kk * 6 + r]), B into kc x 16 panels, so the micro-kernel streams
// two contiguous buffers whatever the strides (a transposed A or B costs one packing pass,
// no separate transpose and no new cache line per k step).
LLMPRE_AVX2 void gemm_avx2(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
                           const float* b, int64_t rsb, int64_t csb, float* c, int64_t ldc, bool accumulate) {
  const int64_t n16 = n / 16 * 16, m6 = (m + 5) / 6 * 6;
  thread_local std::vector<float> apack;
  if (n16 > 0 && apack.size() < size_t(m6 * std::min(kKc, k))) apack.resize(size_t(m6 * std::min(kKc, k)));
  for (int64_t k0 = 0; k0 < k; k0 += kKc) {
    const int64_t kc = std::min(kKc, k - k0);
    const bool acc = accumulate || k0 > 0;
    const float* ak = a + k0 * csa;
    const float* bk = b + k0 * rsb;
    if (n16 > 0) {
      for (int64_t i = 0; i < m6; i += 6) {
        float* dst = apack.data() + i * kc;
        for (int64_t r = 0; r < 6; ++r) {
          if (i + r < m) {
            const float* src = ak + (i + r) * rsa;
            for (int64_t kk = 0; kk < kc; ++kk) dst[kk * 6 + r] = src[kk * csa];
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
    if (n16 < n) gemm_cols_baseline(m, n16, n, kc, ak, rsa, csa, bk, rsb, csb, c, ldc, acc);
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

void check(const GroupedMlpParams& p, const int64_t* offsets, const char* fn,
           std::initializer_list<const void*> buffers) {
  const std::string f(fn);
  if (p.dtype != DType::kFloat32)
    throw std::invalid_argument(f + ": dtype must be float32 (bf16 grouped MLPs take the reference op), got " +
                                dtype_name(p.dtype));
  if (p.rows < 0 || p.hidden <= 0 || p.inter <= 0 || p.experts <= 0)
    throw std::invalid_argument(f + ": need rows >= 0 and hidden, inter, experts > 0, got rows " +
                                std::to_string(p.rows) + ", hidden " + std::to_string(p.hidden) + ", inter " +
                                std::to_string(p.inter) + ", experts " + std::to_string(p.experts));
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

void grouped_mlp_forward(const GroupedMlpParams& p, const void* x_, const int64_t* offsets,
                         const void* const* wg_, const void* const* wu_, const void* const* wd_, void* out_,
                         void* gate_, void* up_) {
  using namespace grouped_mlp_impl;
  check(p, offsets, "grouped_mlp_forward", {x_, wg_, wu_, wd_, out_, gate_, up_});
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
    const float* xe = x + r0 * h;
    float *ge = gate + r0 * n_i, *ue = up + r0 * n_i;
    gemm(ne, n_i, h, xe, h, 1, weight(wg_, e), n_i, 1, ge, n_i, false);   // [ne, I]
    gemm(ne, n_i, h, xe, h, 1, weight(wu_, e), n_i, 1, ue, n_i, false);   // [ne, I]
    auto act = scratch(ne * n_i);
    swiglu(ge, ue, act.get(), ne * n_i);
    gemm(ne, h, n_i, act.get(), n_i, 1, weight(wd_, e), h, 1, out + r0 * h, h, false);  // [ne, h]
  });
}

void grouped_mlp_backward(const GroupedMlpParams& p, const void* x_, const int64_t* offsets,
                          const void* const* wg_, const void* const* wu_, const void* const* wd_, const void* gate_,
                          const void* up_, const void* dout_, void* dx_, void* const* dwg_, void* const* dwu_,
                          void* const* dwd_) {
  using namespace grouped_mlp_impl;
  check(p, offsets, "grouped_mlp_backward", {x_, wg_, wu_, wd_, gate_, up_, dout_, dx_, dwg_, dwu_, dwd_});
  check_experts(p, "grouped_mlp_backward", {wg_, wu_, wd_, dwg_, dwu_, dwd_});
  const int64_t h = p.hidden, n_i = p.inter;
  const float* x = static_cast<const float*>(x_);
  const float *gate = static_cast<const float*>(gate_), *up = static_cast<const float*>(up_);
  const float* dout = static_cast<const float*>(dout_);
  float* dx = static_cast<float*>(dx_);
  auto weight = [](const void* const* w, int64_t e) { return static_cast<const float*>(w[e]); };
  auto grad = [](void* const* g, int64_t e) { return static_cast<float*>(g[e]); };
  const GemmFn gemm = gemm_fn();
  const int64_t kept = offsets[p.experts];
  std::fill(dx + kept * h, dx + p.rows * h, 0.f);
  for_each_expert(p, [&](int64_t e, int) {
    const int64_t r0 = offsets[e], ne = offsets[e + 1] - r0;
    float *dwg_e = grad(dwg_, e), *dwu_e = grad(dwu_, e), *dwd_e = grad(dwd_, e);
    if (ne == 0) {
      std::fill(dwg_e, dwg_e + h * n_i, 0.f);
      std::fill(dwu_e, dwu_e + h * n_i, 0.f);
      std::fill(dwd_e, dwd_e + n_i * h, 0.f);
      return;
    }
    const float *xe = x + r0 * h, *ge = gate + r0 * n_i, *ue = up + r0 * n_i, *dye = dout + r0 * h;
    // Transposed operands are strided views; the GEMM's packing reads them once per k-block.
    auto act = scratch(ne * n_i), dg = scratch(ne * n_i), du = scratch(ne * n_i);
    const float *wg_e = weight(wg_, e), *wu_e = weight(wu_, e), *wd_e = weight(wd_, e);
    swiglu(ge, ue, act.get(), ne * n_i);
    gemm(n_i, h, ne, act.get(), 1, n_i, dye, h, 1, dwd_e, h, false);        // dWd = act^T dY  [I, h]
    gemm(ne, n_i, h, dye, h, 1, wd_e, 1, h, dg.get(), n_i, false);          // d act = dY Wd^T [ne, I]
    swiglu_grad(ge, ue, dg.get(), du.get(), ne * n_i);
    gemm(h, n_i, ne, xe, 1, h, dg.get(), n_i, 1, dwg_e, n_i, false);        // dWg = X^T dG [h, I]
    gemm(h, n_i, ne, xe, 1, h, du.get(), n_i, 1, dwu_e, n_i, false);        // dWu = X^T dU [h, I]
    gemm(ne, h, n_i, dg.get(), n_i, 1, wg_e, 1, n_i, dx + r0 * h, h, false);  // dX = dG Wg^T
    gemm(ne, h, n_i, du.get(), n_i, 1, wu_e, 1, n_i, dx + r0 * h, h, true);   //    + dU Wu^T
  });
}

}  // namespace llmpre::kernels
