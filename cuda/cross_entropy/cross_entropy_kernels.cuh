// Cross-entropy device code and its per-dtype launch templates (instantiated
// in cross_entropy_{fp32,fp16,bf16}.cu; cross_entropy.cu checks, dispatches).
//
// One CTA per row (a 150k-vocabulary bf16 row is ~300 KB: plenty of work per
// CTA). Each row is split into an unaligned head (< kN elements before the
// first 16-byte boundary), a body of 16-byte packs, and a tail; threads stride
// over the body kUnroll packs at a time with all loads issued before use.
//
// Forward numerics: per group of kUnroll packs a thread takes the group max,
// rescales its running sum when the max grows (rare after the first groups),
// and adds the group's sum of exp2((x - m) * log2 e) computed pack by pack, so
// the running sum sees ~vocab / (kCta * kUnroll * kN) additions instead of
// vocab / kCta: fp32 accumulation error stays close to a pairwise sum's.
// Threads' (m, l) states are merged by a butterfly and then in warp order.
#pragma once

#include <climits>

#include "common/rowwise.cuh"
#include "cross_entropy/cross_entropy_cuda.h"

namespace llmpre {
namespace cuda {
namespace xent {

constexpr int kCta = 256;
constexpr int kUnroll = 4;

// Elements of the row before its first 16-byte boundary (0 when kN == 1).
template <typename T, int kN>
__device__ __forceinline__ int head_elems(const T* row, int vocab) {
  if constexpr (kN == 1) {
    return 0;
  } else {
    const int mis = static_cast<int>((reinterpret_cast<uintptr_t>(row) & 15u) / sizeof(T));
    return mis == 0 ? 0 : min(kN - mis, vocab);
  }
}

template <typename T>
__global__ void __launch_bounds__(kCta)
    forward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels, float* __restrict__ loss,
                   float* __restrict__ stats, int vocab, int64_t ignore_index) {
  constexpr int kN = vec16<T>();
  __shared__ MaxSum warp_states[kCta / 32];
  const int64_t row = blockIdx.x;
  const int64_t label = labels[row];
  if (label == ignore_index) {
    if (threadIdx.x == 0) {
      loss[row] = 0.0f;
      stats[2 * row] = 0.0f;
      stats[2 * row + 1] = 0.0f;
    }
    return;  // the whole CTA leaves together: no barrier below is reached
  }
  const T* x = logits + row * vocab;
  const int head = head_elems<T, kN>(x, vocab);
  const int packs = (vocab - head) / kN;
  const int tail0 = head + packs * kN;

  MaxSum st{-INFINITY, 0.0f};
  if (static_cast<int>(threadIdx.x) < head) st = add_one(st, to_f32<T>(x[threadIdx.x]));
  if (tail0 + static_cast<int>(threadIdx.x) < vocab) st = add_one(st, to_f32<T>(x[tail0 + threadIdx.x]));

  const T* body = x + head;
  for (int p0 = threadIdx.x; p0 < packs; p0 += kCta * kUnroll) {
    Pack<T, kN> pk[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = p0 + u * kCta;
      if (p < packs) pk[u].template load<true>(body + p * kN);
    }
    float f[kUnroll][kN];
    float mx = -INFINITY;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (p0 + u * kCta < packs) {
        pk[u].unpack(f[u]);
#pragma unroll
        for (int e = 0; e < kN; ++e) mx = fmaxf(mx, f[u][e]);
      }
    }
    if (mx > st.m) {  // st.m = -inf: st.l is 0 (or NaN) and stays so
      st.l *= exp2f((st.m - mx) * kLog2e);
      st.m = mx;
    }
    // Everything so far -inf (or NaN): exponents against 0 give 0 (or NaN)
    // instead of the NaN of -inf - -inf.
    const float ref = st.m == -INFINITY ? 0.0f : st.m;
    float group = 0.0f;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (p0 + u * kCta < packs) {
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < kN; ++e) s += exp2f((f[u][e] - ref) * kLog2e);
        group += s;
      }
    }
    st.l += group;
  }

  st = warp_merge(st);
  if ((threadIdx.x & 31) == 0) warp_states[threadIdx.x / 32] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    MaxSum total = warp_states[0];
