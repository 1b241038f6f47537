// llmpre_flash_attention: tiled attention with an online softmax (kernel:
// cpp/kernels/flash_attention).
//   inputs  q [batch, seq_q, heads, head_dim], k [batch, seq_k, kv_heads, head_dim],
//           v [batch, seq_k, kv_heads, v_head_dim] (all float32 or all bfloat16),
//           alibi_slopes (optional) [heads] float32
//   attrs   causal: bool; window: int (-1 = none, else >= 1 keys);
//           scale: float (<= 0 = 1/sqrt(head_dim))
//   outputs out [batch, seq_q, heads, v_head_dim] (q's dtype),
//           lse [batch, heads, seq_q] float32 (saved for backward; -inf for a
//           query that sees no key, whose out is 0)
//   grad    dq, dk, dv (alibi_slopes gets no gradient)
#include <cmath>

#include "cuda_ops.h"
#include "flash_attention/flash_attention.h"
#include "op_common.h"

namespace {
using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_flash_attention";
constexpr const char* kBlockOp = "llmpre_flash_attention_block";
constexpr const char* kBlockBwdOp = "llmpre_flash_attention_block_bwd";

// Validates the forward's inputs and attributes; returns the kernel parameters
// without pointers.
k::FlashAttentionFwdParams params(const paddle::Tensor& q, const paddle::Tensor& kt,
                             const paddle::Tensor& v,
                             const paddle::optional<paddle::Tensor>& alibi_slopes, bool causal,
                             int window, float scale,
                             const char* op = kOp) {
  const auto &qs = q.shape(), &ks = kt.shape(), &vs = v.shape();
  PD_CHECK(qs.size() == 4, op, ": `q` must be [batch, seq_q, heads, head_dim], got ", shape_str(qs));
  PD_CHECK(ks.size() == 4 && ks[0] == qs[0] && ks[3] == qs[3], op,
           ": `k` must be [batch, seq_k, kv_heads, head_dim] = [", qs[0], ", seq_k, kv_heads, ", qs[3],
           "] for q of shape ", shape_str(qs), ", got ", shape_str(ks));
  PD_CHECK(vs.size() == 4 && vs[0] == ks[0] && vs[1] == ks[1] && vs[2] == ks[2], op,
           ": `v` must be [batch, seq_k, kv_heads, v_head_dim] = [", ks[0], ", ", ks[1], ", ", ks[2],
           ", v_head_dim] for k of shape ", shape_str(ks), ", got ", shape_str(vs));
  PD_CHECK(qs[2] >= 1 && ks[2] >= 1 && qs[2] % ks[2] == 0, op, ": `q`'s heads (", qs[2],
           ") must be a positive multiple of `k`'s kv_heads (", ks[2], ")");
  PD_CHECK(qs[3] >= 1 && vs[3] >= 1, op, ": head_dim must be >= 1, got q ", shape_str(qs), " and v ",
           shape_str(vs));
  k::FlashAttentionFwdParams p;
  p.dtype = kernel_dtype(q, op, "q");
  check_same_dtype(q, "q", kt, "k", op);
  check_same_dtype(q, "q", v, "v", op);
  PD_CHECK(window == -1 || window >= 1, op, ": `window` must be -1 (no window) or >= 1 keys, got ",
           window);
  PD_CHECK(std::isfinite(scale), op, ": `scale` must be finite (<= 0 for 1/sqrt(head_dim)), got ",
           scale);
  if (alibi_slopes) {
    const auto& as = alibi_slopes->shape();
    PD_CHECK(as.size() == 1 && as[0] == qs[2], op, ": `alibi_slopes` must be [heads] = [", qs[2],
             "], got ", shape_str(as));
    PD_CHECK(alibi_slopes->dtype() == paddle::DataType::FLOAT32, op,
             ": `alibi_slopes` must be float32, got ", dtype_str(alibi_slopes->dtype()));
  }
  p.batch = qs[0];
  p.seq_q = qs[1];
  p.heads = qs[2];
  p.head_dim = qs[3];
  p.seq_k = ks[1];
  p.kv_heads = ks[2];
  p.v_head_dim = vs[3];
  p.causal = causal;
  p.window = window;
  p.scale = scale > 0.f ? scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(qs[3])));
  return p;
}

