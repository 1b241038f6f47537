// Launch templates of the Hopper kernels for one (dtype, head_dim, causal):
// tensor maps, shared-memory size, grid. Included only by the generated
// instantiation files flash_{fwd,bwd}_sm90_hdim<D>_<dtype>_<causal>.cu,
// which are compiled for sm_90a alone.
#pragma once

#include "flash_attention/dispatch.h"
#include "flash_attention/flash_attention_launch.cuh"
#include "flash_attention/bwd_sm90_kernel.cuh"
#include "flash_attention/fwd_sm90_kernel.cuh"

namespace llmpre {
namespace cuda {
namespace fa {

// Tensor map of a [batch, seq, heads, D] tensor with boxes of 64 columns x
// `rows` rows of one head.
template <int D>
void make_seq_desc(TmaDesc* out, const void* base, int batch, int seq, int heads, int rows) {
  const uint64_t dims[4] = {uint64_t(D), uint64_t(heads), uint64_t(seq), uint64_t(batch)};
  const uint64_t strides[3] = {uint64_t(D) * 2, uint64_t(heads) * D * 2, uint64_t(seq) * heads * D * 2};
  const uint32_t box[4] = {64u, 1u, uint32_t(rows), 1u};
  make_tma_desc(out, base, dims, strides, box);
}

template <class T, int D, bool Causal>
void run_fwd_sm90(const FaArgs& a, cudaStream_t stream) {
  using C = Sm90FwdCfg<D>;
  Sm90FwdArgs p;
  p.a = a;
  make_seq_desc<D>(&p.tq, a.q, a.batch, a.seq_q, a.heads, C::BM);
  make_seq_desc<D>(&p.tk, a.k, a.batch, a.seq_k, a.kv_heads, C::BN);
  make_seq_desc<D>(&p.tv, a.v, a.batch, a.seq_k, a.kv_heads, C::BN);
  make_seq_desc<D>(&p.to, a.o, a.batch, a.seq_q, a.heads, 64);
  auto kern = &flash_fwd_sm90_kernel<T, D, Causal>;
  constexpr int smem = sm90_fwd_smem_bytes<D>();
  set_max_dynamic_smem(kern, smem);
  const dim3 grid((a.seq_q + C::BM - 1) / C::BM, a.heads, a.batch);
  FA_LAUNCH(kern, grid, 384, smem, stream, p);
}

template <class T, int D, bool Causal>
void run_bwd_sm90(const FaArgs& a, int sms, cudaStream_t stream) {
  using C = Sm90BwdCfg<D>;
  launch_bwd_prep<T, D>(a, stream);
  Sm90BwdArgs p;
  p.a = a;
  make_seq_desc<D>(&p.tq, a.q, a.batch, a.seq_q, a.heads, C::BM);
  make_seq_desc<D>(&p.tdo, a.dout, a.batch, a.seq_q, a.heads, C::BM);
  make_seq_desc<D>(&p.tk, a.k, a.batch, a.seq_k, a.kv_heads, C::BN);
  make_seq_desc<D>(&p.tv, a.v, a.batch, a.seq_k, a.kv_heads, C::BN);
  make_seq_desc<D>(&p.tdk, a.dk, a.batch, a.seq_k, a.kv_heads, 64);
  make_seq_desc<D>(&p.tdv, a.dv, a.batch, a.seq_k, a.kv_heads, 64);
  if (a.dq_accum) memset_async(a.dq_accum, 0, size_t(a.batch) * a.seq_q_pad * a.heads * D * sizeof(float), stream);
  {
    auto kern = &flash_bwd_sm90_kernel<T, D, Causal>;
    constexpr int smem = sm90_bwd_smem_bytes<D>();
    set_max_dynamic_smem(kern, smem);
    const dim3 grid((a.seq_k + C::BN - 1) / C::BN, a.kv_heads * a.splits, a.batch);
    FA_LAUNCH(kern, grid, 384, smem, stream, p);
  }
  if (a.dq_accum) {
    const int64_t n = int64_t(a.batch) * a.seq_q * a.heads * (D / 8);
    const int64_t want = (n + 255) / 256, cap = int64_t(sms) * 8;
    auto kern = &flash_bwd_dq_convert_sm90_kernel<T, D>;
    FA_LAUNCH(kern, dim3(unsigned(want < cap ? want : cap)), 256, 0, stream, a);
  } else {
    launch_bwd_dq<T, D, Causal>(a, stream);  // deterministic mode
  }
  launch_bwd_split_sums<T, D>(a, sms, stream);
}

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
