// RMSNorm device code and its per-dtype launch templates (instantiated in
// rms_norm_{fp32,fp16,bf16}.cu; rms_norm.cu checks arguments and dispatches).
//
// Two kernel shapes, chosen per row length (packs = hidden / elements per 16 B):
//
//  * tiled (packs <= 2048, i.e. hidden <= 16384 in bf16/fp16, 8192 in fp32):
//    a group of kTPR threads owns one row and each thread keeps kVecs 16-byte
//    packs of it in registers, so x (and dy) is read from HBM exactly once.
//    CTAs are persistent (grid = what fits on the device) and loop over rows;
//    the weight is loaded once per CTA and kept in registers.
//  * looped (longer rows, or unaligned rows/pointers with kN = 1): one row per
//    CTA iteration, the row is read twice (the second time mostly from L2).
//
// Backward: dweight partial sums live in shared memory per row-group (tiled)
// or in the CTA's own workspace row (looped), never in atomics; each CTA
// writes one fp32 row of the [ctas, hidden] workspace and reduce_partials adds
// the rows in a fixed order.
#pragma once

#include <algorithm>
#include <type_traits>

#include "common/rowwise.cuh"
#include "rms_norm/rms_norm_cuda.h"

namespace llmpre {
namespace cuda {
namespace rms_norm {

constexpr int kCta = 256;         // threads per CTA for every kernel here
constexpr int kUnroll = 4;        // packs in flight per thread in the looped kernels
constexpr int kBwdCtasPerSm = 2;  // backward CTAs per SM: more means more workspace rows to add

template <int kTPR_, int kVecs_>
struct Tile {
  static constexpr int kTPR = kTPR_;    // threads per row
  static constexpr int kVecs = kVecs_;  // packs per thread
};

// The tiled shape for rows of `packs` 16-byte packs, or tpr = 0 for the looped kernels.
struct Shape {
  int tpr;
  int vecs;
};
inline Shape pick_shape(int64_t packs) {
  if (packs <= 32 * 4) return {32, 4};
  if (packs <= 64 * 4) return {64, 4};
  if (packs <= 128 * 4) return {128, 4};
  if (packs <= 128 * 8) return {128, 8};
  if (packs <= 256 * 8) return {256, 8};
  return {0, 0};
}

// Calls f(Tile<tpr, vecs>{}) for the shape (bounded: five instantiations).
template <class F>
void with_tile(Shape s, F&& f) {
  if (s.tpr == 32 && s.vecs == 4) return f(Tile<32, 4>{});
  if (s.tpr == 64 && s.vecs == 4) return f(Tile<64, 4>{});
  if (s.tpr == 128 && s.vecs == 4) return f(Tile<128, 4>{});
  if (s.tpr == 128 && s.vecs == 8) return f(Tile<128, 8>{});
  if (s.tpr == 256 && s.vecs == 8) return f(Tile<256, 8>{});
  LLMPRE_REQUIRE(false, "rms_norm: no tiled shape (", s.tpr, ", ", s.vecs, ")");
}

// ============================================================== forward
template <typename T, int kTPR, int kVecs>
__global__ void __launch_bounds__(kCta)
    fwd_tiled(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
              float* __restrict__ inv_rms, int64_t rows, int hidden, float eps) {
  constexpr int kN = vec16<T>();
  constexpr int kGroups = kCta / kTPR;
  __shared__ float red[kCta / 32];
  const int t = threadIdx.x % kTPR;
  const int g = threadIdx.x / kTPR;
  const int packs = hidden / kN;

  Pack<T, kN> wp[kVecs];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int p = i * kTPR + t;
    if (p < packs) wp[i].template load<true>(w + p * kN); else wp[i].zero();
  }

