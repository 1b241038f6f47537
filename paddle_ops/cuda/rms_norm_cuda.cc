// GPU half of llmpre_rms_norm (paddle_ops/rms_norm_op.cc sends GPU tensors
// here after its shared checks; see cuda_ops.h). Calls the raw-pointer
// launchers of cuda/rms_norm on the tensor's stream and returns what the CPU
// path returns: Y (x's shape and dtype) and InvRms [rows] fp32; the backward
// returns dX (x's dtype) and dWeight (weight's dtype). dWeight is reduced over
// rows through an fp32 workspace (a Paddle tensor on the same stream) in a
// fixed order, so it is bitwise reproducible.
//
// Linked only into a CUDA build of Paddle; `make paddle-gpu-glue-check`
// compiles it without one (it has not run on a GPU yet).
#include <cstdint>
#include <vector>

#include "cuda_ops.h"
#include "gpu_glue.h"
#include "rms_norm/rms_norm_cuda.h"

namespace {

using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_rms_norm";

llmpre::cuda::RmsNormParams sizes(const paddle::Tensor& x, float eps) {
  llmpre::cuda::RmsNormParams p;
  p.hidden = x.shape().back();
  p.rows = p.hidden == 0 ? 0 : x.numel() / p.hidden;
  p.eps = eps;
  p.dtype = gpu_dtype(x, kOp, "x");
  return p;
}

}  // namespace

std::vector<paddle::Tensor> RmsNormForwardCuda(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                               float epsilon) {
  check_same_gpu(x_in, "x", w_in, "weight", kOp);
  DeviceGuard guard(x_in, kOp);
  paddle::Tensor x = contiguous(x_in), w = contiguous(w_in);
  llmpre::cuda::RmsNormParams p = sizes(x, epsilon);
  paddle::Tensor y = new_output(x.shape(), x.dtype(), x.place());
  paddle::Tensor inv = new_output({p.rows}, paddle::DataType::FLOAT32, x.place());
  p.x = x.data();
  p.weight = w.data();
  p.y = y.data();
  p.inv_rms = inv.data<float>();
  run_kernel(kOp, [&] { llmpre::cuda::rms_norm_forward(p, x.stream()); });
  return {y, inv};
}

std::vector<paddle::Tensor> RmsNormBackwardCuda(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                                const paddle::Tensor& inv_in, const paddle::Tensor& dy_in,
                                                float epsilon) {
  check_same_gpu(x_in, "x", w_in, "weight", kOp);
  DeviceGuard guard(x_in, kOp);
  paddle::Tensor x = contiguous(x_in), w = contiguous(w_in);
  if (!has_grad(dy_in))
    return {paddle::zeros(x.shape(), x.dtype(), x.place()), paddle::zeros(w.shape(), w.dtype(), w.place())};
  check_same_shape(x, "x", dy_in, "grad of y", kOp);
  check_same_dtype(x, "x", dy_in, "grad of y", kOp);
  check_same_gpu(x_in, "x", dy_in, "grad of y", kOp);
  check_same_gpu(x_in, "x", inv_in, "inv_rms", kOp);
  llmpre::cuda::RmsNormParams p = sizes(x, epsilon);
  PD_CHECK(inv_in.dtype() == paddle::DataType::FLOAT32 && inv_in.numel() == p.rows, kOp,
           ": `inv_rms` must be the forward's float32 [", p.rows, "], got ", dtype_str(inv_in.dtype()), " ",
           shape_str(inv_in.shape()));
  paddle::Tensor dy = contiguous(dy_in), inv = contiguous(inv_in);
  paddle::Tensor dx = new_output(x.shape(), x.dtype(), x.place());
  paddle::Tensor dw = new_output(w.shape(), w.dtype(), w.place());
  size_t ws_bytes = 0;
  run_kernel(kOp, [&] { ws_bytes = llmpre::cuda::rms_norm_backward_workspace_bytes(p); });
  paddle::Tensor ws = new_output({static_cast<int64_t>(ws_bytes / sizeof(float)) + 1}, paddle::DataType::FLOAT32,
                                 x.place());
  p.x = x.data();
  p.weight = w.data();
  p.inv_rms = inv.data<float>();
  p.dy = dy.data();
  p.dx = dx.data();
  p.dweight = dw.data();
  p.workspace = ws.data<float>();
  p.workspace_bytes = static_cast<size_t>(ws.numel()) * sizeof(float);
  run_kernel(kOp, [&] { llmpre::cuda::rms_norm_backward(p, x.stream()); });
  return {dx, dw};
}
