// Grouped bf16 GEMMs (grouped_gemm_cuda.h): a setup kernel turns the device offsets into
// CUTLASS's per-group problem sizes, pointers and strides, a second zeroes the rows past
// offsets[experts] (forward layouts, when not accumulating), then CUTLASS's grouped GEMM of
// the operand layout (grouped_gemm_{nn,nt,tn}.cu) runs every group.
#include "grouped_gemm/grouped_gemm_cuda.h"

#include <cuda_bf16.h>

#include <cstdint>

#include "common/cuda_check.h"
#include "common/kernel_args.h"
#include "grouped_gemm/grouped_gemm_run.cuh"

namespace llmpre {
namespace cuda {
namespace {

using grouped::Arrays;
using grouped::Element;
using grouped::kAlignment;
using grouped::Layouts;
using grouped::LongIndex;

size_t round16(size_t x) { return (x + 15) / 16 * 16; }

Arrays carve(void* workspace, int64_t experts) {
  char* p = static_cast<char*>(workspace);
  Arrays w;
  w.sizes = reinterpret_cast<cutlass::gemm::GemmCoord*>(p);
  p += round16(sizeof(cutlass::gemm::GemmCoord) * experts);
  w.a = reinterpret_cast<Element**>(p);
  p += round16(sizeof(Element*) * experts);
  w.b = reinterpret_cast<Element**>(p);
  p += round16(sizeof(Element*) * experts);
  w.c = reinterpret_cast<Element**>(p);
  p += round16(sizeof(Element*) * experts);
  w.lda = reinterpret_cast<LongIndex*>(p);
  p += round16(sizeof(LongIndex) * experts);
  w.ldb = reinterpret_cast<LongIndex*>(p);
  p += round16(sizeof(LongIndex) * experts);
  w.ldc = reinterpret_cast<LongIndex*>(p);
  return w;
}

// Rows offsets[e]..offsets[e+1] of a/c against b[e] ([k, n], or [n, k] read transposed).
__global__ void setup_rows(Arrays w, const int64_t* offsets, const void* a, const void* const* b, void* c,
                           int64_t experts, int64_t n, int64_t k, bool b_transposed) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= experts) return;
  const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
  w.sizes[e] = cutlass::gemm::GemmCoord(int(rows), int(n), int(k));
  w.a[e] = const_cast<Element*>(static_cast<const Element*>(a)) + r0 * k;
  w.b[e] = const_cast<Element*>(static_cast<const Element*>(b[e]));
  w.c[e] = static_cast<Element*>(c) + r0 * n;
  w.lda[e] = k;
  w.ldb[e] = b_transposed ? k : n;   // row-major [k, n], or column-major [k, n] = row-major [n, k]
  w.ldc[e] = n;
}

// c[e] [m, n] = a[rows of e]^T @ b[rows of e]: A is a's rows read as a column-major [m, rows_e].
__global__ void setup_weight_grad(Arrays w, const int64_t* offsets, const void* a, const void* b, void* const* c,
                                  int64_t experts, int64_t m, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= experts) return;
  const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
  w.sizes[e] = cutlass::gemm::GemmCoord(int(m), int(n), int(rows));   // k = 0: the tile is written as 0
  w.a[e] = const_cast<Element*>(static_cast<const Element*>(a)) + r0 * m;
  w.b[e] = const_cast<Element*>(static_cast<const Element*>(b)) + r0 * n;
  w.c[e] = static_cast<Element*>(c[e]);
  w.lda[e] = m;
  w.ldb[e] = n;
  w.ldc[e] = n;
}

// c rows offsets[experts]..rows = 0 (16-byte stores; n % 8 == 0).
__global__ void zero_dropped(const int64_t* offsets, int64_t experts, int64_t rows, int64_t n, void* c) {
  const int64_t start = offsets[experts] * n / 8, end = rows * n / 8;
  uint4* out = static_cast<uint4*>(c);
  for (int64_t i = start + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < end;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = make_uint4(0, 0, 0, 0);
}

void check_workspace(const void* workspace, size_t bytes, int64_t experts, const char* fn) {
  LLMPRE_REQUIRE(workspace && aligned16(workspace), fn, ": workspace must be a 16-byte aligned device buffer");
  LLMPRE_REQUIRE(bytes >= grouped_gemm_workspace_bytes(experts), fn, ": workspace has ", bytes,
                 " bytes, needs grouped_gemm_workspace_bytes(experts) = ", grouped_gemm_workspace_bytes(experts));
}

constexpr int kSetupThreads = 128;

}  // namespace

