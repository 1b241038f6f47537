// grouped::run for layout TN (A ColumnMajor, B RowMajor); see grouped_gemm_kernel.cuh.
#include "grouped_gemm/grouped_gemm_kernel.cuh"

namespace llmpre {
namespace cuda {
namespace grouped {

template <>
void run<Layouts::kTN>(const Arrays& w, int64_t experts, float beta, cudaStream_t stream) {
  run_gemm<GemmOf<cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>>(w, experts, beta, stream);
}

}  // namespace grouped
}  // namespace cuda
}  // namespace llmpre
