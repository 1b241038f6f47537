// llmpre_adamw_: one AdamW step over flat fp32 buffers, in place (kernel: cpp/kernels/adamw).
//   inputs  Param, Grad, Moment1, Moment2: [n] float32 (CPU); Param, Moment1, Moment2 are
//           updated in place (outputs ParamOut, Moment1Out, Moment2Out)
//   attrs   the update's fp32 scalars (adamw.h) and decayed_runs: flat [begin, end) pairs of
//           the elements that get weight decay
// No gradient: an optimizer step.
#include "adamw/adamw.h"
#include "op_common.h"

namespace {
using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_adamw_";

void check_flat(const paddle::Tensor& t, const char* arg, int64_t n) {
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, kOp, ": `", arg, "` must be float32, got ", dtype_str(t.dtype()));
  PD_CHECK(t.shape().size() == 1 && t.shape()[0] == n, kOp, ": `", arg, "` must be [", n, "] like `param`, got ",
           shape_str(t.shape()));
  PD_CHECK(t.is_contiguous(), kOp, ": `", arg, "` must be contiguous (it is updated in place)");
  check_cpu(t, kOp, arg);
}
}  // namespace

void AdamWForward(paddle::Tensor& param, const paddle::Tensor& grad_in, paddle::Tensor& exp_avg,
                  paddle::Tensor& exp_avg_sq, float grad_scale, float beta1, float beta2, float one_minus_beta1,
                  float one_minus_beta2, float decay, float inv_bias2, float eps, float step_size,
                  const std::vector<int64_t>& decayed_runs) {
  PD_CHECK(param.shape().size() == 1, kOp, ": `param` must be a flat [n] buffer, got ", shape_str(param.shape()));
  const int64_t n = param.shape()[0];
  check_flat(param, "param", n);
  check_flat(exp_avg, "exp_avg", n);
  check_flat(exp_avg_sq, "exp_avg_sq", n);
  PD_CHECK(grad_in.dtype() == paddle::DataType::FLOAT32 && grad_in.shape() == param.shape(), kOp,
           ": `grad` must be float32 [", n, "], got ", dtype_str(grad_in.dtype()), " ", shape_str(grad_in.shape()));
  check_cpu(grad_in, kOp, "grad");
  PD_CHECK(decayed_runs.size() % 2 == 0, kOp, ": `decayed_runs` must hold (begin, end) pairs, got ",
           decayed_runs.size(), " numbers");
  paddle::Tensor grad = contiguous(grad_in);
  k::AdamWParams p;
  p.n = n;
  p.grad_scale = grad_scale;
  p.beta1 = beta1;
  p.beta2 = beta2;
  p.one_minus_beta1 = one_minus_beta1;
  p.one_minus_beta2 = one_minus_beta2;
  p.decay = decay;
  p.inv_bias2 = inv_bias2;
  p.eps = eps;
  p.step_size = step_size;
  p.decayed = decayed_runs.data();
  p.runs = static_cast<int64_t>(decayed_runs.size() / 2);
  run_kernel(kOp, [&] {
    k::adamw_update(p, param.data<float>(), grad.data<float>(), exp_avg.data<float>(), exp_avg_sq.data<float>());
  });
}

PD_BUILD_OP(llmpre_adamw_)
    .Inputs({"Param", "Grad", "Moment1", "Moment2"})
    .Outputs({"ParamOut", "Moment1Out", "Moment2Out"})
    .SetInplaceMap({{"Param", "ParamOut"}, {"Moment1", "Moment1Out"}, {"Moment2", "Moment2Out"}})
    .Attrs({"grad_scale: float", "beta1: float", "beta2: float", "one_minus_beta1: float", "one_minus_beta2: float",
            "decay: float", "inv_bias2: float", "eps: float", "step_size: float", "decayed_runs: std::vector<int64_t>"})
    .SetKernelFn(PD_KERNEL(AdamWForward));