  const int64_t row_blocks = (rows + kGroups - 1) / kGroups;
  for (int64_t rb = blockIdx.x; rb < row_blocks; rb += gridDim.x) {
    const int64_t row = rb * kGroups + g;
    const bool live = row < rows;
    const T* xr = x + (live ? row : 0) * hidden;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) wp[i].opaque();  // keep w packed across rows
    Pack<T, kN> xp[kVecs];
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {  // all loads first: kVecs 16-byte loads in flight
      const int p = i * kTPR + t;
      if (live && p < packs) xp[i].template load<true>(xr + p * kN); else xp[i].zero();
    }
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      float f[kN];
      xp[i].unpack(f);
#pragma unroll
      for (int e = 0; e < kN; ++e) ss = fmaf(f[e], f[e], ss);
    }
    ss = group_sum<kTPR>(ss, red);  // every thread of the CTA calls it
    const float ir = 1.0f / sqrtf(ss / static_cast<float>(hidden) + eps);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) xp[i].opaque();  // unpack again below: fewer live registers
    if (live) {
      T* yr = y + row * hidden;
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        const int p = i * kTPR + t;
        if (p < packs) {
          float xf[kN], wf[kN], out[kN];
          xp[i].unpack(xf);
          wp[i].unpack(wf);
#pragma unroll
          for (int e = 0; e < kN; ++e) out[e] = wf[e] * (xf[e] * ir);
          Pack<T, kN> o;
          o.pack(out);
          o.template store<true>(yr + p * kN);
        }
      }
      if (t == 0) inv_rms[row] = ir;
    }
  }
}

// kN = vec16<T>() (aligned rows) or 1 (any alignment).
template <typename T, int kN>
__global__ void __launch_bounds__(kCta)
    fwd_looped(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
               float* __restrict__ inv_rms, int64_t rows, int hidden, float eps) {
  __shared__ float red[kCta / 32];
  const int packs = hidden / kN;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * hidden;
    T* yr = y + row * hidden;
    float ss = 0.0f;
    for (int p0 = threadIdx.x; p0 < packs; p0 += kCta * kUnroll) {
      Pack<T, kN> xp[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int p = p0 + u * kCta;
        if (p < packs) xp[u].template load<true>(xr + p * kN); else xp[u].zero();
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float f[kN];
        xp[u].unpack(f);
#pragma unroll
        for (int e = 0; e < kN; ++e) ss = fmaf(f[e], f[e], ss);
      }
    }
    ss = group_sum<kCta>(ss, red);
    const float ir = 1.0f / sqrtf(ss / static_cast<float>(hidden) + eps);
    for (int p0 = threadIdx.x; p0 < packs; p0 += kCta * kUnroll) {
      Pack<T, kN> xp[kUnroll], wp[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int p = p0 + u * kCta;
        if (p < packs) {
          xp[u].template load<true>(xr + p * kN);
          wp[u].template load<true>(w + p * kN);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int p = p0 + u * kCta;
        if (p < packs) {
          float xf[kN], wf[kN], out[kN];
          xp[u].unpack(xf);
          wp[u].unpack(wf);
#pragma unroll
          for (int e = 0; e < kN; ++e) out[e] = wf[e] * (xf[e] * ir);
          Pack<T, kN> o;
          o.pack(out);
          o.template store<true>(yr + p * kN);
        }
      }
    }
    if (threadIdx.x == 0) inv_rms[row] = ir;
  }
}

