// llmpre_swiglu: silu(gate) * up (kernel: cpp/kernels/swiglu).
//   inputs  Gate [..., intermediate] fp32|bf16, Up (Gate's shape and dtype)
//   outputs Out (Gate's shape and dtype)
#include "cuda_ops.h"
#include "op_common.h"
#include "swiglu/swiglu.h"

namespace {
using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_swiglu";

k::SwiGluParams params(const paddle::Tensor& gate, const paddle::Tensor& up) {
  check_same_shape(gate, "gate", up, "up", kOp);
  k::SwiGluParams p;
  p.dtype = kernel_dtype(gate, kOp, "gate");
  check_same_dtype(gate, "gate", up, "up", kOp);
  p.n = gate.numel();
  return p;
}
}  // namespace

std::vector<paddle::Tensor> SwiGluForward(const paddle::Tensor& gate_in, const paddle::Tensor& up_in) {
  const k::SwiGluParams p = params(gate_in, up_in);
#ifdef LLMPRE_CUDA_SWIGLU
  if (gate_in.is_gpu()) return SwiGluForwardCuda(gate_in, up_in);
#endif
  check_cpu(gate_in, kOp, "gate");
  check_cpu(up_in, kOp, "up");
  paddle::Tensor gate = contiguous(gate_in), up = contiguous(up_in);
  paddle::Tensor out = new_output(gate.shape(), gate.dtype(), gate.place());
  run_kernel(kOp, [&] { k::swiglu_forward(p, gate.data(), up.data(), out.data()); });
  return {out};
}

std::vector<paddle::Tensor> SwiGluBackward(const paddle::Tensor& gate_in, const paddle::Tensor& up_in,
                                           const paddle::Tensor& dout_in) {
  // both devices: the shapes, the answer without an upstream gradient, grad of out's shape and dtype
  const k::SwiGluParams p = params(gate_in, up_in);
  if (!has_grad(dout_in))
    return {paddle::zeros(gate_in.shape(), gate_in.dtype(), gate_in.place()),
            paddle::zeros(up_in.shape(), up_in.dtype(), up_in.place())};
  check_same_shape(gate_in, "gate", dout_in, "grad of out", kOp);
  check_same_dtype(gate_in, "gate", dout_in, "grad of out", kOp);
#ifdef LLMPRE_CUDA_SWIGLU
  if (gate_in.is_gpu()) return SwiGluBackwardCuda(gate_in, up_in, dout_in);
#endif
  check_cpu(gate_in, kOp, "gate");
  check_cpu(up_in, kOp, "up");
  paddle::Tensor gate = contiguous(gate_in), up = contiguous(up_in);
  paddle::Tensor dout = contiguous(dout_in);
  paddle::Tensor dgate = new_output(gate.shape(), gate.dtype(), gate.place());
  paddle::Tensor dup = new_output(up.shape(), up.dtype(), up.place());
  run_kernel(kOp, [&] {
    k::swiglu_backward(p, gate.data(), up.data(), dout.data(), dgate.data(), dup.data());
  });
  return {dgate, dup};
}

PD_BUILD_OP(llmpre_swiglu)
    .Inputs({"Gate", "Up"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(SwiGluForward));

PD_BUILD_GRAD_OP(llmpre_swiglu)
    .Inputs({"Gate", "Up", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Gate"), paddle::Grad("Up")})
    .SetKernelFn(PD_KERNEL(SwiGluBackward));
