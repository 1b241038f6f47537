// The compiled variants: one explicit instantiation per (dtype, head_dim,
// causal) and pass, defined in flash_{fwd,bwd}[_sm90]_hdim<D>_<dtype>_<causal>.cu
// and called by the dispatcher in flash_attention.cu. The _sm90 ones (Hopper
// kernels, built for sm_90a) exist when CMake defines LLMPRE_FA_SM90.
#pragma once

#include "flash_attention/sm90_config.h"
#include "flash_attention/tile.cuh"

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

// Hopper: forward for head_dim 64/128/256, backward (dK/dV kernel; dQ by
// atomics when a.dq_accum is set, else the portable query-major pass) for 64/128.
template <class T, int D, bool Causal>
void run_fwd_sm90(const FaArgs& a, cudaStream_t stream);
template <class T, int D, bool Causal>
void run_bwd_sm90(const FaArgs& a, int sms, cudaStream_t stream);

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