// ============================================================== backward
// Shared memory: [kCta / kTPR groups][kTPR * kVecs * kN] fp32, each group's
// running sum of dy * n per column; thread t of a group owns the columns of
// its packs, so no two threads ever touch the same slot before the final sync.
template <typename T, int kTPR, int kVecs>
__global__ void __launch_bounds__(kCta, kBwdCtasPerSm)
    bwd_tiled(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ inv_rms,
              const T* __restrict__ dy, T* __restrict__ dx, float* __restrict__ partial, int64_t rows,
              int hidden) {
  constexpr int kN = vec16<T>();
  constexpr int kGroups = kCta / kTPR;
  constexpr int kCap = kTPR * kVecs * kN;
  LLMPRE_DYNAMIC_SMEM(float4, smem4);
  __shared__ float red[kCta / 32];
  float* const sums = reinterpret_cast<float*>(smem4);
  const int t = threadIdx.x % kTPR;
  const int g = threadIdx.x / kTPR;
  float* const acc = sums + g * kCap;
  const int packs = hidden / kN;

  Pack<T, kN> wp[kVecs];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int p = i * kTPR + t;
    if (p < packs) {
      wp[i].template load<true>(w + p * kN);
#pragma unroll
      for (int e = 0; e < kN; e += 4)
        *reinterpret_cast<float4*>(acc + p * kN + e) = make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      wp[i].zero();
    }
  }

  const int64_t row_blocks = (rows + kGroups - 1) / kGroups;
  for (int64_t rb = blockIdx.x; rb < row_blocks; rb += gridDim.x) {
    const int64_t row = rb * kGroups + g;
    const bool live = row < rows;
    const int64_t off = (live ? row : 0) * hidden;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) wp[i].opaque();  // keep w packed across rows
    Pack<T, kN> xp[kVecs], gp[kVecs];
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int p = i * kTPR + t;
      if (live && p < packs) {
        xp[i].template load<true>(x + off + p * kN);
        gp[i].template load<true>(dy + off + p * kN);
      } else {
        xp[i].zero();
        gp[i].zero();
      }
    }
    const float ir = live ? inv_rms[row] : 0.0f;
    float dot = 0.0f;  // sum_j w_j dy_j n_j over this thread's columns
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int p = i * kTPR + t;
      if (live && p < packs) {
        float xf[kN], gf[kN], wf[kN];
        xp[i].unpack(xf);
        gp[i].unpack(gf);
        wp[i].unpack(wf);
#pragma unroll
        for (int e = 0; e < kN; e += 4) {
          float4* a = reinterpret_cast<float4*>(acc + p * kN + e);
          float4 s = *a;
          const float n0 = xf[e] * ir, n1 = xf[e + 1] * ir, n2 = xf[e + 2] * ir, n3 = xf[e + 3] * ir;
          dot = fmaf(wf[e] * gf[e], n0, dot);
          dot = fmaf(wf[e + 1] * gf[e + 1], n1, dot);
          dot = fmaf(wf[e + 2] * gf[e + 2], n2, dot);
          dot = fmaf(wf[e + 3] * gf[e + 3], n3, dot);
          s.x += gf[e] * n0;
          s.y += gf[e + 1] * n1;
          s.z += gf[e + 2] * n2;
          s.w += gf[e + 3] * n3;
          *a = s;
        }
      }
    }
    dot = group_sum<kTPR>(dot, red);  // every thread of the CTA calls it
    const float mean_dot = dot / static_cast<float>(hidden);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {  // unpack again below: fewer live registers
      xp[i].opaque();
      gp[i].opaque();
      wp[i].opaque();
    }
    if (live) {
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        const int p = i * kTPR + t;
        if (p < packs) {
          float xf[kN], gf[kN], wf[kN], out[kN];
          xp[i].unpack(xf);
          gp[i].unpack(gf);
          wp[i].unpack(wf);
#pragma unroll
          for (int e = 0; e < kN; ++e) out[e] = ir * (wf[e] * gf[e] - (xf[e] * ir) * mean_dot);
          Pack<T, kN> o;
          o.pack(out);
          o.template store<true>(dx + off + p * kN);
        }
      }
    }
  }

  __syncthreads();
  float* const mine = partial + static_cast<int64_t>(blockIdx.x) * hidden;
  for (int j = threadIdx.x; j < hidden; j += kCta) {
    float s = 0.0f;
#pragma unroll
    for (int gg = 0; gg < kGroups; ++gg) s += sums[gg * kCap + j];
    mine[j] = s;
  }
}