size_t grouped_gemm_workspace_bytes(int64_t experts) {
  return round16(sizeof(cutlass::gemm::GemmCoord) * experts) + 3 * round16(sizeof(void*) * experts) +
         3 * round16(sizeof(LongIndex) * experts);
}

void grouped_gemm_bf16(const GroupedGemmParams& p, cudaStream_t stream) {
  LLMPRE_REQUIRE(p.rows >= 0 && p.experts > 0 && p.n > 0 && p.k > 0,
                 "grouped_gemm: need rows >= 0 and experts, n, k > 0, got rows ", p.rows, ", experts ", p.experts,
                 ", n ", p.n, ", k ", p.k);
  LLMPRE_REQUIRE(p.n % kAlignment == 0 && p.k % kAlignment == 0,
                 "grouped_gemm: n and k must be multiples of 8 (128-bit bf16 loads), got n ", p.n, ", k ", p.k);
  LLMPRE_REQUIRE(p.n <= INT32_MAX && p.k <= INT32_MAX && p.rows <= INT32_MAX,
                 "grouped_gemm: rows, n and k must fit in int32");
  LLMPRE_REQUIRE(p.offsets && p.b, "grouped_gemm: offsets and b must be set");
  check_workspace(p.workspace, p.workspace_bytes, p.experts, "grouped_gemm");
  LLMPRE_REQUIRE(p.rows == 0 || (p.a && p.c), "grouped_gemm: a and c must be set");
  LLMPRE_REQUIRE(aligned16(p.a) && aligned16(p.c), "grouped_gemm: a and c must be 16-byte aligned");
  if (p.rows == 0) return;
  const Arrays w = carve(p.workspace, p.experts);
  setup_rows<<<int((p.experts + kSetupThreads - 1) / kSetupThreads), kSetupThreads, 0, stream>>>(
      w, p.offsets, p.a, p.b, p.c, p.experts, p.n, p.k, p.b_transposed);
  LLMPRE_CUDA_CHECK_LAUNCH();
  if (!p.accumulate) {
    zero_dropped<<<256, 256, 0, stream>>>(p.offsets, p.experts, p.rows, p.n, p.c);
    LLMPRE_CUDA_CHECK_LAUNCH();
  }
  const float beta = p.accumulate ? 1.0f : 0.0f;
  if (p.b_transposed)
    grouped::run<Layouts::kNT>(w, p.experts, beta, stream);
  else
    grouped::run<Layouts::kNN>(w, p.experts, beta, stream);
}

void grouped_gemm_weight_grad_bf16(const GroupedWeightGradParams& p, cudaStream_t stream) {
  LLMPRE_REQUIRE(p.rows >= 0 && p.experts > 0 && p.m > 0 && p.n > 0,
                 "grouped_gemm_weight_grad: need rows >= 0 and experts, m, n > 0, got rows ", p.rows, ", experts ",
                 p.experts, ", m ", p.m, ", n ", p.n);
  LLMPRE_REQUIRE(p.m % kAlignment == 0 && p.n % kAlignment == 0,
                 "grouped_gemm_weight_grad: m and n must be multiples of 8 (128-bit bf16 loads), got m ", p.m,
                 ", n ", p.n);
  LLMPRE_REQUIRE(p.m <= INT32_MAX && p.n <= INT32_MAX && p.rows <= INT32_MAX,
                 "grouped_gemm_weight_grad: rows, m and n must fit in int32");
  LLMPRE_REQUIRE(p.offsets && p.c, "grouped_gemm_weight_grad: offsets and c must be set");
  check_workspace(p.workspace, p.workspace_bytes, p.experts, "grouped_gemm_weight_grad");
  LLMPRE_REQUIRE(p.rows == 0 || (p.a && p.b), "grouped_gemm_weight_grad: a and b must be set");
  LLMPRE_REQUIRE(aligned16(p.a) && aligned16(p.b), "grouped_gemm_weight_grad: a and b must be 16-byte aligned");
  // every expert's c is written, [m, n] zeros for an expert without rows (rows == 0 included)
  const Arrays w = carve(p.workspace, p.experts);
  setup_weight_grad<<<int((p.experts + kSetupThreads - 1) / kSetupThreads), kSetupThreads, 0, stream>>>(
      w, p.offsets, p.a, p.b, p.c, p.experts, p.m, p.n);
  LLMPRE_CUDA_CHECK_LAUNCH();
  grouped::run<Layouts::kTN>(w, p.experts, 0.0f, stream);
}

}  // namespace cuda
}  // namespace llmpre
