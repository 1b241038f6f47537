// GPU half of llmpre_rotary (paddle_ops/rotary_op.cc sends GPU tensors here
// after its shared checks and after casting the tables to contiguous fp32 and
// the position ids to int64; see cuda_ops.h). Calls cuda/rotary's launcher on
// the tensor's stream for one tensor (the op is called once for q and once
// for k); inverse = true is the backward. Returns Out (x's shape and dtype).
// A position outside the tables cannot raise from the device: that token's
// rotated features come out NaN (the CPU path raises instead).
//
// Linked only into a CUDA build of Paddle; `make paddle-gpu-glue-check`
// compiles it without one (it has not run on a GPU yet).
#include <cstdint>
#include <vector>

#include "cuda_ops.h"
#include "gpu_glue.h"
#include "rotary/rotary_cuda.h"

namespace {

using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_rotary";

}  // namespace

paddle::Tensor RotaryCuda(const paddle::Tensor& x_in, const paddle::Tensor& cos_in, const paddle::Tensor& sin_in,
                          const paddle::optional<paddle::Tensor>& position_ids, bool interleaved, bool inverse) {
  check_same_gpu(x_in, "x", cos_in, "cos", kOp);
  check_same_gpu(x_in, "x", sin_in, "sin", kOp);
  if (position_ids) check_same_gpu(x_in, "x", *position_ids, "position_ids", kOp);
  DeviceGuard guard(x_in, kOp);
  paddle::Tensor x = contiguous(x_in), cos = contiguous(cos_in), sin = contiguous(sin_in);
  PD_CHECK(cos.dtype() == paddle::DataType::FLOAT32 && sin.dtype() == paddle::DataType::FLOAT32, kOp,
           ": the GPU path takes float32 cos/sin tables, got ", dtype_str(cos.dtype()), " and ",
           dtype_str(sin.dtype()));
  const auto& xs = x.shape();
  llmpre::cuda::RotaryParams p;
  p.batch = xs[0];
  p.seq = xs[1];
  p.heads_q = xs[2];
  p.heads_k = 0;
  p.head_dim = xs[3];
  p.rot_dim = 2 * cos.shape()[1];
  p.table_rows = cos.shape()[0];
  p.interleaved = interleaved;
  p.inverse = inverse;
  p.dtype = gpu_dtype(x, kOp, "x");
  paddle::Tensor ids;
  if (position_ids) {
    PD_CHECK(position_ids->dtype() == paddle::DataType::INT64, kOp, ": `position_ids` must be int64 here, got ",
             dtype_str(position_ids->dtype()));
    ids = contiguous(*position_ids);
    p.ids_batch = p.seq > 0 ? ids.numel() / p.seq : 0;
    p.position_ids = ids.data<int64_t>();
  }
  paddle::Tensor out = new_output(x.shape(), x.dtype(), x.place());
  p.q = x.data();
  p.q_out = out.data();
  p.cos = cos.data<float>();
  p.sin = sin.data<float>();
  run_kernel(kOp, [&] { llmpre::cuda::rotary_apply(p, x.stream()); });
  return out;
}