// The backward's saved tensors and incoming gradient, on any device.
void check_backward_inputs(const k::FlashAttentionFwdParams& fp, const paddle::Tensor& q, const paddle::Tensor& out,
                           const paddle::Tensor& lse, const paddle::Tensor& dout,
                           const char* op = kOp) {
  const std::vector<int64_t> os = {fp.batch, fp.seq_q, fp.heads, fp.v_head_dim};
  const std::vector<int64_t> ls = {fp.batch, fp.heads, fp.seq_q};
  PD_CHECK(out.shape() == os, op, ": `out` must be ", shape_str(os), ", got ", shape_str(out.shape()));
  check_same_dtype(q, "q", out, "out", op);
  check_same_shape(out, "out", dout, "grad of out", op);
  check_same_dtype(q, "q", dout, "grad of out", op);
  PD_CHECK(lse.shape() == ls && lse.dtype() == paddle::DataType::FLOAT32, op, ": `lse` must be float32 ",
           shape_str(ls), ", got ", dtype_str(lse.dtype()), " ", shape_str(lse.shape()));
}

void check_all_cpu(const paddle::Tensor& q, const paddle::Tensor& kt, const paddle::Tensor& v,
                   const paddle::optional<paddle::Tensor>& alibi_slopes) {
  check_cpu(q, kOp, "q");
  check_cpu(kt, kOp, "k");
  check_cpu(v, kOp, "v");
  if (alibi_slopes) check_cpu(*alibi_slopes, kOp, "alibi_slopes");
}
// The GPU kernel set (llmpre.ops.select chooses it): 0 auto, 1 portable, 2 Hopper. The CPU
// has one kernel; the choice is still checked so a bad value fails on any device.
void check_kernel_choice(int kernel) {
  PD_CHECK(kernel >= 0 && kernel <= 2, kOp, ": `kernel` must be 0 (auto), 1 (portable) or 2 (hopper), got ",
           kernel);
}
}  // namespace

namespace {
// The CPU kernel calls shared by llmpre_flash_attention and its ring-block entry points
// (checks done by the caller): contiguous inputs, the outputs, the kernel's pointers.
std::vector<paddle::Tensor> cpu_forward(k::FlashAttentionFwdParams p, const paddle::Tensor& q_in,
                                        const paddle::Tensor& k_in, const paddle::Tensor& v_in,
                                        const paddle::optional<paddle::Tensor>& alibi_slopes, const char* op) {
  const paddle::Tensor q = contiguous(q_in), kt = contiguous(k_in), v = contiguous(v_in);
  paddle::Tensor slopes;
  if (alibi_slopes) slopes = contiguous(*alibi_slopes);
  paddle::Tensor out = paddle::empty({p.batch, p.seq_q, p.heads, p.v_head_dim}, q.dtype(), q.place());
  paddle::Tensor lse = paddle::empty({p.batch, p.heads, p.seq_q}, paddle::DataType::FLOAT32, q.place());
  p.q = q.data();
  p.k = kt.data();
  p.v = v.data();
  p.alibi_slopes = alibi_slopes ? slopes.data<float>() : nullptr;
  p.out = out.data();
  p.lse = lse.data<float>();
  run_kernel(op, [&] { k::flash_attention_forward(p); });
  return {out, lse};
}

std::vector<paddle::Tensor> cpu_backward(const k::FlashAttentionFwdParams& fp, const paddle::Tensor& q_in,
                                         const paddle::Tensor& k_in, const paddle::Tensor& v_in,
                                         const paddle::optional<paddle::Tensor>& alibi_slopes,
                                         const paddle::Tensor& out_in, const paddle::Tensor& lse_in,
                                         const paddle::Tensor& dout_in, const char* op) {
  const paddle::Tensor q = contiguous(q_in), kt = contiguous(k_in), v = contiguous(v_in);
  const paddle::Tensor out = contiguous(out_in), lse = contiguous(lse_in), dout = contiguous(dout_in);
  paddle::Tensor slopes;
  if (alibi_slopes) slopes = contiguous(*alibi_slopes);
  paddle::Tensor dq = paddle::empty(q.shape(), q.dtype(), q.place());
  paddle::Tensor dk = paddle::empty(kt.shape(), kt.dtype(), kt.place());
  paddle::Tensor dv = paddle::empty(v.shape(), v.dtype(), v.place());
  k::FlashAttentionBwdParams p;
  static_cast<k::FlashAttentionFwdParams&>(p) = fp;
  p.q = q.data();
  p.k = kt.data();
  p.v = v.data();
  p.alibi_slopes = alibi_slopes ? slopes.data<float>() : nullptr;
  p.out = const_cast<void*>(out.data());  // read, not written, by the backward kernel
  p.lse = const_cast<float*>(lse.data<float>());
  p.dout = dout.data();
  p.dq = dq.data();
  p.dk = dk.data();
  p.dv = dv.data();
  run_kernel(op, [&] { k::flash_attention_backward(p); });
  return {dq, dk, dv};
}
}  // namespace

