// Internal to cuda/grouped_gemm: the definition of grouped::run for one operand layout,
// included once by each grouped_gemm_{nn,nt,tn}.cu. CUTLASS's grouped kernel on the sm_80
// tensor-core path (mma.sync 16x8x16, 128x128x32 tiles, 4 stages; it also runs on sm_90) with
// the device scheduler (GroupScheduleMode::kDeviceOnly: nothing is precomputed on the host).
#pragma once

#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/kernel_args.h"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/device/gemm_grouped.h"
#include "cutlass/gemm/kernel/default_gemm_grouped.h"
#include "grouped_gemm/grouped_gemm_run.cuh"

namespace llmpre {
namespace cuda {
namespace grouped {

template <class LayoutA, class LayoutB>
using GemmOf = cutlass::gemm::device::GemmGrouped<typename cutlass::gemm::kernel::DefaultGemmGrouped<
    Element, LayoutA, cutlass::ComplexTransform::kNone, kAlignment,         // A
    Element, LayoutB, cutlass::ComplexTransform::kNone, kAlignment,         // B
    Element, cutlass::layout::RowMajor,                                     // C, D
    float,                                                                  // accumulator
    cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
    cutlass::gemm::GemmShape<128, 128, 32>,                                 // threadblock tile
    cutlass::gemm::GemmShape<64, 64, 32>,                                   // warp tile
    cutlass::gemm::GemmShape<16, 8, 16>,                                    // mma.sync
    cutlass::epilogue::thread::LinearCombination<Element, kAlignment, float, float>,
    cutlass::gemm::threadblock::GemmBatchedIdentityThreadblockSwizzle,      // unused by grouped kernels
    4,                                                                      // pipeline stages
    cutlass::gemm::kernel::GroupScheduleMode::kDeviceOnly>::GemmKernel>;

inline void check_cutlass(cutlass::Status s, const char* what, const char* file, int line) {
  if (s != cutlass::Status::kSuccess)
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what + " failed: " +
                             cutlassGetStatusString(s));
}

template <class Gemm>
void run_gemm(const Arrays& w, int64_t experts, float beta, cudaStream_t stream) {
  const int blocks = Gemm::sufficient();   // one wave at full occupancy; the device scheduler hands out tiles
  LLMPRE_REQUIRE(blocks > 0, "grouped_gemm: the device cannot run the CUTLASS grouped kernel (no occupancy)");
  typename Gemm::EpilogueOutputOp::Params epilogue(1.0f, beta);
  using A = typename Gemm::ElementA;
  using B = typename Gemm::ElementB;
  using C = typename Gemm::ElementC;
  typename Gemm::Arguments args(w.sizes, int(experts), blocks, epilogue, reinterpret_cast<A**>(w.a),
                                reinterpret_cast<B**>(w.b), reinterpret_cast<C**>(w.c), reinterpret_cast<C**>(w.c),
                                w.lda, w.ldb, w.ldc, w.ldc);
  Gemm gemm;
  // kDeviceOnly needs no CUTLASS workspace (get_workspace_size is 0).
  check_cutlass(gemm.initialize(args, nullptr, stream), "GemmGrouped::initialize", __FILE__, __LINE__);
  check_cutlass(gemm.run(stream), "GemmGrouped::run", __FILE__, __LINE__);
  LLMPRE_CUDA_CHECK_LAUNCH();
}

}  // namespace grouped
}  // namespace cuda
}  // namespace llmpre