// The CTA's workspace row is its accumulator: zeroed first, then += per row,
// each column by the one thread that owns it (the same in every loop below).
template <typename T, int kN>
__global__ void __launch_bounds__(kCta)
    bwd_looped(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ inv_rms,
               const T* __restrict__ dy, T* __restrict__ dx, float* __restrict__ partial, int64_t rows,
               int hidden) {
  __shared__ float red[kCta / 32];
  const int packs = hidden / kN;
  float* const acc = partial + static_cast<int64_t>(blockIdx.x) * hidden;
  for (int p = threadIdx.x; p < packs; p += kCta)
#pragma unroll
    for (int e = 0; e < kN; ++e) acc[p * kN + e] = 0.0f;

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t off = row * hidden;
    const float ir = inv_rms[row];
    float dot = 0.0f;
    for (int p0 = threadIdx.x; p0 < packs; p0 += kCta * kUnroll) {
      Pack<T, kN> xp[kUnroll], gp[kUnroll], wp[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int p = p0 + u * kCta;
        if (p < packs) {
          xp[u].template load<true>(x + off + p * kN);
          gp[u].template load<true>(dy + off + p * kN);
          wp[u].template load<true>(w + p * kN);
        } else {
          xp[u].zero();
          gp[u].zero();
          wp[u].zero();
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float xf[kN], gf[kN], wf[kN];
        xp[u].unpack(xf);
        gp[u].unpack(gf);
        wp[u].unpack(wf);
#pragma unroll
        for (int e = 0; e < kN; ++e) dot = fmaf(wf[e] * gf[e], xf[e] * ir, dot);
      }
    }
    dot = group_sum<kCta>(dot, red);
    const float mean_dot = dot / static_cast<float>(hidden);
    for (int p0 = threadIdx.x; p0 < packs; p0 += kCta * kUnroll) {
      Pack<T, kN> xp[kUnroll], gp[kUnroll], wp[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int p = p0 + u * kCta;
        if (p < packs) {
          xp[u].template load<true>(x + off + p * kN);
          gp[u].template load<true>(dy + off + p * kN);
          wp[u].template load<true>(w + p * kN);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int p = p0 + u * kCta;
        if (p < packs) {
          float xf[kN], gf[kN], wf[kN], out[kN];
          xp[u].unpack(xf);
          gp[u].unpack(gf);
          wp[u].unpack(wf);
#pragma unroll
          for (int e = 0; e < kN; ++e) {
            const float n = xf[e] * ir;
            out[e] = ir * (wf[e] * gf[e] - n * mean_dot);
            acc[p * kN + e] += gf[e] * n;
          }
          Pack<T, kN> o;
          o.pack(out);
          o.template store<true>(dx + off + p * kN);
        }
      }
    }
  }
}

// dweight[j] = sum over workspace rows b (fixed order) of partial[b, j].
// Block (32, 8): 32 columns, 8 interleaved slices of the rows, combined in
// slice order.
template <typename T>
__global__ void __launch_bounds__(kCta)
    reduce_partials(const float* __restrict__ partial, int nparts, int hidden, T* __restrict__ dw) {
  __shared__ float slice[8][33];
  const int col = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (col < hidden) {
#pragma unroll 4
    for (int b = threadIdx.y; b < nparts; b += 8) s += partial[static_cast<int64_t>(b) * hidden + col];
  }
  slice[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < hidden) {
    float total = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) total += slice[k][threadIdx.x];
    dw[col] = from_f32<T>(total);
  }
}

// ============================================================== launch plans
inline bool vector_rows(const RmsNormParams& p, bool backward) {
  const int n = 16 / int(dtype_size(p.dtype));
  bool ok = p.hidden % n == 0 && aligned16(p.x) && aligned16(p.weight);
  if (backward) ok = ok && aligned16(p.dy) && aligned16(p.dx);
  else ok = ok && aligned16(p.y);
  return ok;
}

