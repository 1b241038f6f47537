// llmpre._cuda bindings of the CUDA flash attention (cuda/flash_attention): device
// pointers as ints, shapes as keywords, dtype as "bf16" or "fp16". Used by
// bench/gpu/check_flash_attention.py and bench/gpu/bench_flash_attention.py.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings/registry.h"
#include "flash_attention/flash_attention_cuda.h"

namespace py = pybind11;

namespace {

using llmpre::cuda::FlashAttentionKernel;
using llmpre::cuda::FlashAttentionBwdParams;
using llmpre::cuda::FlashAttentionFwdParams;

llmpre::DType parse_dtype(const std::string& s) {
  if (s == "bf16" || s == "bfloat16") return llmpre::DType::kBFloat16;
  if (s == "fp16" || s == "float16") return llmpre::DType::kFloat16;
  throw std::invalid_argument("flash_attention: dtype must be 'bf16' or 'fp16', got '" + s + "'");
}

FlashAttentionKernel parse_kernel(const std::string& s) {
  if (s == "auto") return FlashAttentionKernel::kAuto;
  if (s == "portable") return FlashAttentionKernel::kPortable;
  if (s == "hopper") return FlashAttentionKernel::kHopper;
  throw std::invalid_argument("flash_attention: kernel must be 'auto', 'portable' or 'hopper', got '" + s + "'");
}

const char* kernel_name(FlashAttentionKernel k) { return k == FlashAttentionKernel::kHopper ? "hopper" : "portable"; }

void set_shape(FlashAttentionFwdParams& p, int batch, int seq_q, int seq_k, int heads, int kv_heads, int head_dim,
               bool causal, int window, float scale, const std::string& dtype) {
  p.batch = batch;
  p.seq_q = seq_q;
  p.seq_k = seq_k;
  p.heads = heads;
  p.kv_heads = kv_heads;
  p.head_dim = head_dim;
  p.causal = causal;
  p.window = window;
  p.scale = scale;
  p.dtype = parse_dtype(dtype);
}

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace

LLMPRE_CUDA_BINDINGS(flash_attention, m) {
  m.def("flash_attention_head_dim_compiled", &llmpre::cuda::flash_attention_head_dim_compiled, py::arg("head_dim"),
        "whether this build has flash attention kernels for head_dim");
  m.def("flash_attention_hopper_compiled", &llmpre::cuda::flash_attention_hopper_compiled, py::arg("head_dim"),
        py::arg("backward") = false, "whether this build has Hopper (sm_90a) kernels for head_dim and the pass");
  m.def(
      "flash_attention_selected_kernel",
      [](int batch, int seq_q, int seq_k, int heads, int kv_heads, int head_dim, bool causal, int window, float scale,
         const std::string& dtype, bool backward, const std::string& kernel) {
        FlashAttentionFwdParams p;
        set_shape(p, batch, seq_q, seq_k, heads, kv_heads, head_dim, causal, window, scale, dtype);
        p.kernel = parse_kernel(kernel);
        return std::string(kernel_name(llmpre::cuda::flash_attention_selected_kernel(p, backward)));
      },
      py::arg("batch"), py::arg("seq_q"), py::arg("seq_k"), py::arg("heads"), py::arg("kv_heads"),
      py::arg("head_dim"), py::arg("causal"), py::arg("window") = -1, py::arg("scale"), py::arg("dtype") = "bf16",
      py::arg("backward") = false, py::arg("kernel") = "auto",
      "'portable' or 'hopper': the kernels such a call runs on the current device");

  m.def(
      "flash_attention_forward",
      [](uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, int batch, int seq_q, int seq_k,
         int heads, int kv_heads, int head_dim, bool causal, int window, float scale, const std::string& dtype,
         uintptr_t alibi_slopes, uintptr_t stream, const std::string& kernel) {
        FlashAttentionFwdParams p;
        set_shape(p, batch, seq_q, seq_k, heads, kv_heads, head_dim, causal, window, scale, dtype);
        p.kernel = parse_kernel(kernel);
        p.q = ptr<const void>(q);
        p.k = ptr<const void>(k);
        p.v = ptr<const void>(v);
        p.out = ptr<void>(out);
        p.lse = ptr<float>(lse);
        p.alibi_slopes = ptr<const float>(alibi_slopes);
        llmpre::cuda::flash_attention_forward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("batch"),
      py::arg("seq_q"), py::arg("seq_k"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"),
      py::arg("causal"), py::arg("window") = -1, py::arg("scale"), py::arg("dtype") = "bf16",
      py::arg("alibi_slopes") = 0, py::arg("stream") = 0, py::arg("kernel") = "auto",
      "out [b, sq, h, d] and lse [b, h, sq] (fp32) from q [b, sq, h, d], k and v [b, sk, hk, d]; "
      "kernel: 'auto', 'portable' or 'hopper'");

  m.def(
      "flash_attention_bwd_workspace_bytes",
      [](int batch, int seq_q, int seq_k, int heads, int kv_heads, int head_dim, bool causal, int window,
         float scale, const std::string& dtype, bool deterministic) {
        FlashAttentionBwdParams p;
        set_shape(p, batch, seq_q, seq_k, heads, kv_heads, head_dim, causal, window, scale, dtype);
        p.deterministic = deterministic;
        return llmpre::cuda::flash_attention_bwd_workspace_bytes(p);
      },
      py::arg("batch"), py::arg("seq_q"), py::arg("seq_k"), py::arg("heads"), py::arg("kv_heads"),
      py::arg("head_dim"), py::arg("causal"), py::arg("window") = -1, py::arg("scale"),
      py::arg("dtype") = "bf16", py::arg("deterministic") = false,
      "device bytes flash_attention_backward needs as workspace (on the current device)");

  m.def(
      "flash_attention_backward",
      [](uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, uintptr_t dout, uintptr_t dq,
         uintptr_t dk, uintptr_t dv, uintptr_t workspace, size_t workspace_bytes, int batch, int seq_q,
         int seq_k, int heads, int kv_heads, int head_dim, bool causal, int window, float scale,
         const std::string& dtype, bool deterministic, uintptr_t alibi_slopes, uintptr_t stream,
         const std::string& kernel) {
        FlashAttentionBwdParams p;
        set_shape(p, batch, seq_q, seq_k, heads, kv_heads, head_dim, causal, window, scale, dtype);
        p.deterministic = deterministic;
        p.kernel = parse_kernel(kernel);
        const size_t need = llmpre::cuda::flash_attention_bwd_workspace_bytes(p);
        if (workspace_bytes < need) {
          throw std::invalid_argument("flash_attention_backward: workspace_bytes is " +
                                      std::to_string(workspace_bytes) +
                                      " but this call needs " + std::to_string(need) +
                                      " (flash_attention_bwd_workspace_bytes)");
        }
        p.q = ptr<const void>(q);
        p.k = ptr<const void>(k);
        p.v = ptr<const void>(v);
        p.out = ptr<void>(out);
        p.lse = ptr<float>(lse);
        p.dout = ptr<const void>(dout);
        p.dq = ptr<void>(dq);
        p.dk = ptr<void>(dk);
        p.dv = ptr<void>(dv);
        p.workspace = ptr<void>(workspace);
        p.alibi_slopes = ptr<const float>(alibi_slopes);
        llmpre::cuda::flash_attention_backward(p, reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("dout"), py::arg("dq"),
      py::arg("dk"), py::arg("dv"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("batch"),
      py::arg("seq_q"), py::arg("seq_k"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"),
      py::arg("causal"), py::arg("window") = -1, py::arg("scale"), py::arg("dtype") = "bf16",
      py::arg("deterministic") = false, py::arg("alibi_slopes") = 0, py::arg("stream") = 0,
      py::arg("kernel") = "auto", "dq, dk, dv from the forward's inputs, out, lse and dout");
}
