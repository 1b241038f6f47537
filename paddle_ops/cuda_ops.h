// GPU halves of the ops, for a CUDA build of Paddle.
//
// When Paddle is compiled with CUDA, paddle_ops/CMakeLists.txt compiles every
// paddle_ops/cuda/<op>_cuda.cc it finds and defines LLMPRE_CUDA_<OP> for it
// (e.g. rms_norm_cuda.cc -> LLMPRE_CUDA_RMS_NORM); the op then sends GPU
// tensors here after the shared shape/dtype checks, and CPU tensors to the CPU
// kernels (swiglu, grouped_mlp and moe_combine also answer a missing upstream
// gradient and check its shape and dtype before the split: their GPU backward
// gets a defined one). Each function takes the op's checked inputs and returns the same
// outputs as the CPU path; it calls the raw-pointer launchers of cuda/<op>/ on
// the tensor's stream. An op without one (adamw_) gives a GPU
// tensor a clear error from check_cpu(). Every definition must match its declaration here:
// `make paddle-gpu-glue-check` compiles these files as a CUDA build of Paddle
// would (no GPU needed) and fails on a definition this header lacks.
#pragma once

#include <vector>

#include "paddle/extension.h"

#ifdef LLMPRE_CUDA_RMS_NORM
std::vector<paddle::Tensor> RmsNormForwardCuda(const paddle::Tensor& x, const paddle::Tensor& weight,
                                               float epsilon);
std::vector<paddle::Tensor> RmsNormBackwardCuda(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                const paddle::Tensor& inv_rms, const paddle::Tensor& dy,
                                                float epsilon);
#endif

#ifdef LLMPRE_CUDA_ROTARY
// inverse = true rotates by -angle (the backward pass).
paddle::Tensor RotaryCuda(const paddle::Tensor& x, const paddle::Tensor& cos, const paddle::Tensor& sin,
                          const paddle::optional<paddle::Tensor>& position_ids, bool interleaved,
                          bool inverse);
#endif

#ifdef LLMPRE_CUDA_SWIGLU
std::vector<paddle::Tensor> SwiGluForwardCuda(const paddle::Tensor& gate, const paddle::Tensor& up);
std::vector<paddle::Tensor> SwiGluBackwardCuda(const paddle::Tensor& gate, const paddle::Tensor& up,
                                               const paddle::Tensor& dout);
#endif

#ifdef LLMPRE_CUDA_FLASH_ATTENTION
// Same inputs, attributes and outputs as the CPU functions of flash_attention_op.cc;
// q_offset (the block ops): key position of query 0, INT64_MIN for seq_k - seq_q.
std::vector<paddle::Tensor> FlashAttentionForwardCuda(
    const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& v,
    const paddle::optional<paddle::Tensor>& alibi_slopes, bool causal, int window, float scale, int kernel,
    int64_t q_offset = INT64_MIN);
std::vector<paddle::Tensor> FlashAttentionBackwardCuda(
    const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& v,
    const paddle::optional<paddle::Tensor>& alibi_slopes, const paddle::Tensor& out,
    const paddle::Tensor& lse, const paddle::Tensor& dout, bool causal, int window, float scale, int kernel,
    int64_t q_offset = INT64_MIN);
#endif

#ifdef LLMPRE_CUDA_GROUPED_MLP
// bfloat16 on GPU; the same inputs and outputs as the CPU functions of grouped_mlp_op.cc
// (offsets may live on the CPU or on x's GPU).
std::vector<paddle::Tensor> GroupedMlpForwardCuda(const paddle::Tensor& x, const paddle::Tensor& offsets,
                                                  const std::vector<paddle::Tensor>& w_gate,
                                                  const std::vector<paddle::Tensor>& w_up,
                                                  const std::vector<paddle::Tensor>& w_down,
                                                  const paddle::optional<paddle::Tensor>& index);
std::vector<paddle::Tensor> GroupedMlpBackwardCuda(const paddle::Tensor& x, const paddle::Tensor& offsets,
                                                   const std::vector<paddle::Tensor>& w_gate,
                                                   const std::vector<paddle::Tensor>& w_up,
                                                   const std::vector<paddle::Tensor>& w_down,
                                                   const paddle::optional<paddle::Tensor>& index,
                                                   const paddle::Tensor& gate, const paddle::Tensor& up,
                                                   const paddle::Tensor& dout);
#endif

#ifdef LLMPRE_CUDA_MOE_COMBINE
// y float32, float16 or bfloat16 on GPU; the same inputs and outputs as the CPU functions of
// moe_combine_op.cc (pos and weights on y's GPU).
std::vector<paddle::Tensor> MoeCombineForwardCuda(const paddle::Tensor& y, const paddle::Tensor& pos,
                                                  const paddle::Tensor& weights);
std::vector<paddle::Tensor> MoeCombineBackwardCuda(const paddle::Tensor& y, const paddle::Tensor& pos,
                                                   const paddle::Tensor& weights, const paddle::Tensor& dout);
#endif

#ifdef LLMPRE_CUDA_CROSS_ENTROPY
std::vector<paddle::Tensor> CrossEntropyForwardCuda(const paddle::Tensor& logits,
                                                    const paddle::Tensor& labels, int64_t ignore_index);
std::vector<paddle::Tensor> CrossEntropyBackwardCuda(const paddle::Tensor& logits,
                                                     const paddle::Tensor& labels,
                                                     const paddle::Tensor& stats,
                                                     const paddle::Tensor& dloss, int64_t ignore_index);
#endif
