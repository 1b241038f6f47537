// llmpre_cross_entropy: per-token softmax cross-entropy without materialising
// the softmax (kernel: cpp/kernels/cross_entropy).
//   inputs  Logits [..., vocab] fp32|bf16, Labels [...] int64|int32 (Logits' leading shape)
//   attrs   ignore_index: int64_t
//   outputs Loss [...] fp32 (0 where the label is ignore_index),
//           Stats [..., 2] fp32 per row (max, log-sum-exp - max), saved for backward
// llmpre.ops.cross_entropy takes the mean of Loss over the kept positions.
#include "cross_entropy/cross_entropy.h"
#include "cuda_ops.h"
#include "op_common.h"

namespace {
using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_cross_entropy";

std::vector<int64_t> leading(const std::vector<int64_t>& s) {
  return std::vector<int64_t>(s.begin(), s.end() - (s.empty() ? 0 : 1));
}

k::CrossEntropyParams params(const paddle::Tensor& logits, const paddle::Tensor& labels,
                             int64_t ignore_index) {
  const auto& ls = logits.shape();
  PD_CHECK(!ls.empty() && ls.back() > 0, kOp, ": `logits` must be [..., vocab] with vocab > 0, got ",
           shape_str(ls));
  k::CrossEntropyParams p;
  p.vocab = ls.back();
  p.rows = logits.numel() / p.vocab;
  PD_CHECK(labels.numel() == p.rows, kOp, ": `labels` must have the shape of logits without its last axis ",
           shape_str(leading(ls)), ", got ", shape_str(labels.shape()));
  p.ignore_index = ignore_index;
  p.dtype = kernel_dtype(logits, kOp, "logits");
  return p;
}
}  // namespace

std::vector<paddle::Tensor> CrossEntropyForward(const paddle::Tensor& logits_in,
                                                const paddle::Tensor& labels_in, int64_t ignore_index) {
  const k::CrossEntropyParams p = params(logits_in, labels_in, ignore_index);
#ifdef LLMPRE_CUDA_CROSS_ENTROPY
  if (logits_in.is_gpu()) return CrossEntropyForwardCuda(logits_in, labels_in, ignore_index);
#endif
  check_cpu(logits_in, kOp, "logits");
  check_cpu(labels_in, kOp, "labels");
  paddle::Tensor logits = contiguous(logits_in);
  paddle::Tensor labels = as_int64(labels_in, kOp, "labels");
  const std::vector<int64_t> out_shape = leading(logits.shape());
  paddle::Tensor loss = new_output(out_shape, paddle::DataType::FLOAT32, logits.place());
  std::vector<int64_t> stats_shape = out_shape;
  stats_shape.push_back(2);
  paddle::Tensor stats = new_output(stats_shape, paddle::DataType::FLOAT32, logits.place());
  run_kernel(kOp, [&] {
    k::cross_entropy_forward(p, logits.data(), labels.data<int64_t>(), loss.data<float>(), stats.data<float>());
  });
  return {loss, stats};
}

std::vector<paddle::Tensor> CrossEntropyBackward(const paddle::Tensor& logits_in,
                                                 const paddle::Tensor& labels_in,
                                                 const paddle::Tensor& stats, const paddle::Tensor& dloss_in,
                                                 int64_t ignore_index) {
  const k::CrossEntropyParams p = params(logits_in, labels_in, ignore_index);
#ifdef LLMPRE_CUDA_CROSS_ENTROPY
  if (logits_in.is_gpu()) return CrossEntropyBackwardCuda(logits_in, labels_in, stats, dloss_in, ignore_index);
#endif
  check_cpu(logits_in, kOp, "logits");
  check_cpu(labels_in, kOp, "labels");
  paddle::Tensor logits = contiguous(logits_in);
  if (!has_grad(dloss_in)) return {paddle::zeros(logits.shape(), logits.dtype(), logits.place())};
  PD_CHECK(dloss_in.numel() == p.rows, kOp, ": the gradient of loss must have ", p.rows,
           " elements, got ", shape_str(dloss_in.shape()));
  paddle::Tensor labels = as_int64(labels_in, kOp, "labels");
  paddle::Tensor dloss = contiguous(dloss_in);
  if (dloss.dtype() != paddle::DataType::FLOAT32) dloss = paddle::experimental::cast(dloss, paddle::DataType::FLOAT32);
  paddle::Tensor dlogits = new_output(logits.shape(), logits.dtype(), logits.place());
  run_kernel(kOp, [&] {
    k::cross_entropy_backward(p, logits.data(), labels.data<int64_t>(), stats.data<float>(),
                              dloss.data<float>(), dlogits.data());
  });
  return {dlogits};
}

std::vector<std::vector<int64_t>> CrossEntropyInferShape(const std::vector<int64_t>& logits,
                                                         const std::vector<int64_t>& labels) {
  std::vector<int64_t> stats = leading(logits);
  stats.push_back(2);
  return {leading(logits), stats};
}

std::vector<paddle::DataType> CrossEntropyInferDtype(const paddle::DataType& logits,
                                                     const paddle::DataType& labels) {
  return {paddle::DataType::FLOAT32, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(llmpre_cross_entropy)
    .Inputs({"Logits", "Labels"})
    .Outputs({"Loss", "Stats"})
    .Attrs({"ignore_index: int64_t"})
    .SetKernelFn(PD_KERNEL(CrossEntropyForward))
    .SetInferShapeFn(PD_INFER_SHAPE(CrossEntropyInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(CrossEntropyInferDtype));

PD_BUILD_GRAD_OP(llmpre_cross_entropy)
    .Inputs({"Logits", "Labels", "Stats", paddle::Grad("Loss")})
    .Outputs({paddle::Grad("Logits")})
    .Attrs({"ignore_index: int64_t"})
    .SetKernelFn(PD_KERNEL(CrossEntropyBackward));
