// GPU half of llmpre_flash_attention (paddle_ops/flash_attention_op.cc sends
// GPU tensors here after its shared shape and dtype checks, the backward's
// `out`, `lse` and gradient included; an undefined gradient gets zeros there;
// see cuda_ops.h). Calls the raw-pointer launchers of cuda/flash_attention on
// the tensors' stream.
//
// What the CUDA kernels add to the op's contract: q, k, v in bfloat16 or
// float16 (float32 on GPU is refused with a hint), v_head_dim == head_dim,
// head_dim among those compiled in (64, 128, 256 by default). The backward
// accumulates dq with fp32 atomics unless LLMPRE_FLASH_ATTENTION_DETERMINISTIC=1
// or FLAGS_cudnn_deterministic=1 is set in the environment, which selects the
// bitwise-reproducible dq pass (dk and dv are reproducible either way).
//
// Linked only into a CUDA build of Paddle; `make paddle-gpu-glue-check`
// compiles it without one (it has not run on a GPU yet).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_ops.h"
#include "flash_attention/flash_attention_cuda.h"
#include "gpu_glue.h"

namespace {

using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_flash_attention";

// bfloat16 or float16: the kernels have no float32 path.
llmpre::DType attention_dtype(const paddle::Tensor& q) {
  PD_CHECK(q.dtype() == paddle::DataType::BFLOAT16 || q.dtype() == paddle::DataType::FLOAT16, kOp,
           ": the CUDA kernel takes bfloat16 or float16 `q`, `k`, `v`; got ", dtype_str(q.dtype()),
           " (cast to bfloat16, or use llmpre.ops.reference.attention for float32 on GPU)");
  return gpu_dtype(q, kOp, "q");
}

// Dense, and 16-byte aligned as the kernels' vector loads need (an offset
// view is copied).
paddle::Tensor dense(const paddle::Tensor& t) {
  paddle::Tensor c = contiguous(t);
  if (reinterpret_cast<uintptr_t>(c.data()) % 16 != 0) c = paddle::experimental::assign(c);
  return c;
}

// The fields shared by forward and backward; the op has checked the shapes.
llmpre::cuda::FlashAttentionFwdParams shape_params(const paddle::Tensor& q, const paddle::Tensor& kt,
                                              const paddle::Tensor& v, bool causal, int window, float scale,
                                              int kernel) {
  const auto &qs = q.shape(), &ks = kt.shape(), &vs = v.shape();
  PD_CHECK(vs[3] == qs[3], kOp, ": the CUDA kernel needs v_head_dim == head_dim, got ", vs[3], " and ",
           qs[3], " (use a CPU tensor or llmpre.ops.reference.attention)");
  PD_CHECK(llmpre::cuda::flash_attention_head_dim_compiled(int(qs[3])), kOp, ": the CUDA kernel has no head_dim ",
           qs[3], " in this build (rebuild with it in LLMPRE_FLASH_ATTENTION_HEAD_DIMS, or use the reference op)");
  llmpre::cuda::FlashAttentionFwdParams p;
  p.batch = int(qs[0]);
  p.seq_q = int(qs[1]);
  p.heads = int(qs[2]);
  p.head_dim = int(qs[3]);
  p.seq_k = int(ks[1]);
  p.kv_heads = int(ks[2]);
  p.causal = causal;
  p.window = window;
  p.scale = scale > 0.f ? scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(qs[3])));
  p.dtype = attention_dtype(q);
  p.kernel = static_cast<llmpre::cuda::FlashAttentionKernel>(kernel);  // checked by the op: 0..2
  return p;
}

// A block of ring attention: query 0 at key position q_offset (INT64_MIN: seq_k - seq_q).
void set_offset(llmpre::cuda::FlashAttentionFwdParams& p, int64_t q_offset) {
  if (q_offset == INT64_MIN) return;
  PD_CHECK(q_offset > INT32_MIN && q_offset <= (int64_t(1) << 30), kOp, ": `q_offset` must fit the kernels' "
           "32-bit positions, got ", q_offset);
  p.q_offset = static_cast<int>(q_offset);
}

bool deterministic_requested() {
  for (const char* name : {"LLMPRE_FLASH_ATTENTION_DETERMINISTIC", "FLAGS_cudnn_deterministic"}) {
    const char* v = std::getenv(name);
    if (v && (std::string(v) == "1" || std::string(v) == "true" || std::string(v) == "True")) return true;
  }
  return false;
}

}  // namespace