template <typename T>
void forward(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return;
  const int dev = current_device();
  const int sms = sm_count(dev);
  const int h = static_cast<int>(p.hidden);
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  T* y = static_cast<T*>(p.y);
  constexpr int kN = vec16<T>();
  const bool vec = vector_rows(p, false);
  const Shape shape = vec ? pick_shape(p.hidden / kN) : Shape{0, 0};
  if (shape.tpr != 0) {
    with_tile(shape, [&](auto tile) {
      using Tl = decltype(tile);
      auto kernel = fwd_tiled<T, Tl::kTPR, Tl::kVecs>;
      const int64_t row_blocks = (p.rows + kCta / Tl::kTPR - 1) / (kCta / Tl::kTPR);
      const int64_t grid = std::min<int64_t>(row_blocks, int64_t(sms) * blocks_per_sm(kernel, kCta, 0));
      LLMPRE_LAUNCH(kernel, static_cast<unsigned>(grid), kCta, 0, stream, x, w, y, p.inv_rms, p.rows, h, p.eps);
      LLMPRE_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  auto kernel = vec ? fwd_looped<T, kN> : fwd_looped<T, 1>;
  const int64_t grid = std::min<int64_t>(p.rows, int64_t(sms) * blocks_per_sm(kernel, kCta, 0));
  LLMPRE_LAUNCH(kernel, static_cast<unsigned>(grid), kCta, 0, stream, x, w, y, p.inv_rms, p.rows, h, p.eps);
  LLMPRE_CUDA_CHECK_LAUNCH();
}

// Runs the backward's main kernel; returns its grid, which is the number of
// fp32 workspace rows it writes (at most rows and sms * kBwdCtasPerSm).
template <typename T>
int64_t backward_main(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return 0;
  const int dev = current_device();
  const int sms = sm_count(dev);
  const int h = static_cast<int>(p.hidden);
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  float* ws = static_cast<float*>(p.workspace);
  constexpr int kN = vec16<T>();
  const bool vec = vector_rows(p, true);
  const Shape shape = vec ? pick_shape(p.hidden / kN) : Shape{0, 0};
  int64_t grid = 0;
  if (shape.tpr != 0) {
    with_tile(shape, [&](auto tile) {
      using Tl = decltype(tile);
      constexpr int kGroups = kCta / Tl::kTPR;
      const size_t smem = sizeof(float) * kGroups * Tl::kTPR * Tl::kVecs * kN;
      auto kernel = bwd_tiled<T, Tl::kTPR, Tl::kVecs>;
      if (smem > 48 * 1024)
        LLMPRE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem)));
      const int per_sm = std::min(blocks_per_sm(kernel, kCta, smem), kBwdCtasPerSm);
      const int64_t row_blocks = (p.rows + kGroups - 1) / kGroups;
      grid = std::min<int64_t>(row_blocks, int64_t(sms) * per_sm);
      LLMPRE_LAUNCH(kernel, static_cast<unsigned>(grid), kCta, smem, stream, x, w, p.inv_rms, dy, dx, ws, p.rows, h);
      LLMPRE_CUDA_CHECK_LAUNCH();
    });
    return grid;
  }
  auto kernel = vec ? bwd_looped<T, kN> : bwd_looped<T, 1>;
  grid = std::min<int64_t>(p.rows, int64_t(sms) * kBwdCtasPerSm);
  LLMPRE_LAUNCH(kernel, static_cast<unsigned>(grid), kCta, 0, stream, x, w, p.inv_rms, dy, dx, ws, p.rows, h);
  LLMPRE_CUDA_CHECK_LAUNCH();
  return grid;
}

// An upper bound of every plan's grid (tiled or looped, aligned or not), so
// the size does not depend on the buffers' addresses.
template <typename T>
size_t backward_workspace_bytes(const RmsNormParams& p) {
  const int64_t ctas = std::min<int64_t>(p.rows, int64_t(sm_count(current_device())) * kBwdCtasPerSm);
  return static_cast<size_t>(ctas) * static_cast<size_t>(p.hidden) * sizeof(float);
}

template <typename T>
void backward(const RmsNormParams& p, cudaStream_t stream) {
  const int h = static_cast<int>(p.hidden);
  if (p.rows == 0) {  // no rows: dweight = 0 (all-zero bits are +0.0 in every dtype)
    LLMPRE_CUDA_CHECK(cudaMemsetAsync(p.dweight, 0, sizeof(T) * static_cast<size_t>(h), stream));
    return;
  }
  const int64_t nparts = backward_main<T>(p, stream);
  auto reduce = reduce_partials<T>;
  LLMPRE_LAUNCH(reduce, static_cast<unsigned>((h + 31) / 32), dim3(32, 8), 0, stream,
                static_cast<const float*>(p.workspace), static_cast<int>(nparts), h, static_cast<T*>(p.dweight));
  LLMPRE_CUDA_CHECK_LAUNCH();
}

}  // namespace rms_norm
}  // namespace cuda
}  // namespace llmpre
