// SwiGLU kernels (swiglu_cuda.h): one grid-stride loop over packs of 16 bytes
// (or single elements on the unaligned path), fp32 math, one rounding per output.
#include "swiglu/swiglu_cuda.h"

#include <algorithm>
#include <climits>

#include "common/rowwise.cuh"

namespace llmpre {
namespace cuda {
namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
struct Args {
  int64_t n;
  int64_t packs;  // whole packs of kN elements; the rest (n - packs * kN) element-wise
  const T* g;
  const T* u;
  T* out;
  const T* dout;
  T* dg;
  T* du;
};

template <typename T, int kN, bool kVector>
__global__ void forward_kernel(Args<T> a) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < a.packs; i += stride) {
    Pack<T, kN> pg, pu, po;
    pg.template load<kVector>(a.g + i * kN);
    pu.template load<kVector>(a.u + i * kN);
    float g[kN], u[kN], o[kN];
    pg.unpack(g);
    pu.unpack(u);
#pragma unroll
    for (int e = 0; e < kN; ++e) o[e] = g[e] * sigmoid(g[e]) * u[e];
    po.pack(o);
    po.template store<kVector>(a.out + i * kN);
  }
  for (int64_t i = a.packs * kN + first; i < a.n; i += stride) {
    const float g = to_f32<T>(a.g[i]);
    a.out[i] = from_f32<T>(g * sigmoid(g) * to_f32<T>(a.u[i]));
  }
}

__device__ __forceinline__ void backward_one(float g, float u, float d, float& dg, float& du) {
  const float s = sigmoid(g);
  const float silu = g * s;
  dg = d * u * (s + silu * (1.0f - s));
  du = d * silu;
}

template <typename T, int kN, bool kVector>
__global__ void backward_kernel(Args<T> a) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < a.packs; i += stride) {
    Pack<T, kN> pg, pu, pd, qg, qu;
    pg.template load<kVector>(a.g + i * kN);
    pu.template load<kVector>(a.u + i * kN);
    pd.template load<kVector>(a.dout + i * kN);
    float g[kN], u[kN], d[kN], dg[kN], du[kN];
    pg.unpack(g);
    pu.unpack(u);
    pd.unpack(d);
#pragma unroll
    for (int e = 0; e < kN; ++e) backward_one(g[e], u[e], d[e], dg[e], du[e]);
    qg.pack(dg);
    qu.pack(du);
    qg.template store<kVector>(a.dg + i * kN);
    qu.template store<kVector>(a.du + i * kN);
  }
  for (int64_t i = a.packs * kN + first; i < a.n; i += stride) {
    float dg, du;
    backward_one(to_f32<T>(a.g[i]), to_f32<T>(a.u[i]), to_f32<T>(a.dout[i]), dg, du);
    a.dg[i] = from_f32<T>(dg);
    a.du[i] = from_f32<T>(du);
  }
}

constexpr int kCta = 256;

// Enough blocks for every pack (capped at a few waves: the loop strides over the rest).
int grid_for(int64_t units, int device) {
  const int64_t want = (units + kCta - 1) / kCta;
  const int64_t cap = int64_t(sm_count(device)) * 8;
  return int(std::max<int64_t>(1, std::min(want, cap)));
}

template <typename T>
void launch(const SwiGluParams& p, bool backward, cudaStream_t stream) {
  constexpr int kV = vec16<T>();
  bool vec = aligned16(p.gate) && aligned16(p.up);
  vec = vec && (backward ? aligned16(p.dout) && aligned16(p.dgate) && aligned16(p.dup) : aligned16(p.out));
  Args<T> a;
  a.n = p.n;
  a.packs = vec ? p.n / kV : 0;
  a.g = static_cast<const T*>(p.gate);
  a.u = static_cast<const T*>(p.up);
  a.out = static_cast<T*>(p.out);
  a.dout = static_cast<const T*>(p.dout);
  a.dg = static_cast<T*>(p.dgate);
  a.du = static_cast<T*>(p.dup);
  const int grid = grid_for(vec ? std::max<int64_t>(a.packs, 1) : p.n, current_device());
  if (backward) {
    auto kernel = vec ? backward_kernel<T, kV, true> : backward_kernel<T, kV, false>;
    LLMPRE_LAUNCH(kernel, grid, kCta, 0, stream, a);
  } else {
    auto kernel = vec ? forward_kernel<T, kV, true> : forward_kernel<T, kV, false>;
    LLMPRE_LAUNCH(kernel, grid, kCta, 0, stream, a);
  }
  LLMPRE_CUDA_CHECK_LAUNCH();
}

void check(const SwiGluParams& p, bool backward) {
  const char* fn = backward ? "swiglu_backward" : "swiglu_forward";
  LLMPRE_REQUIRE(p.n >= 0, fn, ": n must be >= 0, got ", p.n);
  if (p.n == 0) return;
  LLMPRE_REQUIRE(p.gate && p.up, fn, ": gate and up must be device buffers");
  if (backward)
    LLMPRE_REQUIRE(p.dout && p.dgate && p.dup, fn, ": dout, dgate and dup must be device buffers");
  else
    LLMPRE_REQUIRE(p.out, fn, ": out must be a device buffer");
}

}  // namespace

void swiglu_forward(const SwiGluParams& p, cudaStream_t stream) {
  check(p, false);
  if (p.n == 0) return;
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, launch<T>(p, false, stream));
}

void swiglu_backward(const SwiGluParams& p, cudaStream_t stream) {
  check(p, true);
  if (p.n == 0) return;
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, launch<T>(p, true, stream));
}

}  // namespace cuda
}  // namespace llmpre
