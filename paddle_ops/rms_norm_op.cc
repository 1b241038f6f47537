// llmpre_rms_norm: RMSNorm over the last axis (kernel: cpp/kernels/rms_norm).
//   inputs  X [..., hidden] fp32|bf16, Weight [hidden] (X's dtype)
//   attrs   epsilon: float
//   outputs Y (X's shape and dtype), InvRms [prod(X.shape[:-1])] fp32 (saved for backward)
#include "cuda_ops.h"
#include "op_common.h"
#include "rms_norm/rms_norm.h"

namespace {
using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_rms_norm";

k::RmsNormParams params(const paddle::Tensor& x, const paddle::Tensor& w, float eps) {
  const auto& xs = x.shape();
  PD_CHECK(!xs.empty(), kOp, ": `x` must have at least one axis [..., hidden], got a scalar");
  PD_CHECK(w.shape().size() == 1 && w.shape()[0] == xs.back(), kOp, ": `weight` must be [hidden] = [",
           xs.back(), "] for x of shape ", shape_str(xs), ", got ", shape_str(w.shape()));
  PD_CHECK(eps >= 0.0f, kOp, ": `epsilon` must be >= 0, got ", eps);
  k::RmsNormParams p;
  p.hidden = xs.back();
  p.rows = p.hidden == 0 ? 0 : x.numel() / p.hidden;
  p.eps = eps;
  p.dtype = kernel_dtype(x, kOp, "x");
  check_same_dtype(x, "x", w, "weight", kOp);
  PD_CHECK(p.hidden > 0, kOp, ": `x` must have a non-empty last axis, got ", shape_str(xs));
  return p;
}
}  // namespace

std::vector<paddle::Tensor> RmsNormForward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                           float epsilon) {
  const k::RmsNormParams p = params(x_in, w_in, epsilon);
#ifdef LLMPRE_CUDA_RMS_NORM
  if (x_in.is_gpu()) return RmsNormForwardCuda(x_in, w_in, epsilon);
#endif
  check_cpu(x_in, kOp, "x");
  check_cpu(w_in, kOp, "weight");
  paddle::Tensor x = contiguous(x_in), w = contiguous(w_in);
  paddle::Tensor y = new_output(x.shape(), x.dtype(), x.place());
  paddle::Tensor inv = new_output({p.rows}, paddle::DataType::FLOAT32, x.place());
  run_kernel(kOp, [&] { k::rms_norm_forward(p, x.data(), w.data(), y.data(), inv.data<float>()); });
  return {y, inv};
}

std::vector<paddle::Tensor> RmsNormBackward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                            const paddle::Tensor& inv, const paddle::Tensor& dy_in,
                                            float epsilon) {
  const k::RmsNormParams p = params(x_in, w_in, epsilon);
#ifdef LLMPRE_CUDA_RMS_NORM
  if (x_in.is_gpu()) return RmsNormBackwardCuda(x_in, w_in, inv, dy_in, epsilon);
#endif
  check_cpu(x_in, kOp, "x");
  paddle::Tensor x = contiguous(x_in), w = contiguous(w_in);
  if (!has_grad(dy_in))
    return {paddle::zeros(x.shape(), x.dtype(), x.place()), paddle::zeros(w.shape(), w.dtype(), w.place())};
  check_same_shape(x, "x", dy_in, "grad of y", kOp);
  check_same_dtype(x, "x", dy_in, "grad of y", kOp);
  paddle::Tensor dy = contiguous(dy_in);
  paddle::Tensor dx = new_output(x.shape(), x.dtype(), x.place());
  paddle::Tensor dw = new_output(w.shape(), w.dtype(), w.place());
  run_kernel(kOp, [&] {
    k::rms_norm_backward(p, x.data(), w.data(), inv.data<float>(), dy.data(), dx.data(), dw.data());
  });
  return {dx, dw};
}

std::vector<std::vector<int64_t>> RmsNormInferShape(const std::vector<int64_t>& x,
                                                    const std::vector<int64_t>& w) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x.size(); ++i) rows *= x[i];
  return {x, {rows}};
}

std::vector<paddle::DataType> RmsNormInferDtype(const paddle::DataType& x, const paddle::DataType& w) {
  return {x, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(llmpre_rms_norm)
    .Inputs({"X", "Weight"})
    .Outputs({"Y", "InvRms"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(RmsNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(RmsNormInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(RmsNormInferDtype));

PD_BUILD_GRAD_OP(llmpre_rms_norm)
    .Inputs({"X", "Weight", "InvRms", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(RmsNormBackward));
