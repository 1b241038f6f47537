// Host entry points of the CUDA flash attention: validate the parameter
// struct (errors name the field and the fix), plan the backward workspace,
// and dispatch to the explicit instantiations (dispatch.h). Head dims are
// those compiled in (CMake LLMPRE_FLASH_ATTENTION_HEAD_DIMS defines
// LLMPRE_FA_HDIM_<d> for each).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "flash_attention/dispatch.h"
#include "flash_attention/flash_attention_cuda.h"

namespace llmpre {
namespace cuda {

namespace {

using fa::Bf16;
using fa::FaArgs;
using fa::Fp16;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("flash_attention: " + what);
}

bool aligned(const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

std::string compiled_head_dims() {
  std::string s;
  for (int d : {64, 128, 256})
    if (flash_attention_head_dim_compiled(d)) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return s.empty() ? "none" : s;
}

void require_tensor(const void* p, const char* name, bool nonempty) {
  if (!nonempty) return;
  require(p != nullptr, std::string("`") + name + "` is a null pointer");
  require(aligned(p, 16), std::string("`") + name +
                              "` must be 16-byte aligned (a fresh allocation, not an offset view)");
}

void check_shapes(const FlashAttentionFwdParams& p) {
  require(p.batch >= 0 && p.seq_q >= 0 && p.seq_k >= 0,
          "batch, seq_q and seq_k must be >= 0, got " + std::to_string(p.batch) + ", " +
              std::to_string(p.seq_q) + ", " + std::to_string(p.seq_k));
  require(p.heads >= 1 && p.kv_heads >= 1 && p.heads % p.kv_heads == 0,
          "heads (" + std::to_string(p.heads) + ") must be a positive multiple of kv_heads (" +
              std::to_string(p.kv_heads) + ")");
  require(p.seq_q <= (1 << 30) && p.seq_k <= (1 << 30),
          "seq_q and seq_k must be <= 2^30 (positions are 32-bit in the kernels)");
  require(p.batch <= 65535 && p.heads <= 65535,
          "batch and heads must be <= 65535 (grid limits), got " + std::to_string(p.batch) + " and " +
              std::to_string(p.heads));
  require(flash_attention_head_dim_compiled(p.head_dim),
          "head_dim " + std::to_string(p.head_dim) + " has no kernel in this build (compiled: " +
              compiled_head_dims() + "; CMake option LLMPRE_FLASH_ATTENTION_HEAD_DIMS)");
  require(std::isfinite(p.scale) && p.scale > 0.f,
          "scale must be finite and > 0 (1/sqrt(head_dim) by default), got " + std::to_string(p.scale));
  require(p.dtype == DType::kBFloat16 || p.dtype == DType::kFloat16,
          "dtype must be bfloat16 or float16");
}

void check_common(const FlashAttentionFwdParams& p) {
  check_shapes(p);
  const bool q_any = int64_t(p.batch) * p.seq_q > 0, k_any = int64_t(p.batch) * p.seq_k > 0;
  require_tensor(p.q, "q", q_any);
  require_tensor(p.k, "k", k_any);
  require_tensor(p.v, "v", k_any);
  require_tensor(p.out, "out", q_any);
  require(!q_any || (p.lse != nullptr && aligned(p.lse, 4)), "`lse` must be a 4-byte aligned pointer");
  require(p.alibi_slopes == nullptr || aligned(p.alibi_slopes, 4),
          "`alibi_slopes` must be 4-byte aligned (or nullptr)");
}

int smem_need_fwd(int d) {
  switch (d) {
    case 64: return fa::fwd_smem_bytes<64>();
    case 128: return fa::fwd_smem_bytes<128>();
    default: return fa::fwd_smem_bytes<256>();
  }
}

int bwd_block_keys(int d) {
  switch (d) {
    case 64: return fa::BwdCfg<64>::BN;
    case 128: return fa::BwdCfg<128>::BN;
    default: return fa::BwdCfg<256>::BN;
  }
}

int smem_need_bwd(int d, bool atomic) {
  switch (d) {
    case 64: return atomic ? fa::bwd_smem_bytes<64>(true) : std::max(fa::bwd_smem_bytes<64>(false), fa::dq_smem_bytes<64>());
    case 128: return atomic ? fa::bwd_smem_bytes<128>(true) : std::max(fa::bwd_smem_bytes<128>(false), fa::dq_smem_bytes<128>());
    default: return std::max(fa::bwd_smem_bytes<256>(false), fa::dq_smem_bytes<256>());
  }
}

int smem_need_fwd_sm90(int d) {
  switch (d) {
    case 64: return fa::sm90_fwd_smem_bytes<64>();
    case 128: return fa::sm90_fwd_smem_bytes<128>();
    default: return fa::sm90_fwd_smem_bytes<256>();
  }
}

int smem_need_bwd_sm90(int d, bool atomic) {
  const int own = d == 64 ? fa::sm90_bwd_smem_bytes<64>() : fa::sm90_bwd_smem_bytes<128>();
  if (atomic) return own;
  return std::max(own, d == 64 ? fa::dq_smem_bytes<64>() : fa::dq_smem_bytes<128>());
}

// Why the Hopper kernels cannot run this call; empty when they can.
std::string hopper_unavailable(const FlashAttentionFwdParams& p, const fa::DeviceInfo& dev, bool backward) {
  if (!flash_attention_hopper_compiled(p.head_dim, backward)) {
    return std::string("this build has no Hopper ") + (backward ? "backward" : "forward") + " kernel for head_dim " +
           std::to_string(p.head_dim) + " (forward: 64, 128, 256; backward: 64, 128; built when the CUDA " +
           "architectures include 90)";
  }
  if (dev.cc_major != 9 || dev.cc_minor != 0) {
    return "the Hopper kernels are built for sm_90a and this GPU is sm_" + std::to_string(dev.cc_major) +
           std::to_string(dev.cc_minor);
  }
  if (p.seq_k == 0) return "seq_k is 0";
  return std::string();
}

bool use_hopper(const FlashAttentionFwdParams& p, const fa::DeviceInfo& dev, bool backward) {
  const FlashAttentionKernel k = p.kernel;   // chosen by the caller (llmpre.ops.select for Paddle)
  if (k == FlashAttentionKernel::kPortable) return false;
  const std::string why = hopper_unavailable(p, dev, backward);
  if (k == FlashAttentionKernel::kHopper && !why.empty())
    throw std::invalid_argument("flash_attention: the Hopper kernels were requested, but " + why);
  return why.empty();
}

fa::DeviceInfo check_device(int smem_need) {
  const fa::DeviceInfo dev = fa::current_device_info();
  if (dev.cc_major < 8) {
    throw std::runtime_error("flash_attention: needs an sm_80 or newer GPU (mma.sync bf16, cp.async); this is sm_" +
                             std::to_string(dev.cc_major) + std::to_string(dev.cc_minor));
  }
  if (smem_need > dev.max_smem_optin) {
    throw std::runtime_error("flash_attention: this head_dim needs " + std::to_string(smem_need) +
                             " bytes of shared memory per block; the GPU allows " +
                             std::to_string(dev.max_smem_optin));
  }
  return dev;
}

FaArgs make_args(const FlashAttentionFwdParams& p) {
  FaArgs a;
  a.q = static_cast<const uint16_t*>(p.q);
  a.k = static_cast<const uint16_t*>(p.k);
  a.v = static_cast<const uint16_t*>(p.v);
  a.o = static_cast<uint16_t*>(p.out);
  a.lse = p.lse;
  a.alibi = p.alibi_slopes;
  a.batch = p.batch;
  a.seq_q = p.seq_q;
  a.seq_k = p.seq_k;
  a.heads = p.heads;
  a.kv_heads = p.kv_heads;
  a.group = p.heads / p.kv_heads;
  a.off = p.q_offset == kDefaultQOffset ? p.seq_k - p.seq_q : p.q_offset;
  // A window longer than the last query position hides nothing (pos_i <= seq_q - 1 + off;
  // with the default offset, seq_k - 1).
  a.window = p.window > 0 && int64_t(p.window) < int64_t(p.seq_q) + a.off ? p.window : -1;
  a.seq_q_pad = (p.seq_q + fa::kRowPad - 1) / fa::kRowPad * fa::kRowPad;
  a.scale = p.scale;
  a.scale_log2 = p.scale * fa::kLog2e;
  return a;
}

template <class T>
void forward_t(const FaArgs& a, int d, bool causal, cudaStream_t s) {
  switch (d) {
#ifdef LLMPRE_FA_HDIM_64
    case 64: causal ? fa::run_fwd<T, 64, true>(a, s) : fa::run_fwd<T, 64, false>(a, s); return;
#endif
#ifdef LLMPRE_FA_HDIM_128
    case 128: causal ? fa::run_fwd<T, 128, true>(a, s) : fa::run_fwd<T, 128, false>(a, s); return;
#endif
#ifdef LLMPRE_FA_HDIM_256
    case 256: causal ? fa::run_fwd<T, 256, true>(a, s) : fa::run_fwd<T, 256, false>(a, s); return;
#endif
    default: throw std::logic_error("flash_attention: head_dim passed the check but has no kernel");
  }
}

template <class T>
void backward_t(const FaArgs& a, int d, bool causal, int sms, cudaStream_t s) {
  switch (d) {
#ifdef LLMPRE_FA_HDIM_64
    case 64: causal ? fa::run_bwd<T, 64, true>(a, sms, s) : fa::run_bwd<T, 64, false>(a, sms, s); return;
#endif
#ifdef LLMPRE_FA_HDIM_128
    case 128: causal ? fa::run_bwd<T, 128, true>(a, sms, s) : fa::run_bwd<T, 128, false>(a, sms, s); return;
#endif
#ifdef LLMPRE_FA_HDIM_256
    case 256: causal ? fa::run_bwd<T, 256, true>(a, sms, s) : fa::run_bwd<T, 256, false>(a, sms, s); return;
#endif
    default: throw std::logic_error("flash_attention: head_dim passed the check but has no kernel");
  }
}

template <class T>
void forward_sm90_t(const FaArgs& a, int d, bool causal, cudaStream_t s) {
#ifdef LLMPRE_FA_SM90
  switch (d) {
#ifdef LLMPRE_FA_HDIM_64
    case 64: causal ? fa::run_fwd_sm90<T, 64, true>(a, s) : fa::run_fwd_sm90<T, 64, false>(a, s); return;
#endif
#ifdef LLMPRE_FA_HDIM_128
    case 128: causal ? fa::run_fwd_sm90<T, 128, true>(a, s) : fa::run_fwd_sm90<T, 128, false>(a, s); return;
#endif
#ifdef LLMPRE_FA_HDIM_256
    case 256: causal ? fa::run_fwd_sm90<T, 256, true>(a, s) : fa::run_fwd_sm90<T, 256, false>(a, s); return;
#endif
    default: break;
  }
#endif
  (void)a, (void)causal, (void)s;
  throw std::logic_error("flash_attention: Hopper forward selected for head_dim " + std::to_string(d) +
                         " without a kernel");
}

template <class T>
void backward_sm90_t(const FaArgs& a, int d, bool causal, int sms, cudaStream_t s) {
#ifdef LLMPRE_FA_SM90
  switch (d) {
#ifdef LLMPRE_FA_HDIM_64
    case 64: causal ? fa::run_bwd_sm90<T, 64, true>(a, sms, s) : fa::run_bwd_sm90<T, 64, false>(a, sms, s); return;
#endif
#ifdef LLMPRE_FA_HDIM_128
    case 128: causal ? fa::run_bwd_sm90<T, 128, true>(a, sms, s) : fa::run_bwd_sm90<T, 128, false>(a, sms, s); return;
#endif
    default: break;
  }
#endif
  (void)a, (void)causal, (void)sms, (void)s;
  throw std::logic_error("flash_attention: Hopper backward selected for head_dim " + std::to_string(d) +
                         " without a kernel");
}

static_assert(fa::BwdCfg<64>::BN == fa::Sm90BwdCfg<64>::BN && fa::BwdCfg<128>::BN == fa::Sm90BwdCfg<128>::BN,
              "the workspace plan (key blocks) serves both backward kernels");

// Workspace layout of the backward pass (byte offsets, 256-aligned).
struct BwdPlan {
  int splits = 1, heads_per_split = 1;
  bool dq_atomic = false;
  size_t lse2 = 0, dsum = 0, dq_accum = 0, dk_part = 0, dv_part = 0, total = 0;
};

size_t align256(size_t x) { return (x + 255) / 256 * 256; }

BwdPlan plan_backward(const FlashAttentionBwdParams& p, int sms) {
  BwdPlan plan;
  const int group = p.heads / p.kv_heads;
  const int64_t key_blocks = (int64_t(p.seq_k) + bwd_block_keys(p.head_dim) - 1) / bwd_block_keys(p.head_dim);
  const int64_t blocks = key_blocks * p.kv_heads * p.batch;
  // Few KV heads (MQA / strong GQA) leave SMs idle: give each block a slice
  // of the group's query heads and sum the fp32 partials afterwards.
  if (group > 1 && blocks > 0 && blocks < sms) {
    int splits = int((sms + blocks - 1) / blocks);
    if (splits > group) splits = group;
    plan.heads_per_split = (group + splits - 1) / splits;
    plan.splits = (group + plan.heads_per_split - 1) / plan.heads_per_split;
  } else {
    plan.heads_per_split = group;
  }
  plan.dq_atomic = p.head_dim <= 128 && !p.deterministic;
  const int64_t seq_q_pad = (int64_t(p.seq_q) + fa::kRowPad - 1) / fa::kRowPad * fa::kRowPad;
  const size_t stats = size_t(p.batch) * p.heads * seq_q_pad * sizeof(float);
  // Rows to seq_q_pad: the Hopper backward keeps dQ in padded 64-row tiles.
  const size_t dq = plan.dq_atomic ? size_t(p.batch) * seq_q_pad * p.heads * p.head_dim * sizeof(float) : 0;
  const size_t part = plan.splits > 1
                          ? size_t(plan.splits) * p.batch * p.seq_k * p.kv_heads * p.head_dim * sizeof(float)
                          : 0;
  size_t at = 0;
  plan.lse2 = at;
  at += align256(stats);
  plan.dsum = at;
  at += align256(stats);
  plan.dq_accum = at;
  at += align256(dq);
  plan.dk_part = at;
  at += align256(part);
  plan.dv_part = at;
  at += align256(part);
  plan.total = at;
  return plan;
}

size_t elem_count(int64_t a, int64_t b, int64_t c, int64_t d) { return size_t(a * b * c * d); }

}  // namespace

bool flash_attention_hopper_compiled(int head_dim, bool backward) {
#ifdef LLMPRE_FA_SM90
  if (!flash_attention_head_dim_compiled(head_dim)) return false;
  return head_dim == 64 || head_dim == 128 || (head_dim == 256 && !backward);
#else
  (void)head_dim, (void)backward;
  return false;
#endif
}

FlashAttentionKernel flash_attention_selected_kernel(const FlashAttentionFwdParams& p, bool backward) {
  check_shapes(p);
  return use_hopper(p, fa::current_device_info(), backward) ? FlashAttentionKernel::kHopper
                                                             : FlashAttentionKernel::kPortable;
}

bool flash_attention_head_dim_compiled(int head_dim) {
  switch (head_dim) {
#ifdef LLMPRE_FA_HDIM_64
    case 64: return true;
#endif
#ifdef LLMPRE_FA_HDIM_128
    case 128: return true;
#endif
#ifdef LLMPRE_FA_HDIM_256
    case 256: return true;
#endif
    default: return false;
  }
}

void flash_attention_forward(const FlashAttentionFwdParams& p, cudaStream_t stream) {
  check_common(p);
  if (int64_t(p.batch) * p.seq_q == 0) return;
  const bool hopper = use_hopper(p, fa::current_device_info(), false);
  check_device(hopper ? smem_need_fwd_sm90(p.head_dim) : smem_need_fwd(p.head_dim));
  const FaArgs a = make_args(p);
  if (hopper) {
    if (p.dtype == DType::kBFloat16) {
      forward_sm90_t<Bf16>(a, p.head_dim, p.causal, stream);
    } else {
      forward_sm90_t<Fp16>(a, p.head_dim, p.causal, stream);
    }
  } else if (p.dtype == DType::kBFloat16) {
    forward_t<Bf16>(a, p.head_dim, p.causal, stream);
  } else {
    forward_t<Fp16>(a, p.head_dim, p.causal, stream);
  }
}

size_t flash_attention_bwd_workspace_bytes(const FlashAttentionBwdParams& p) {
  check_shapes(p);  // sizes only: callers ask before allocating
  return plan_backward(p, fa::current_device_info().sms).total;
}

void flash_attention_backward(const FlashAttentionBwdParams& p, cudaStream_t stream) {
  check_common(p);
  const bool q_any = int64_t(p.batch) * p.seq_q > 0, k_any = int64_t(p.batch) * p.seq_k > 0;
  require_tensor(p.dout, "dout", q_any);
  require_tensor(p.dq, "dq", q_any);
  require_tensor(p.dk, "dk", k_any);
  require_tensor(p.dv, "dv", k_any);
  if (!q_any || !k_any) {  // nothing attends: the gradients that exist are zero
    if (q_any) fa::memset_async(p.dq, 0, elem_count(p.batch, p.seq_q, p.heads, p.head_dim) * 2, stream);
    if (k_any) {
      fa::memset_async(p.dk, 0, elem_count(p.batch, p.seq_k, p.kv_heads, p.head_dim) * 2, stream);
      fa::memset_async(p.dv, 0, elem_count(p.batch, p.seq_k, p.kv_heads, p.head_dim) * 2, stream);
    }
    return;
  }
  const bool atomic = p.head_dim <= 128 && !p.deterministic;
  const bool hopper = use_hopper(p, fa::current_device_info(), true);
  const fa::DeviceInfo dev =
      check_device(hopper ? smem_need_bwd_sm90(p.head_dim, atomic) : smem_need_bwd(p.head_dim, atomic));
  const BwdPlan plan = plan_backward(p, dev.sms);
  require(p.workspace != nullptr && aligned(p.workspace, 256),
          "`workspace` must point to flash_attention_bwd_workspace_bytes() = " + std::to_string(plan.total) +
              " bytes of 256-byte aligned device memory");
  require(int64_t(p.kv_heads) * plan.splits <= 65535, "kv_heads must be <= 65535 (grid limit)");
  FaArgs a = make_args(p);
  a.dout = static_cast<const uint16_t*>(p.dout);
  a.dq = static_cast<uint16_t*>(p.dq);
  a.dk = static_cast<uint16_t*>(p.dk);
  a.dv = static_cast<uint16_t*>(p.dv);
  char* ws = static_cast<char*>(p.workspace);
  a.lse2 = reinterpret_cast<float*>(ws + plan.lse2);
  a.dsum = reinterpret_cast<float*>(ws + plan.dsum);
  a.dq_accum = plan.dq_atomic ? reinterpret_cast<float*>(ws + plan.dq_accum) : nullptr;
  a.dk_part = plan.splits > 1 ? reinterpret_cast<float*>(ws + plan.dk_part) : nullptr;
  a.dv_part = plan.splits > 1 ? reinterpret_cast<float*>(ws + plan.dv_part) : nullptr;
  a.splits = plan.splits;
  a.heads_per_split = plan.heads_per_split;
  if (hopper) {
    if (p.dtype == DType::kBFloat16) {
      backward_sm90_t<Bf16>(a, p.head_dim, p.causal, dev.sms, stream);
    } else {
      backward_sm90_t<Fp16>(a, p.head_dim, p.causal, dev.sms, stream);
    }
  } else if (p.dtype == DType::kBFloat16) {
    backward_t<Bf16>(a, p.head_dim, p.causal, dev.sms, stream);
  } else {
    backward_t<Fp16>(a, p.head_dim, p.causal, dev.sms, stream);
  }
}

}  // namespace cuda
}  // namespace llmpre