std::vector<paddle::Tensor> FlashAttentionForward(
    const paddle::Tensor& q_in, const paddle::Tensor& k_in, const paddle::Tensor& v_in,
    const paddle::optional<paddle::Tensor>& alibi_slopes, bool causal, int window, float scale, int kernel) {
  check_kernel_choice(kernel);
  k::FlashAttentionFwdParams p = params(q_in, k_in, v_in, alibi_slopes, causal, window, scale);
#ifdef LLMPRE_CUDA_FLASH_ATTENTION
  if (q_in.is_gpu())
    return FlashAttentionForwardCuda(q_in, k_in, v_in, alibi_slopes, causal, window, scale, kernel);
#endif
  check_all_cpu(q_in, k_in, v_in, alibi_slopes);
  return cpu_forward(p, q_in, k_in, v_in, alibi_slopes, kOp);
}

std::vector<paddle::Tensor> FlashAttentionBackward(
    const paddle::Tensor& q_in, const paddle::Tensor& k_in, const paddle::Tensor& v_in,
    const paddle::optional<paddle::Tensor>& alibi_slopes, const paddle::Tensor& out_in,
    const paddle::Tensor& lse_in, const paddle::Tensor& dout_in, bool causal, int window, float scale,
    int kernel) {
  check_kernel_choice(kernel);
  const k::FlashAttentionFwdParams fp = params(q_in, k_in, v_in, alibi_slopes, causal, window, scale);
  if (!has_grad(dout_in))
    return {paddle::zeros(q_in.shape(), q_in.dtype(), q_in.place()),
            paddle::zeros(k_in.shape(), k_in.dtype(), k_in.place()),
            paddle::zeros(v_in.shape(), v_in.dtype(), v_in.place())};
  check_backward_inputs(fp, q_in, out_in, lse_in, dout_in);
#ifdef LLMPRE_CUDA_FLASH_ATTENTION
  if (q_in.is_gpu())
    return FlashAttentionBackwardCuda(q_in, k_in, v_in, alibi_slopes, out_in, lse_in, dout_in, causal,
                                      window, scale, kernel);
#endif
  check_all_cpu(q_in, k_in, v_in, alibi_slopes);
  check_cpu(out_in, kOp, "out");
  check_cpu(lse_in, kOp, "lse");
  check_cpu(dout_in, kOp, "grad of out");
  return cpu_backward(fp, q_in, k_in, v_in, alibi_slopes, out_in, lse_in, dout_in, kOp);
}