std::vector<paddle::Tensor> FlashAttentionForwardCuda(
    const paddle::Tensor& q_in, const paddle::Tensor& k_in, const paddle::Tensor& v_in,
    const paddle::optional<paddle::Tensor>& alibi_slopes, bool causal, int window, float scale, int kernel,
    int64_t q_offset) {
  check_same_gpu(q_in, "q", k_in, "k", kOp);
  check_same_gpu(q_in, "q", v_in, "v", kOp);
  if (alibi_slopes) check_same_gpu(q_in, "q", *alibi_slopes, "alibi_slopes", kOp);
  llmpre::cuda::FlashAttentionFwdParams p = shape_params(q_in, k_in, v_in, causal, window, scale, kernel);
  set_offset(p, q_offset);
  DeviceGuard guard(q_in, kOp);
  const paddle::Tensor q = dense(q_in), kt = dense(k_in), v = dense(v_in);
  paddle::Tensor slopes;
  if (alibi_slopes) slopes = dense(*alibi_slopes);
  const std::vector<int64_t> os = {p.batch, p.seq_q, p.heads, p.head_dim};
  const std::vector<int64_t> ls = {p.batch, p.heads, p.seq_q};
  paddle::Tensor out = paddle::empty(os, q.dtype(), q.place());
  paddle::Tensor lse = paddle::empty(ls, paddle::DataType::FLOAT32, q.place());
  p.q = q.data();
  p.k = kt.data();
  p.v = v.data();
  p.alibi_slopes = alibi_slopes ? slopes.data<float>() : nullptr;
  p.out = out.data();
  p.lse = lse.data<float>();
  run_kernel(kOp, [&] { llmpre::cuda::flash_attention_forward(p, q.stream()); });
  return {out, lse};
}

std::vector<paddle::Tensor> FlashAttentionBackwardCuda(
    const paddle::Tensor& q_in, const paddle::Tensor& k_in, const paddle::Tensor& v_in,
    const paddle::optional<paddle::Tensor>& alibi_slopes, const paddle::Tensor& out_in,
    const paddle::Tensor& lse_in, const paddle::Tensor& dout_in, bool causal, int window, float scale,
    int kernel, int64_t q_offset) {
  check_same_gpu(q_in, "q", k_in, "k", kOp);
  check_same_gpu(q_in, "q", v_in, "v", kOp);
  check_same_gpu(q_in, "q", out_in, "out", kOp);
  check_same_gpu(q_in, "q", lse_in, "lse", kOp);
  check_same_gpu(q_in, "q", dout_in, "grad of out", kOp);
  if (alibi_slopes) check_same_gpu(q_in, "q", *alibi_slopes, "alibi_slopes", kOp);
  llmpre::cuda::FlashAttentionBwdParams p;
  static_cast<llmpre::cuda::FlashAttentionFwdParams&>(p) = shape_params(q_in, k_in, v_in, causal, window, scale, kernel);
  set_offset(p, q_offset);
  DeviceGuard guard(q_in, kOp);
  const paddle::Tensor q = dense(q_in), kt = dense(k_in), v = dense(v_in);
  const paddle::Tensor out = dense(out_in), lse = dense(lse_in), dout = dense(dout_in);
  paddle::Tensor slopes;
  if (alibi_slopes) slopes = dense(*alibi_slopes);
  paddle::Tensor dq = paddle::empty(q.shape(), q.dtype(), q.place());
  paddle::Tensor dk = paddle::empty(kt.shape(), kt.dtype(), kt.place());
  paddle::Tensor dv = paddle::empty(v.shape(), v.dtype(), v.place());
  p.deterministic = deterministic_requested();
  size_t ws_bytes = 0;
  run_kernel(kOp, [&] { ws_bytes = llmpre::cuda::flash_attention_bwd_workspace_bytes(p); });
  // 256 spare bytes so the workspace can start on a 256-byte boundary.
  const std::vector<int64_t> ws_shape = {static_cast<int64_t>(ws_bytes + 256)};
  paddle::Tensor ws = paddle::empty(ws_shape, paddle::DataType::UINT8, q.place());
  const uintptr_t base = reinterpret_cast<uintptr_t>(ws.data());
  p.workspace = reinterpret_cast<void*>((base + 255) / 256 * 256);
  p.q = q.data();
  p.k = kt.data();
  p.v = v.data();
  p.alibi_slopes = alibi_slopes ? slopes.data<float>() : nullptr;
  p.out = const_cast<void*>(out.data());  // read, not written, by the backward kernels
  p.lse = const_cast<float*>(lse.data<float>());
  p.dout = dout.data();
  p.dq = dq.data();
  p.dk = dk.data();
  p.dv = dv.data();
  run_kernel(kOp, [&] { llmpre::cuda::flash_attention_backward(p, q.stream()); });
  return {dq, dk, dv};
}
