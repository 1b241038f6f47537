// The MoE combine kernels (moe_combine_cuda.h): a block per token (grid-stride over tokens),
// its threads over the row's 16-byte packs (or single elements on the element-wise path);
// fp32 math, one rounding per stored element; the backward's dot products reduced by
// group_sum in a fixed order.
#include "moe_combine/moe_combine_cuda.h"

#include <algorithm>
#include <cmath>

#include "common/rowwise.cuh"

namespace llmpre {
namespace cuda {
namespace {

constexpr int kCta = 128;

template <typename T>
struct Args {
  int64_t tokens;
  int64_t slots;
  int64_t rows;     // rows of y and dy (valid pos entries are [0, rows))
  int64_t units;    // packs (or elements) per row
  const T* y;
  const int64_t* pos;
  const float* w;
  T* out;
  const T* dout;
  T* dy;
  float* dw;
};

template <typename T, int kN, bool kVector>
__global__ void __launch_bounds__(kCta) forward_kernel(Args<T> a) {
  for (int64_t t = blockIdx.x; t < a.tokens; t += gridDim.x) {
    const int64_t* pt = a.pos + t * a.slots;
    const float* wt = a.w + t * a.slots;
    T* o = a.out + t * a.units * kN;
    for (int64_t u = threadIdx.x; u < a.units; u += blockDim.x) {
      float acc[kN];
#pragma unroll
      for (int e = 0; e < kN; ++e) acc[e] = 0.0f;
      for (int64_t j = 0; j < a.slots; ++j) {
        const int64_t r = pt[j];
        if (r < 0 || r >= a.rows) {   // a bad position: NaN, and nothing is read
#pragma unroll
          for (int e = 0; e < kN; ++e) acc[e] = NAN;
          continue;
        }
        Pack<T, kN> p;
        p.template load<kVector>(a.y + (r * a.units + u) * kN);
        float v[kN];
        p.unpack(v);
        const float wj = wt[j];
#pragma unroll
        for (int e = 0; e < kN; ++e) acc[e] += wj * v[e];
      }
      Pack<T, kN> q;
      q.pack(acc);
      q.template store<kVector>(o + u * kN);
    }
  }
}

// dy rows of the token's pairs and their dw; dy was zeroed before (rows no pair reads).
template <typename T, int kN, bool kVector>
__global__ void __launch_bounds__(kCta) backward_kernel(Args<T> a) {
  __shared__ float red[kCta / 32];
  for (int64_t t = blockIdx.x; t < a.tokens; t += gridDim.x) {
    const T* g = a.dout + t * a.units * kN;
    for (int64_t j = 0; j < a.slots; ++j) {
      const int64_t pair = t * a.slots + j;
      const int64_t r = a.pos[pair];
      if (r < 0 || r >= a.rows) {   // the same for every thread of the block: no barrier is skipped by some
        if (threadIdx.x == 0) a.dw[pair] = NAN;
        continue;
      }
      const float wj = a.w[pair];
      const T* yr = a.y + r * a.units * kN;
      T* d = a.dy + r * a.units * kN;
      float partial = 0.0f;
      for (int64_t u = threadIdx.x; u < a.units; u += blockDim.x) {
        Pack<T, kN> pg, py, pd;
        pg.template load<kVector>(g + u * kN);
        py.template load<kVector>(yr + u * kN);
        float gv[kN], yv[kN], dv[kN];
        pg.unpack(gv);
        py.unpack(yv);
#pragma unroll
        for (int e = 0; e < kN; ++e) {
          dv[e] = wj * gv[e];
          partial += gv[e] * yv[e];
        }
        pd.pack(dv);
        pd.template store<kVector>(d + u * kN);
      }
      const float dot = group_sum<kCta>(partial, red);
      if (threadIdx.x == 0) a.dw[pair] = dot;
    }
  }
}

int grid_for(int64_t tokens) {
  const int64_t cap = int64_t(sm_count(current_device())) * 16;
  return int(std::max<int64_t>(1, std::min(tokens, cap)));
}

template <typename T>
void launch(const MoeCombineParams& p, bool backward, cudaStream_t stream) {
  if (backward && p.rows > 0) {   // rows no pair reads get 0; the pairs' rows are overwritten next
    const size_t bytes = sizeof(T) * static_cast<size_t>(p.rows) * static_cast<size_t>(p.hidden);
    LLMPRE_CUDA_CHECK(cudaMemsetAsync(p.dy, 0, bytes, stream));
  }
  if (p.tokens == 0) return;
  constexpr int kV = vec16<T>();
  bool vec = p.hidden % kV == 0 && aligned16(p.y);
  vec = vec && (backward ? aligned16(p.dout) && aligned16(p.dy) : aligned16(p.out));
  Args<T> a;
  a.tokens = p.tokens;
  a.slots = p.slots;
  a.rows = p.rows;
  a.units = vec ? p.hidden / kV : p.hidden;
  a.y = static_cast<const T*>(p.y);
  a.pos = p.pos;
  a.w = p.w;
  a.out = static_cast<T*>(p.out);
  a.dout = static_cast<const T*>(p.dout);
  a.dy = static_cast<T*>(p.dy);
  a.dw = p.dw;
  const int grid = grid_for(p.tokens);
  if (backward) {
    auto kernel = vec ? backward_kernel<T, kV, true> : backward_kernel<T, 1, false>;
    LLMPRE_LAUNCH(kernel, grid, kCta, 0, stream, a);
  } else {
    auto kernel = vec ? forward_kernel<T, kV, true> : forward_kernel<T, 1, false>;
    LLMPRE_LAUNCH(kernel, grid, kCta, 0, stream, a);
  }
  LLMPRE_CUDA_CHECK_LAUNCH();
}

void check(const MoeCombineParams& p, bool backward) {
  const char* fn = backward ? "moe_combine_backward" : "moe_combine_forward";
  LLMPRE_REQUIRE(p.tokens >= 0 && p.rows >= 0 && p.slots > 0 && p.hidden > 0, fn,
                 ": need tokens, rows >= 0 and slots, hidden > 0, got tokens ", p.tokens, ", slots ", p.slots,
                 ", rows ", p.rows, ", hidden ", p.hidden);
  if (backward) LLMPRE_REQUIRE(p.rows == 0 || p.dy, fn, ": dy must be a device buffer of ", p.rows, " rows");
  if (p.tokens == 0) return;
  LLMPRE_REQUIRE(p.pos && p.w, fn, ": pos and w must be device buffers");
  LLMPRE_REQUIRE(p.rows == 0 || p.y, fn, ": y must be a device buffer of ", p.rows, " rows");
  if (backward)
    LLMPRE_REQUIRE(p.dout && p.dw, fn, ": dout and dw must be device buffers");
  else
    LLMPRE_REQUIRE(p.out, fn, ": out must be a device buffer");
}

}  // namespace

void moe_combine_forward(const MoeCombineParams& p, cudaStream_t stream) {
  check(p, false);
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, launch<T>(p, false, stream));
}

void moe_combine_backward(const MoeCombineParams& p, cudaStream_t stream) {
  check(p, true);
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, launch<T>(p, true, stream));
}

}  // namespace cuda
}  // namespace llmpre
