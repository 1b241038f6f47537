// GPU half of llmpre_cross_entropy (paddle_ops/cross_entropy_op.cc sends GPU
// tensors here after its shared checks; see cuda_ops.h). Calls the raw-pointer
// launchers of cuda/cross_entropy on the logits' stream and returns what the
// CPU path returns: Loss [...] fp32 (0 on ignored positions) and Stats
// [..., 2] fp32 (max, log-sum-exp - max); the backward returns dLogits in the
// logits' dtype, recomputing the softmax from Stats. A label outside [0, vocab)
// cannot raise from the device: that position's loss and gradient row come
// out NaN (the CPU path raises instead).
//
// Linked only into a CUDA build of Paddle; `make paddle-gpu-glue-check`
// compiles it without one (it has not run on a GPU yet).
#include <cstdint>
#include <vector>

#include "cross_entropy/cross_entropy_cuda.h"
#include "cuda_ops.h"
#include "gpu_glue.h"

namespace {

using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_cross_entropy";

llmpre::cuda::CrossEntropyParams sizes(const paddle::Tensor& logits, int64_t ignore_index) {
  llmpre::cuda::CrossEntropyParams p;
  p.vocab = logits.shape().back();
  p.rows = logits.numel() / p.vocab;
  p.ignore_index = ignore_index;
  p.dtype = gpu_dtype(logits, kOp, "logits");
  return p;
}

std::vector<int64_t> leading(const std::vector<int64_t>& s) {
  return std::vector<int64_t>(s.begin(), s.end() - (s.empty() ? 0 : 1));
}

}  // namespace

std::vector<paddle::Tensor> CrossEntropyForwardCuda(const paddle::Tensor& logits_in, const paddle::Tensor& labels_in,
                                                    int64_t ignore_index) {
  check_same_gpu(logits_in, "logits", labels_in, "labels", kOp);
  DeviceGuard guard(logits_in, kOp);
  paddle::Tensor logits = contiguous(logits_in);
  paddle::Tensor labels = as_int64(labels_in, kOp, "labels");  // a GPU cast for int32 labels
  llmpre::cuda::CrossEntropyParams p = sizes(logits, ignore_index);
  const std::vector<int64_t> out_shape = leading(logits.shape());
  std::vector<int64_t> stats_shape = out_shape;
  stats_shape.push_back(2);
  paddle::Tensor loss = new_output(out_shape, paddle::DataType::FLOAT32, logits.place());
  paddle::Tensor stats = new_output(stats_shape, paddle::DataType::FLOAT32, logits.place());
  p.logits = logits.data();
  p.labels = labels.data<int64_t>();
  p.loss = loss.data<float>();
  p.stats = stats.data<float>();
  run_kernel(kOp, [&] { llmpre::cuda::cross_entropy_forward(p, logits.stream()); });
  return {loss, stats};
}

std::vector<paddle::Tensor> CrossEntropyBackwardCuda(const paddle::Tensor& logits_in, const paddle::Tensor& labels_in,
                                                     const paddle::Tensor& stats_in, const paddle::Tensor& dloss_in,
                                                     int64_t ignore_index) {
  check_same_gpu(logits_in, "logits", labels_in, "labels", kOp);
  check_same_gpu(logits_in, "logits", stats_in, "stats", kOp);
  DeviceGuard guard(logits_in, kOp);
  paddle::Tensor logits = contiguous(logits_in);
  if (!has_grad(dloss_in)) return {paddle::zeros(logits.shape(), logits.dtype(), logits.place())};
  check_same_gpu(logits_in, "logits", dloss_in, "grad of loss", kOp);
  llmpre::cuda::CrossEntropyParams p = sizes(logits, ignore_index);
  PD_CHECK(dloss_in.numel() == p.rows, kOp, ": the gradient of loss must have ", p.rows, " elements, got ",
           shape_str(dloss_in.shape()));
  PD_CHECK(stats_in.dtype() == paddle::DataType::FLOAT32 && stats_in.numel() == 2 * p.rows, kOp,
           ": `stats` must be the forward's float32 [..., 2] with ", 2 * p.rows, " elements, got ",
           dtype_str(stats_in.dtype()), " ", shape_str(stats_in.shape()));
  paddle::Tensor labels = as_int64(labels_in, kOp, "labels");
  paddle::Tensor stats = contiguous(stats_in);
  paddle::Tensor dloss = contiguous(dloss_in);
  if (dloss.dtype() != paddle::DataType::FLOAT32) dloss = paddle::experimental::cast(dloss, paddle::DataType::FLOAT32);
  paddle::Tensor dlogits = new_output(logits.shape(), logits.dtype(), logits.place());
  p.logits = logits.data();
  p.labels = labels.data<int64_t>();
  p.stats = stats.data<float>();
  p.dloss = dloss.data<float>();
  p.dlogits = dlogits.data();
  run_kernel(kOp, [&] { llmpre::cuda::cross_entropy_backward(p, logits.stream()); });
  return {dlogits};
}
