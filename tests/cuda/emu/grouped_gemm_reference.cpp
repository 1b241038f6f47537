// Tests only: the launchers of cuda/grouped_gemm/grouped_gemm_cuda.h as plain host loops, so
// the emulator build can run cuda/grouped_mlp's sequence of launches (its row kernels and
// SwiGLU are the real CUDA sources; only the CUTLASS GEMMs, which cannot be emulated, are
// replaced). The contract is the header's: per expert's rows, fp32 accumulation, each output
// rounded once to bf16; rows past offsets[experts] zeroed unless accumulating; a weight
// gradient of 0 for an expert without rows. The argument checks are the real launchers' own
// requirements (sizes, multiples of 8, workspace size), so a caller that passes this stand-in
// would pass them too. What it cannot show: CUTLASS's own indexing and nvcc's code.
#include <cuda_bf16.h>   // the emulator's

#include <cstdint>
#include <cstring>
#include <vector>

#include "common/kernel_args.h"
#include "grouped_gemm/grouped_gemm_cuda.h"

namespace llmpre {
namespace cuda {
namespace {

float at(const void* base, int64_t i) { return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]); }
void put(void* base, int64_t i, float v) { static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v); }

void check_offsets(const int64_t* offsets, int64_t experts, int64_t rows, const char* fn) {
  LLMPRE_REQUIRE(offsets[0] == 0 && offsets[experts] <= rows, fn, ": offsets must start at 0 and end at most at rows");
  for (int64_t e = 0; e < experts; ++e)
    LLMPRE_REQUIRE(offsets[e] <= offsets[e + 1], fn, ": offsets must be non-decreasing");
}

}  // namespace

size_t grouped_gemm_workspace_bytes(int64_t experts) { return size_t(experts) * 64 + 16; }

void grouped_gemm_bf16(const GroupedGemmParams& p, cudaStream_t) {
  LLMPRE_REQUIRE(p.rows >= 0 && p.experts > 0 && p.n > 0 && p.k > 0, "grouped_gemm: bad sizes");
  LLMPRE_REQUIRE(p.n % 8 == 0 && p.k % 8 == 0, "grouped_gemm: n and k must be multiples of 8");
  LLMPRE_REQUIRE(p.offsets && p.b && p.workspace && p.workspace_bytes >= grouped_gemm_workspace_bytes(p.experts),
                 "grouped_gemm: offsets, b and a large enough workspace must be set");
  LLMPRE_REQUIRE(aligned16(p.a) && aligned16(p.c), "grouped_gemm: a and c must be 16-byte aligned");
  if (p.rows == 0) return;
  check_offsets(p.offsets, p.experts, p.rows, "grouped_gemm");
  std::vector<float> acc(size_t(p.n));
  for (int64_t e = 0; e < p.experts; ++e) {
    const void* b = p.b[e];
    for (int64_t r = p.offsets[e]; r < p.offsets[e + 1]; ++r) {
      for (int64_t j = 0; j < p.n; ++j) acc[j] = p.accumulate ? at(p.c, r * p.n + j) : 0.0f;
      std::vector<float> prod(size_t(p.n), 0.0f);
      for (int64_t t = 0; t < p.k; ++t) {
        const float x = at(p.a, r * p.k + t);
        for (int64_t j = 0; j < p.n; ++j) prod[j] += x * at(b, p.b_transposed ? j * p.k + t : t * p.n + j);
      }
      for (int64_t j = 0; j < p.n; ++j) put(p.c, r * p.n + j, acc[j] + prod[j]);
    }
  }
  if (!p.accumulate)
    std::memset(static_cast<__nv_bfloat16*>(p.c) + p.offsets[p.experts] * p.n, 0,
                size_t(p.rows - p.offsets[p.experts]) * size_t(p.n) * sizeof(__nv_bfloat16));
}

void grouped_gemm_weight_grad_bf16(const GroupedWeightGradParams& p, cudaStream_t) {
  LLMPRE_REQUIRE(p.rows >= 0 && p.experts > 0 && p.m > 0 && p.n > 0, "grouped_gemm_weight_grad: bad sizes");
  LLMPRE_REQUIRE(p.m % 8 == 0 && p.n % 8 == 0, "grouped_gemm_weight_grad: m and n must be multiples of 8");
  LLMPRE_REQUIRE(p.offsets && p.c && p.workspace && p.workspace_bytes >= grouped_gemm_workspace_bytes(p.experts),
                 "grouped_gemm_weight_grad: offsets, c and a large enough workspace must be set");
  check_offsets(p.offsets, p.experts, p.rows, "grouped_gemm_weight_grad");
  std::vector<float> acc(size_t(p.m * p.n));
  for (int64_t e = 0; e < p.experts; ++e) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t r = p.offsets[e]; r < p.offsets[e + 1]; ++r)
      for (int64_t i = 0; i < p.m; ++i) {
        const float x = at(p.a, r * p.m + i);
        for (int64_t j = 0; j < p.n; ++j) acc[size_t(i * p.n + j)] += x * at(p.b, r * p.n + j);
      }
    for (int64_t i = 0; i < p.m * p.n; ++i) put(p.c[e], i, acc[size_t(i)]);
  }
}

}  // namespace cuda
}  // namespace llmpre
