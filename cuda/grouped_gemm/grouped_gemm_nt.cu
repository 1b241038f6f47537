// grouped::run for layout NT (A RowMajor, B ColumnMajor); see grouped_gemm_kernel.cuh.
#include "grouped_gemm/grouped_gemm_kernel.cuh"

namespace llmpre {
namespace cuda {
namespace grouped {

template <>
void run<Layouts::kNT>(const Arrays& w, int64_t experts, float beta, cudaStream_t stream) {
  run_gemm<GemmOf<cutlass::layout::RowMajor, cutlass::layout::ColumnMajor>>(w, experts, beta, stream);
}

}  // namespace grouped
}  // namespace cuda
}  // namespace llmpre
