// Helpers shared by the GPU halves of the ops (paddle_ops/cuda/<op>_cuda.cc),
// on top of op_common.h: the current-device guard, the same-GPU check and the
// Paddle dtype -> llmpre::DType mapping of the CUDA kernels. Like the rest of
// paddle_ops/cuda/, compiled only against a CUDA build of Paddle; `make
// paddle-gpu-glue-check` compiles it here without one.
#pragma once

#include <cuda_runtime.h>

#include "llmpre/dtype.h"
#include "op_common.h"

namespace llmpre::ops {

// Makes `t`'s GPU the current device for the launches in its scope and
// restores the previous one (launchers run on the current device).
class DeviceGuard {
 public:
  DeviceGuard(const paddle::Tensor& t, const char* op) {
    const cudaError_t got = cudaGetDevice(&old_);
    PD_CHECK(got == cudaSuccess, op, ": cudaGetDevice failed: ", cudaGetErrorString(got));
    const int want = t.place().GetDeviceId();
    if (want != old_) {
      const cudaError_t set = cudaSetDevice(want);
      PD_CHECK(set == cudaSuccess, op, ": cannot switch to GPU ", want, ": ", cudaGetErrorString(set));
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(old_);  // best effort: a destructor cannot report
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int old_ = 0;
  bool switched_ = false;
};

// `b` (argument `b_name`) must be a GPU tensor on the GPU of `a` (`a_name`).
inline void check_same_gpu(const paddle::Tensor& a, const char* a_name, const paddle::Tensor& b,
                           const char* b_name, const char* op) {
  PD_CHECK(b.is_gpu() && b.place() == a.place(), op, ": `", b_name, "` must be on ", a.place().DebugString(),
           " like `", a_name, "`, got ", b.place().DebugString());
}

// The storage type of a GPU tensor for the CUDA kernels: float32, float16 or
// bfloat16 (the row kernels' set; flash attention narrows it further).
inline llmpre::DType gpu_dtype(const paddle::Tensor& t, const char* op, const char* arg) {
  switch (t.dtype()) {
    case paddle::DataType::FLOAT32: return llmpre::DType::kFloat32;
    case paddle::DataType::FLOAT16: return llmpre::DType::kFloat16;
    case paddle::DataType::BFLOAT16: return llmpre::DType::kBFloat16;
    default: PD_THROW(op, ": `", arg, "` must be float32, float16 or bfloat16 on GPU, got ", dtype_str(t.dtype()));
  }
}

}  // namespace llmpre::ops
