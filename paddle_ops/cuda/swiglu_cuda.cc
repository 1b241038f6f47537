// GPU half of llmpre_swiglu (paddle_ops/swiglu_op.cc sends GPU tensors here
// after its shared shape/dtype checks; see cuda_ops.h). Calls cuda/swiglu's
// launchers on the tensor's stream: Out (gate's shape and dtype) forward,
// dGate and dUp backward; float32, float16 and bfloat16 storage, fp32 math.
//
// Linked only into a CUDA build of Paddle; `make paddle-gpu-glue-check`
// compiles it without one (it has not run on a GPU yet).
#include <vector>

#include "cuda_ops.h"
#include "gpu_glue.h"
#include "swiglu/swiglu_cuda.h"

namespace {

using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_swiglu";

}  // namespace

std::vector<paddle::Tensor> SwiGluForwardCuda(const paddle::Tensor& gate_in, const paddle::Tensor& up_in) {
  check_same_gpu(gate_in, "gate", up_in, "up", kOp);
  DeviceGuard guard(gate_in, kOp);
  paddle::Tensor gate = contiguous(gate_in), up = contiguous(up_in);
  paddle::Tensor out = new_output(gate.shape(), gate.dtype(), gate.place());
  llmpre::cuda::SwiGluParams p;
  p.n = gate.numel();
  p.dtype = gpu_dtype(gate, kOp, "gate");
  p.gate = gate.data();
  p.up = up.data();
  p.out = out.data();
  run_kernel(kOp, [&] { llmpre::cuda::swiglu_forward(p, gate.stream()); });
  return {out};
}

std::vector<paddle::Tensor> SwiGluBackwardCuda(const paddle::Tensor& gate_in, const paddle::Tensor& up_in,
                                               const paddle::Tensor& dout_in) {
  check_same_gpu(gate_in, "gate", up_in, "up", kOp);
  DeviceGuard guard(gate_in, kOp);
  paddle::Tensor gate = contiguous(gate_in), up = contiguous(up_in);
  check_same_gpu(gate_in, "gate", dout_in, "grad of out", kOp);
  paddle::Tensor dout = contiguous(dout_in);
  paddle::Tensor dgate = new_output(gate.shape(), gate.dtype(), gate.place());
  paddle::Tensor dup = new_output(up.shape(), up.dtype(), up.place());
  llmpre::cuda::SwiGluParams p;
  p.n = gate.numel();
  p.dtype = gpu_dtype(gate, kOp, "gate");
  p.gate = gate.data();
  p.up = up.data();
  p.dout = dout.data();
  p.dgate = dgate.data();
  p.dup = dup.data();
  run_kernel(kOp, [&] { llmpre::cuda::swiglu_backward(p, gate.stream()); });
  return {dgate, dup};
}
