// llmpre_moe_combine: an MoE layer's routing-weighted sum of each token's expert rows
// (kernel: cpp/kernels/grouped_mlp/moe_combine.h), read where the grouped expert MLP
// left them, token-major and without atomics.
//   inputs  Y [rows, hidden] fp32 on CPU (rows sorted by expert), Pos [tokens, slots] int64|int32
//           (the row of each (token, slot) pair: distinct, in [0, rows)),
//           Weights [tokens, slots] fp32 (routing weights)
//   outputs Out [tokens, hidden] = sum_j Weights[t, j] * Y[Pos[t, j]]
//   grads   Y (rows no pair reads: 0), Weights; none for Pos
//   GPU tensors (a CUDA build): Y float32, float16 or bfloat16, paddle_ops/cuda/moe_combine_cuda.cc,
//   after the shape checks (a Pos entry outside [0, rows) gives NaN there: a device cannot throw).
#include "cuda_ops.h"
#include "grouped_mlp/moe_combine.h"
#include "op_common.h"

namespace {
using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_moe_combine";

// The shape checks both devices share.
k::MoeCombineParams shapes(const paddle::Tensor& y, const paddle::Tensor& pos, const paddle::Tensor& w) {
  PD_CHECK(y.shape().size() == 2, kOp, ": `y` must be [rows, hidden], got ", shape_str(y.shape()));
  PD_CHECK(pos.shape().size() == 2, kOp, ": `pos` must be [tokens, slots], got ", shape_str(pos.shape()));
  check_same_shape(pos, "pos", w, "weights", kOp);
  PD_CHECK(w.dtype() == paddle::DataType::FLOAT32, kOp, ": `weights` must be float32, got ", dtype_str(w.dtype()));
  k::MoeCombineParams p;
  p.rows = y.shape()[0];
  p.hidden = y.shape()[1];
  p.tokens = pos.shape()[0];
  p.slots = pos.shape()[1];
  return p;
}

// The CPU kernel's checks on top of the shared ones.
k::MoeCombineParams params(const paddle::Tensor& y, const paddle::Tensor& pos, const paddle::Tensor& w) {
  k::MoeCombineParams p = shapes(y, pos, w);
  PD_CHECK(y.dtype() == paddle::DataType::FLOAT32, kOp, ": `y` must be float32 on CPU (other dtypes take the "
           "reference op), got ", dtype_str(y.dtype()));
  check_cpu(y, kOp, "y");
  check_cpu(pos, kOp, "pos");
  check_cpu(w, kOp, "weights");
  p.dtype = llmpre::DType::kFloat32;
  return p;
}
}  // namespace

std::vector<paddle::Tensor> MoeCombineForward(const paddle::Tensor& y_in, const paddle::Tensor& pos_in,
                                              const paddle::Tensor& w_in) {
#ifdef LLMPRE_CUDA_MOE_COMBINE
  if (y_in.is_gpu()) {
    shapes(y_in, pos_in, w_in);
    return MoeCombineForwardCuda(y_in, pos_in, w_in);
  }
#endif
  const k::MoeCombineParams p = params(y_in, pos_in, w_in);
  paddle::Tensor y = contiguous(y_in), pos = as_int64(pos_in, kOp, "pos"), w = contiguous(w_in);
  paddle::Tensor out = new_output({p.tokens, p.hidden}, y.dtype(), y.place());
  run_kernel(kOp, [&] { k::moe_combine_forward(p, y.data(), pos.data<int64_t>(), w.data<float>(), out.data()); });
  return {out};
}

std::vector<paddle::Tensor> MoeCombineBackward(const paddle::Tensor& y_in, const paddle::Tensor& pos_in,
                                               const paddle::Tensor& w_in, const paddle::Tensor& dout_in) {
  // both devices: the shapes, the answer without an upstream gradient, grad of out's shape and dtype
  const k::MoeCombineParams s = shapes(y_in, pos_in, w_in);
  if (!has_grad(dout_in))
    return {paddle::zeros(y_in.shape(), y_in.dtype(), y_in.place()),
            paddle::zeros(w_in.shape(), w_in.dtype(), w_in.place())};
  const std::vector<int64_t> out_shape = {s.tokens, s.hidden};
  PD_CHECK(dout_in.shape() == out_shape, kOp, ": `grad of out` must be ", shape_str(out_shape), ", got ",
           shape_str(dout_in.shape()));
  check_same_dtype(y_in, "y", dout_in, "grad of out", kOp);
#ifdef LLMPRE_CUDA_MOE_COMBINE
  if (y_in.is_gpu()) return MoeCombineBackwardCuda(y_in, pos_in, w_in, dout_in);
#endif
  const k::MoeCombineParams p = params(y_in, pos_in, w_in);
  paddle::Tensor y = contiguous(y_in), pos = as_int64(pos_in, kOp, "pos"), w = contiguous(w_in);
  paddle::Tensor dout = contiguous(dout_in);
  paddle::Tensor dy = new_output(y.shape(), y.dtype(), y.place());
  paddle::Tensor dw = new_output(w.shape(), w.dtype(), w.place());
  run_kernel(kOp, [&] {
    k::moe_combine_backward(p, y.data(), pos.data<int64_t>(), w.data<float>(), dout.data(), dy.data(),
                            dw.data<float>());
  });
  return {dy, dw};
}

std::vector<std::vector<int64_t>> MoeCombineInferShape(const std::vector<int64_t>& y, const std::vector<int64_t>& pos,
                                                       const std::vector<int64_t>& w) {
  return {{pos[0], y[1]}};
}

std::vector<paddle::DataType> MoeCombineInferDtype(const paddle::DataType& y, const paddle::DataType& pos,
                                                   const paddle::DataType& w) {
  return {y};
}

PD_BUILD_OP(llmpre_moe_combine)
    .Inputs({"Y", "Pos", "Weights"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(MoeCombineForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MoeCombineInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(MoeCombineInferDtype));

PD_BUILD_GRAD_OP(llmpre_moe_combine)
    .Inputs({"Y", "Pos", "Weights", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Y"), paddle::Grad("Weights")})
    .SetKernelFn(PD_KERNEL(MoeCombineBackward));
