// Internal to cuda/grouped_gemm: the per-group arrays the setup kernels write into the
// workspace, and one CUTLASS grouped GEMM type per operand layout. Each layout is run from its
// own translation unit (grouped_gemm_{nn,nt,tn}.cu) so the three heavy instantiations compile
// in parallel; grouped_gemm.cu holds the launchers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cutlass/bfloat16.h"
#include "cutlass/gemm_coord.h"
#include "cutlass/layout/matrix.h"

namespace llmpre {
namespace cuda {
namespace grouped {

using Element = cutlass::bfloat16_t;
using LongIndex = typename cutlass::layout::RowMajor::Stride::LongIndex;
constexpr int kAlignment = 8;  // bf16 elements per 128-bit access

// The workspace: one array of each kind, `experts` entries, each 16-byte aligned.
struct Arrays {
  cutlass::gemm::GemmCoord* sizes;
  Element** a;
  Element** b;
  Element** c;
  LongIndex* lda;
  LongIndex* ldb;
  LongIndex* ldc;
};

// The operand layouts: kNN c = a @ b, kNT c = a @ b^T, kTN c = a^T @ b.
enum class Layouts { kNN, kNT, kTN };

// Runs CUTLASS's grouped GEMM of that layout on the groups `w` describes (written on the
// device by a setup kernel): D = alpha * A B + beta * C with C = D (beta 0 or 1).
template <Layouts L>
void run(const Arrays& w, int64_t experts, float beta, cudaStream_t stream);
template <>
void run<Layouts::kNN>(const Arrays& w, int64_t experts, float beta, cudaStream_t stream);
template <>
void run<Layouts::kNT>(const Arrays& w, int64_t experts, float beta, cudaStream_t stream);
template <>
void run<Layouts::kTN>(const Arrays& w, int64_t experts, float beta, cudaStream_t stream);

}  // namespace grouped
}  // namespace cuda
}  // namespace llmpre
