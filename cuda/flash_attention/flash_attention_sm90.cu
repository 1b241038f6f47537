// Host side of the Hopper layer: TMA tensor maps. cuTensorMapEncodeTiled is
// a driver API function; it is fetched through the runtime
// (cudaGetDriverEntryPoint*) so the library needs no link against libcuda.
// Compiled with the Hopper kernels (CMake LLMPRE_FA_SM90).
#include <cuda.h>
#include <cudaTypedefs.h>

#include <stdexcept>
#include <string>

#include "flash_attention/arch_sm90.cuh"

namespace llmpre {
namespace cuda {
namespace fa {

namespace {

PFN_cuTensorMapEncodeTiled_v12000 encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    LLMPRE_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found));
#else
    LLMPRE_CUDA_CHECK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &found));
#endif
    if (found != cudaDriverEntryPointSuccess || f == nullptr) {
      throw std::runtime_error("flash_attention: the CUDA driver has no cuTensorMapEncodeTiled (a driver for CUDA 12.0 "
                               "or newer is needed for the Hopper kernels)");
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

void make_tma_desc(TmaDesc* out, const void* base, const uint64_t (&dims)[4], const uint64_t (&strides)[3],
                   const uint32_t (&box)[4]) {
  static_assert(sizeof(TmaDesc) == sizeof(CUtensorMap) && alignof(TmaDesc) >= alignof(CUtensorMap),
                "TmaDesc holds a CUtensorMap");
  const cuuint64_t gdim[4] = {dims[0], dims[1], dims[2], dims[3]};
  const cuuint64_t gstride[3] = {strides[0], strides[1], strides[2]};
  const cuuint32_t bdim[4] = {box[0], box[1], box[2], box[3]};
  const cuuint32_t estride[4] = {1, 1, 1, 1};
  const CUresult r = encoder()(reinterpret_cast<CUtensorMap*>(out), CU_TENSOR_MAP_DATA_TYPE_UINT16, 4,
                               const_cast<void*>(base), gdim, gstride, bdim, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
                               CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw std::runtime_error("flash_attention: cuTensorMapEncodeTiled failed (CUresult " + std::to_string(int(r)) +
                             ") for dims " + std::to_string(dims[0]) + "x" + std::to_string(dims[1]) + "x" +
                             std::to_string(dims[2]) + "x" + std::to_string(dims[3]) + ", box rows " +
                             std::to_string(box[2]) + " (base must be 16-byte aligned)");
  }
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
