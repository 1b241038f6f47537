// GPU half of llmpre_moe_combine (paddle_ops/moe_combine_op.cc sends GPU tensors here after
// its shared shape checks; see cuda_ops.h). Calls cuda/moe_combine's launchers on y's stream:
// Out [tokens, hidden] in y's dtype forward; dY (y's shape and dtype; rows no pair reads: 0)
// and dWeights (fp32) backward. y in float32, float16 or bfloat16 storage, fp32 math; pos
// int64 (int32 is cast) and weights fp32 on y's GPU. A pos entry outside [0, rows) cannot be
// reported from the device: it gives NaN (see cuda/moe_combine/moe_combine_cuda.h).
//
// Linked only into a CUDA build of Paddle; `make paddle-gpu-glue-check` compiles it without
// one (it has not run on a GPU yet: bench/gpu/check_moe_combine.py checks cuda/moe_combine).
#include <vector>

#include "cuda_ops.h"
#include "gpu_glue.h"
#include "moe_combine/moe_combine_cuda.h"

namespace {

using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_moe_combine";

// Device checks and the sizes (the op checked the shapes and weights' dtype).
llmpre::cuda::MoeCombineParams sizes(const paddle::Tensor& y, const paddle::Tensor& pos, const paddle::Tensor& w) {
  check_same_gpu(y, "y", pos, "pos", kOp);
  check_same_gpu(y, "y", w, "weights", kOp);
  llmpre::cuda::MoeCombineParams p;
  p.rows = y.shape()[0];
  p.hidden = y.shape()[1];
  p.tokens = pos.shape()[0];
  p.slots = pos.shape()[1];
  p.dtype = gpu_dtype(y, kOp, "y");
  return p;
}

}  // namespace

std::vector<paddle::Tensor> MoeCombineForwardCuda(const paddle::Tensor& y_in, const paddle::Tensor& pos_in,
                                                  const paddle::Tensor& w_in) {
  llmpre::cuda::MoeCombineParams p = sizes(y_in, pos_in, w_in);
  DeviceGuard guard(y_in, kOp);
  paddle::Tensor y = contiguous(y_in), pos = as_int64(pos_in, kOp, "pos"), w = contiguous(w_in);
  paddle::Tensor out = new_output({p.tokens, p.hidden}, y.dtype(), y.place());
  p.y = y.data();
  p.pos = pos.data<int64_t>();
  p.w = w.data<float>();
  p.out = out.data();
  run_kernel(kOp, [&] { llmpre::cuda::moe_combine_forward(p, y.stream()); });
  return {out};
}

std::vector<paddle::Tensor> MoeCombineBackwardCuda(const paddle::Tensor& y_in, const paddle::Tensor& pos_in,
                                                   const paddle::Tensor& w_in, const paddle::Tensor& dout_in) {
  llmpre::cuda::MoeCombineParams p = sizes(y_in, pos_in, w_in);
  DeviceGuard guard(y_in, kOp);
  check_same_gpu(y_in, "y", dout_in, "grad of out", kOp);
  paddle::Tensor y = contiguous(y_in), pos = as_int64(pos_in, kOp, "pos"), w = contiguous(w_in);
  paddle::Tensor dout = contiguous(dout_in);
  paddle::Tensor dy = new_output(y.shape(), y.dtype(), y.place());
  paddle::Tensor dw = new_output(w.shape(), w.dtype(), w.place());
  p.y = y.data();
  p.pos = pos.data<int64_t>();
  p.w = w.data<float>();
  p.dout = dout.data();
  p.dy = dy.data();
  p.dw = dw.data<float>();
  run_kernel(kOp, [&] { llmpre::cuda::moe_combine_backward(p, y.stream()); });
  return {dy, dw};
}
