// The compiled variants: one explicit instantiation per (dtype, head_dim,
// causal) and pass, defined in flash_{fwd,bwd}_hdim<D>_<dtype>[_causal].cu and
// called by the dispatcher in flash_attn.cu.
#pragma once

#include "flash_attn/fa_tile.cuh"

namespace llmpre {
namespace cuda {
namespace fa {

template <class T, int D, bool Causal>
void run_fwd(const FaArgs& a, cudaStream_t stream);

// a.splits, the workspace pointers and seq_q_pad are filled by the caller;
// a.dq_accum set selects atomic dQ (head_dim <= 128), else the dQ kernel
// runs; sms sizes the grid-stride kernels.
template <class T, int D, bool Causal>
void run_bwd(const FaArgs& a, int sms, cudaStream_t stream);

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