#pragma unroll
    for (int w = 1; w < kCta / 32; ++w) total = merge(total, warp_states[w]);
    const float lse = logf(total.l);
    stats[2 * row] = total.m;
    stats[2 * row + 1] = lse;
    const bool bad = label < 0 || label >= vocab;
    loss[row] = bad ? __int_as_float(0x7fc00000) : (total.m - to_f32<T>(x[label])) + lse;
  }
}

// kN = vec16<T>() when logits and dlogits rows share their alignment, else 1.
template <typename T, int kN>
__global__ void __launch_bounds__(kCta)
    backward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                    const float* __restrict__ stats, const float* __restrict__ dloss, T* __restrict__ dlogits,
                    int vocab, int64_t ignore_index) {
  const int64_t row = blockIdx.x;
  const int64_t label = labels[row];
  const T* x = logits + row * vocab;
  T* dx = dlogits + row * vocab;
  const int head = head_elems<T, kN>(x, vocab);
  const int packs = (vocab - head) / kN;
  const int tail0 = head + packs * kN;
  const int tid = threadIdx.x;

  if (label == ignore_index) {  // zeros, written with the same peeling
    if (tid < head) dx[tid] = from_f32<T>(0.0f);
    if (tail0 + tid < vocab) dx[tail0 + tid] = from_f32<T>(0.0f);
    Pack<T, kN> z;
    z.zero();
    for (int p = tid; p < packs; p += kCta) z.template store<true>(dx + head + p * kN);
    return;
  }

  const bool bad = label < 0 || label >= vocab;
  const float m = stats[2 * row];
  const float dl = dloss[row];
  // p_j = exp(x_j - m) * exp(-l): one accurate exp per row, one exp2 per element.
  const float coef = bad ? __int_as_float(0x7fc00000) : dl * expf(-stats[2 * row + 1]);
  const int lab = bad ? -1 : static_cast<int>(label);
  auto grad = [&](float v, int col) {
    const float e = exp2f((v - m) * kLog2e);
    return col == lab ? fmaf(e, coef, -dl) : e * coef;
  };

  if (tid < head) dx[tid] = from_f32<T>(grad(to_f32<T>(x[tid]), tid));
  if (tail0 + tid < vocab) dx[tail0 + tid] = from_f32<T>(grad(to_f32<T>(x[tail0 + tid]), tail0 + tid));
  const T* body = x + head;
  T* dbody = dx + head;
  for (int p0 = tid; p0 < packs; p0 += kCta * kUnroll) {
    Pack<T, kN> pk[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = p0 + u * kCta;
      if (p < packs) pk[u].template load<true>(body + p * kN);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = p0 + u * kCta;
      if (p < packs) {
        float f[kN];
        pk[u].unpack(f);
        const int col0 = head + p * kN;
#pragma unroll
        for (int e = 0; e < kN; ++e) f[e] = grad(f[e], col0 + e);
        Pack<T, kN> o;
        o.pack(f);
        o.template store<true>(dbody + p * kN);
      }
    }
  }
}

template <typename T>
void forward(const CrossEntropyParams& p, cudaStream_t stream) {
  if (p.rows == 0) return;
  auto kernel = forward_kernel<T>;
  LLMPRE_LAUNCH(kernel, static_cast<unsigned>(p.rows), kCta, 0, stream, static_cast<const T*>(p.logits), p.labels,
                p.loss, p.stats, static_cast<int>(p.vocab), p.ignore_index);
  LLMPRE_CUDA_CHECK_LAUNCH();
}

template <typename T>
void backward(const CrossEntropyParams& p, cudaStream_t stream) {
  if (p.rows == 0) return;
  const bool same_align =
      ((reinterpret_cast<uintptr_t>(p.logits) - reinterpret_cast<uintptr_t>(p.dlogits)) & 15u) == 0;
  const T* x = static_cast<const T*>(p.logits);
  T* dx = static_cast<T*>(p.dlogits);
  const int v = static_cast<int>(p.vocab);
  const unsigned grid = static_cast<unsigned>(p.rows);
  auto kernel = same_align ? backward_kernel<T, vec16<T>()> : backward_kernel<T, 1>;
  LLMPRE_LAUNCH(kernel, grid, kCta, 0, stream, x, p.labels, p.stats, p.dloss, dx, v, p.ignore_index);
  LLMPRE_CUDA_CHECK_LAUNCH();
}

}  // namespace xent
}  // namespace cuda
}  // namespace llmpre
