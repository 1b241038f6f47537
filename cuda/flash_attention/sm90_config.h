// Tile shapes, shared-memory layouts and kernel parameters of the Hopper
// flash attention kernels ({fwd,bwd}_sm90_kernel.cuh), without the
// hardware layer, so the host dispatcher can size launches.
#pragma once

#include <cstdint>

#include "flash_attention/tile.cuh"

#ifdef LLMPRE_FA_EMULATE
#define FA_DEV_HOST_INLINE inline
#else
#define FA_DEV_HOST_INLINE __host__ __device__ __forceinline__
#endif

namespace llmpre {
namespace cuda {
namespace fa {

// A CUtensorMap (128 bytes; 64-byte aligned in CUDA 12, 128 in CUDA 13), passed by value as a
// __grid_constant__ kernel parameter.
struct alignas(128) TmaDesc {
  uint64_t opaque[16];
};

template <int D> struct Sm90FwdCfg;
template <> struct Sm90FwdCfg<64> { static constexpr int BM = 128, BN = 128, STAGES = 3; };
template <> struct Sm90FwdCfg<128> { static constexpr int BM = 128, BN = 128, STAGES = 2; };
template <> struct Sm90FwdCfg<256> { static constexpr int BM = 128, BN = 64, STAGES = 2; };

// Kernel parameters: the tensor maps must live in parameter space.
struct Sm90FwdArgs {
  TmaDesc tq, tk, tv, to;
  FaArgs a;
};

// Shared memory: Q, then STAGES x (K, V), then the mbarriers.
template <int D>
struct Sm90FwdSmem {
  using C = Sm90FwdCfg<D>;
  static constexpr int kQ = 0;
  static constexpr int kK = C::BM * D * 2;
  static constexpr int kTile = C::BN * D * 2;
  static constexpr int kV = kK + C::STAGES * kTile;
  static constexpr int kBars = kV + C::STAGES * kTile;
  // q_full, k_full[S], k_empty[S], v_full[S], v_empty[S]
  static constexpr int kBytes = kBars + 8 * (1 + 4 * C::STAGES);
  static constexpr int kAlloc = kBytes + 1024;  // room to align the base to 1024
};

template <int D>
constexpr int sm90_fwd_smem_bytes() {
  return Sm90FwdSmem<D>::kAlloc;
}

template <int D> struct Sm90BwdCfg;
template <> struct Sm90BwdCfg<64> { static constexpr int BN = 128, BM = 64, STAGES = 2; };
template <> struct Sm90BwdCfg<128> { static constexpr int BN = 128, BM = 64, STAGES = 2; };

struct Sm90BwdArgs {
  TmaDesc tq, tdo, tk, tv, tdk, tdv;
  FaArgs a;
};

template <int D>
struct Sm90BwdSmem {
  using C = Sm90BwdCfg<D>;
  static constexpr int kK = 0;
  static constexpr int kV = kK + C::BN * D * 2;
  static constexpr int kQ = kV + C::BN * D * 2;  // [STAGES][BM x D]
  static constexpr int kStep = C::BM * D * 2;
  static constexpr int kdO = kQ + C::STAGES * kStep;
  static constexpr int kdS = kdO + C::STAGES * kStep;      // [BN x BM], one 128-byte panel
  static constexpr int kLse = kdS + C::BN * C::BM * 2;     // [STAGES][BM] fp32
  static constexpr int kDsum = kLse + C::STAGES * C::BM * 4;
  static constexpr int kDq = kDsum + C::STAGES * C::BM * 4;   // [2][BM x 64] fp32: dQ panels on their way out
  static constexpr int kBars = kDq + 2 * C::BM * 64 * 4;
  // kv_full, q_full[S], q_empty[S], do_full[S], do_empty[S]
  static constexpr int kBytes = kBars + 8 * (1 + 4 * C::STAGES);
  static constexpr int kAlloc = kBytes + 1024;
  static_assert(C::BM == 64, "dS^T rows are one 128-byte panel");
};

template <int D>
constexpr int sm90_bwd_smem_bytes() {
  return Sm90BwdSmem<D>::kAlloc;
}

// The Hopper backward's fp32 dQ accumulator (atomic mode) holds, for each
// (batch, head, block of 64 queries, 64-column panel of head_dim), one
// contiguous 64 x 64 tile that bulk reductions add into; element (r, c) of a
// tile sits at r * 64 + ((c / 4) ^ (r % 8)) * 4 + c % 4 (16-byte chunks
// permuted per row so the staging stores in shared memory spread over banks).
// Rows run to seq_q_pad, so it takes batch * heads * seq_q_pad * head_dim floats.
FA_DEV_HOST_INLINE int sm90_dq_tile_index(int r, int c) { return r * 64 + (((c >> 2) ^ (r & 7)) << 2) + (c & 3); }

}  // namespace fa
}  // namespace cuda
}  // namespace llmpre