std::vector<std::vector<int64_t>> FlashAttentionInferShape(
    const std::vector<int64_t>& q, const std::vector<int64_t>& k, const std::vector<int64_t>& v,
    const paddle::optional<std::vector<int64_t>>& alibi_slopes, bool causal, int window, float scale,
    int kernel) {
  PD_CHECK(q.size() == 4 && v.size() == 4, kOp,
           ": `q` and `v` must be [batch, seq, heads, head_dim], got ", shape_str(q), " and ",
           shape_str(v));
  return {{q[0], q[1], q[2], v[3]}, {q[0], q[2], q[1]}};
}

std::vector<paddle::DataType> FlashAttentionInferDtype(
    const paddle::DataType& q, const paddle::DataType& k, const paddle::DataType& v,
    const paddle::optional<paddle::DataType>& alibi_slopes) {
  return {q, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(llmpre_flash_attention)
    .Inputs({"q", "k", "v", paddle::Optional("alibi_slopes")})
    .Outputs({"out", "lse"})
    .Attrs({"causal: bool", "window: int", "scale: float", "kernel: int"})
    .SetKernelFn(PD_KERNEL(FlashAttentionForward))
    .SetInferShapeFn(PD_INFER_SHAPE(FlashAttentionInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(FlashAttentionInferDtype));

PD_BUILD_GRAD_OP(llmpre_flash_attention)
    .Inputs({"q", "k", "v", paddle::Optional("alibi_slopes"), "out", "lse", paddle::Grad("out")})
    .Outputs({paddle::Grad("q"), paddle::Grad("k"), paddle::Grad("v")})
    .Attrs({"causal: bool", "window: int", "scale: float", "kernel: int"})
    .SetKernelFn(PD_KERNEL(FlashAttentionBackward));

// llmpre_flash_attention_block / llmpre_flash_attention_block_bwd: one block of ring
// attention (llmpre.parallel.context), CPU only, no autograd (the ring is its own).
//   forward  inputs q, k, v, alibi_slopes as above; attrs causal, window, scale and
//            q_offset (the key position of query 0: the distance between the block's
//            query and key chunks); outputs out (q's dtype) and lse [batch, heads, seq_q]
//            fp32 (-inf, with out 0, for a query that sees no key of the block)
//   backward inputs q, k, v, alibi_slopes, out and lse of the whole row (every block
//            merged), dout; outputs dq, dk, dv of this block (to be summed over blocks)
namespace {
void check_block_cpu(const paddle::Tensor& q, const paddle::Tensor& kt, const paddle::Tensor& v,
                     const paddle::optional<paddle::Tensor>& alibi_slopes, const char* op = kBlockOp) {
  PD_CHECK(q.is_cpu() && kt.is_cpu() && v.is_cpu() && (!alibi_slopes || alibi_slopes->is_cpu()), op,
           ": all tensors on the CPU, or all on a GPU with a CUDA build of llmpre (LLMPRE_CUDA)");
}
}  // namespace

std::vector<paddle::Tensor> FlashAttentionBlockForward(
    const paddle::Tensor& q_in, const paddle::Tensor& k_in, const paddle::Tensor& v_in,
    const paddle::optional<paddle::Tensor>& alibi_slopes, bool causal, int window, float scale,
    int64_t q_offset) {
  k::FlashAttentionFwdParams p = params(q_in, k_in, v_in, alibi_slopes, causal, window, scale, kBlockOp);
#ifdef LLMPRE_CUDA_FLASH_ATTENTION
  if (q_in.is_gpu())
    return FlashAttentionForwardCuda(q_in, k_in, v_in, alibi_slopes, causal, window, scale, 0, q_offset);
#endif
  check_block_cpu(q_in, k_in, v_in, alibi_slopes);
  p.q_offset = q_offset;
  return cpu_forward(p, q_in, k_in, v_in, alibi_slopes, kBlockOp);
}

std::vector<paddle::Tensor> FlashAttentionBlockBackward(
    const paddle::Tensor& q_in, const paddle::Tensor& k_in, const paddle::Tensor& v_in,
    const paddle::optional<paddle::Tensor>& alibi_slopes, const paddle::Tensor& out_in,
    const paddle::Tensor& lse_in, const paddle::Tensor& dout_in, bool causal, int window, float scale,
    int64_t q_offset) {
  const k::FlashAttentionFwdParams fp = params(q_in, k_in, v_in, alibi_slopes, causal, window, scale,
                                                kBlockBwdOp);
  check_backward_inputs(fp, q_in, out_in, lse_in, dout_in, kBlockBwdOp);
#ifdef LLMPRE_CUDA_FLASH_ATTENTION
  if (q_in.is_gpu())
    return FlashAttentionBackwardCuda(q_in, k_in, v_in, alibi_slopes, out_in, lse_in, dout_in, causal, window,
                                      scale, 0, q_offset);
#endif
  check_block_cpu(q_in, k_in, v_in, alibi_slopes, kBlockBwdOp);
  PD_CHECK(out_in.is_cpu() && lse_in.is_cpu() && dout_in.is_cpu(), kBlockBwdOp, ": CPU tensors only");
  k::FlashAttentionFwdParams block = fp;
  block.q_offset = q_offset;
  return cpu_backward(block, q_in, k_in, v_in, alibi_slopes, out_in, lse_in, dout_in, kBlockBwdOp);
}

std::vector<std::vector<int64_t>> FlashAttentionBlockInferShape(
    const std::vector<int64_t>& q, const std::vector<int64_t>& k, const std::vector<int64_t>& v,
    const paddle::optional<std::vector<int64_t>>& alibi_slopes, bool causal, int window, float scale,
    int64_t q_offset) {
  return FlashAttentionInferShape(q, k, v, alibi_slopes, causal, window, scale, 0);
}

std::vector<std::vector<int64_t>> FlashAttentionBlockGradInferShape(
    const std::vector<int64_t>& q, const std::vector<int64_t>& k, const std::vector<int64_t>& v,
    const paddle::optional<std::vector<int64_t>>& alibi_slopes, const std::vector<int64_t>& out,
    const std::vector<int64_t>& lse, const std::vector<int64_t>& dout, bool causal, int window,
    float scale, int64_t q_offset) {
  return {q, k, v};
}

std::vector<paddle::DataType> FlashAttentionBlockGradInferDtype(
    const paddle::DataType& q, const paddle::DataType& k, const paddle::DataType& v,
    const paddle::optional<paddle::DataType>& alibi_slopes, const paddle::DataType& out,
    const paddle::DataType& lse, const paddle::DataType& dout) {
  return {q, k, v};
}

PD_BUILD_OP(llmpre_flash_attention_block)
    .Inputs({"q", "k", "v", paddle::Optional("alibi_slopes")})
    .Outputs({"out", "lse"})
    .Attrs({"causal: bool", "window: int", "scale: float", "q_offset: int64_t"})
    .SetKernelFn(PD_KERNEL(FlashAttentionBlockForward))
    .SetInferShapeFn(PD_INFER_SHAPE(FlashAttentionBlockInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(FlashAttentionInferDtype));

PD_BUILD_OP(llmpre_flash_attention_block_bwd)
    .Inputs({"q", "k", "v", paddle::Optional("alibi_slopes"), "out", "lse", "dout"})
    .Outputs({"dq", "dk", "dv"})
    .Attrs({"causal: bool", "window: int", "scale: float", "q_offset: int64_t"})
    .SetKernelFn(PD_KERNEL(FlashAttentionBlockBackward))
    .SetInferShapeFn(PD_INFER_SHAPE(FlashAttentionBlockGradInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(FlashAttentionBlockGradInferDtype));
