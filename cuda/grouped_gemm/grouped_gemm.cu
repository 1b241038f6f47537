// Grouped bf16 GEMM (grouped_gemm_cuda.h): a setup kernel turns the device offsets into
// CUTLASS's per-group problem sizes, pointers and strides, a second zeroes the rows past
// offsets[experts], then CUTLASS's grouped GEMM (device scheduler) runs every group.
#include "grouped_gemm/grouped_gemm_cuda.h"

#include <cuda_bf16.h>

#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/kernel_args.h"
#include "cutlass/bfloat16.h"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/device/gemm_grouped.h"
#include "cutlass/gemm/kernel/default_gemm_grouped.h"
#include "cutlass/layout/matrix.h"

namespace llmpre {
namespace cuda {
namespace {

using Element = cutlass::bfloat16_t;
using Layout = cutlass::layout::RowMajor;
constexpr int kAlignment = 8;  // bf16 elements per 128-bit access

using GemmKernel = typename cutlass::gemm::kernel::DefaultGemmGrouped<
    Element, Layout, cutlass::ComplexTransform::kNone, kAlignment,   // A
    Element, Layout, cutlass::ComplexTransform::kNone, kAlignment,   // B
    Element, Layout,                                                 // C, D
    float,                                                           // accumulator
    cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
    cutlass::gemm::GemmShape<128, 128, 32>,                          // threadblock tile
    cutlass::gemm::GemmShape<64, 64, 32>,                            // warp tile
    cutlass::gemm::GemmShape<16, 8, 16>,                             // mma.sync
    cutlass::epilogue::thread::LinearCombination<Element, kAlignment, float, float>,
    cutlass::gemm::threadblock::GemmBatchedIdentityThreadblockSwizzle,  // unused by grouped kernels
    4,                                                               // pipeline stages
    cutlass::gemm::kernel::GroupScheduleMode::kDeviceOnly>::GemmKernel;
using Gemm = cutlass::gemm::device::GemmGrouped<GemmKernel>;
using LongIndex = typename Layout::Stride::LongIndex;

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

__global__ void setup_groups(Arrays w, const int64_t* offsets, const void* a, const void* const* b, void* c,
                             int64_t experts, int64_t n, int64_t k) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= experts) return;
  const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
  w.sizes[e] = cutlass::gemm::GemmCoord(int(rows), int(n), int(k));
  w.a[e] = const_cast<Element*>(static_cast<const Element*>(a)) + r0 * k;
  w.b[e] = const_cast<Element*>(static_cast<const Element*>(b[e]));
  w.c[e] = static_cast<Element*>(c) + r0 * n;
  w.lda[e] = k;
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

void check_cutlass(cutlass::Status s, const char* what, const char* file, int line) {
  if (s != cutlass::Status::kSuccess)
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what + " failed: " +
                             cutlassGetStatusString(s));
}

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
  LLMPRE_REQUIRE(p.offsets && p.b && p.workspace, "grouped_gemm: offsets, b and workspace must be set");
  LLMPRE_REQUIRE(p.rows == 0 || (p.a && p.c), "grouped_gemm: a and c must be set");
  LLMPRE_REQUIRE(aligned16(p.a) && aligned16(p.c) && aligned16(p.workspace),
                 "grouped_gemm: a, c and workspace must be 16-byte aligned");
  LLMPRE_REQUIRE(p.workspace_bytes >= grouped_gemm_workspace_bytes(p.experts), "grouped_gemm: workspace has ",
                 p.workspace_bytes, " bytes, needs grouped_gemm_workspace_bytes(experts) = ",
                 grouped_gemm_workspace_bytes(p.experts));
  if (p.rows == 0) return;
  const Arrays w = carve(p.workspace, p.experts);
  const int threads = 128;
  setup_groups<<<int((p.experts + threads - 1) / threads), threads, 0, stream>>>(w, p.offsets, p.a, p.b, p.c,
                                                                                 p.experts, p.n, p.k);
  LLMPRE_CUDA_CHECK_LAUNCH();
  zero_dropped<<<256, 256, 0, stream>>>(p.offsets, p.experts, p.rows, p.n, p.c);
  LLMPRE_CUDA_CHECK_LAUNCH();

  const int blocks = Gemm::sufficient();   // one wave at full occupancy; the device scheduler hands out tiles
  LLMPRE_REQUIRE(blocks > 0, "grouped_gemm: the device cannot run the CUTLASS grouped kernel (no occupancy)");
  typename Gemm::EpilogueOutputOp::Params epilogue(1.0f, 0.0f);
  typename Gemm::Arguments args(w.sizes, int(p.experts), blocks, epilogue, w.a, w.b, w.c, w.c, w.lda, w.ldb,
                                w.ldc, w.ldc);
  Gemm gemm;
  // kDeviceOnly needs no CUTLASS workspace (get_workspace_size is 0): nothing is precomputed on the host.
  check_cutlass(gemm.initialize(args, nullptr, stream), "GemmGrouped::initialize", __FILE__, __LINE__);
  check_cutlass(gemm.run(stream), "GemmGrouped::run", __FILE__, __LINE__);
  LLMPRE_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace llmpre
