// Row gather and per-token segment sums (moe_rows_cuda.h): a block per output row
// (grid-stride over rows), its threads over the row's 16-byte packs; bucket starts: a
// binary search per bucket.
#include "moe_rows/moe_rows_cuda.h"

#include <algorithm>
#include <climits>
#include <cmath>

#include "common/rowwise.cuh"

namespace llmpre {
namespace cuda {
namespace {

constexpr int kCta = 128;

template <typename T>
struct Args {
  int64_t out_rows;   // rows of dst
  int64_t src_rows;   // rows of src (valid ids are [0, src_rows))
  int64_t units;      // packs (or elements) per row
  const T* src;
  T* dst;
  const int64_t* index;
  const int64_t* perm;
  const int64_t* starts;
};

template <typename T, int kN, bool kVector>
__global__ void gather_kernel(Args<T> a) {
  for (int64_t r = blockIdx.x; r < a.out_rows; r += gridDim.x) {
    const int64_t s = a.index[r];
    const bool ok = s >= 0 && s < a.src_rows;
    T* out = a.dst + r * a.units * kN;
    const T* in = a.src + (ok ? s : 0) * a.units * kN;
    for (int64_t u = threadIdx.x; u < a.units; u += blockDim.x) {
      Pack<T, kN> p;
      if (ok) {
        p.template load<kVector>(in + u * kN);
      } else {
        float nan[kN];
#pragma unroll
        for (int e = 0; e < kN; ++e) nan[e] = NAN;
        p.pack(nan);
      }
      p.template store<kVector>(out + u * kN);
    }
  }
}

template <typename T, int kN, bool kVector>
__global__ void segment_sum_kernel(Args<T> a) {
  for (int64_t t = blockIdx.x; t < a.out_rows; t += gridDim.x) {
    const int64_t j0 = a.starts[t], j1 = a.starts[t + 1];
    T* out = a.dst + t * a.units * kN;
    for (int64_t u = threadIdx.x; u < a.units; u += blockDim.x) {
      float acc[kN];
#pragma unroll
      for (int e = 0; e < kN; ++e) acc[e] = 0.0f;
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t r = a.perm[j];
        if (r < 0 || r >= a.src_rows) {
#pragma unroll
          for (int e = 0; e < kN; ++e) acc[e] = NAN;
          continue;
        }
        Pack<T, kN> p;
        p.template load<kVector>(a.src + (r * a.units + u) * kN);
        float v[kN];
        p.unpack(v);
#pragma unroll
        for (int e = 0; e < kN; ++e) acc[e] += v[e];
      }
      Pack<T, kN> q;
      q.pack(acc);
      q.template store<kVector>(out + u * kN);
    }
  }
}

// One thread per bucket: a binary search for the first id >= t.
__global__ void bucket_starts_kernel(const int64_t* sorted, int64_t n, int64_t buckets, int64_t* starts) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t <= buckets; t += stride) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (sorted[mid] < t) lo = mid + 1;
      else hi = mid;
    }
    starts[t] = lo;
  }
}

// A chunk of pointers passed by value (2 KiB of kernel arguments, under the 4 KiB limit).
constexpr int kPointerChunk = 256;
struct PointerChunk {
  int64_t count;
  const void* values[kPointerChunk];
};

__global__ void write_pointers_kernel(void** dst, PointerChunk chunk) {
  for (int64_t i = threadIdx.x; i < chunk.count; i += blockDim.x) dst[i] = const_cast<void*>(chunk.values[i]);
}

int grid_for(int64_t rows) {
  const int64_t cap = int64_t(sm_count(current_device())) * 16;
  return int(std::max<int64_t>(1, std::min(rows, cap)));
}

template <typename T>
void launch(const MoeRowsParams& p, bool segment_sum, cudaStream_t stream) {
  constexpr int kV = vec16<T>();
  const bool vec = p.width % kV == 0 && aligned16(p.src) && aligned16(p.dst);
  Args<T> a;
  a.out_rows = segment_sum ? p.tokens : p.rows;
  a.src_rows = segment_sum ? p.rows : p.tokens;
  a.units = vec ? p.width / kV : p.width;
  a.src = static_cast<const T*>(p.src);
  a.dst = static_cast<T*>(p.dst);
  a.index = p.index;
  a.perm = p.perm;
  a.starts = p.starts;
  const int grid = grid_for(a.out_rows);
  if (segment_sum) {
    auto kernel = vec ? segment_sum_kernel<T, kV, true> : segment_sum_kernel<T, 1, false>;
    LLMPRE_LAUNCH(kernel, grid, kCta, 0, stream, a);
  } else {
    auto kernel = vec ? gather_kernel<T, kV, true> : gather_kernel<T, 1, false>;
    LLMPRE_LAUNCH(kernel, grid, kCta, 0, stream, a);
  }
  LLMPRE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void gather_rows(const MoeRowsParams& p, cudaStream_t stream) {
  LLMPRE_REQUIRE(p.rows >= 0 && p.tokens >= 0 && p.width >= 0, "gather_rows: rows, tokens and width must be >= 0, got ",
                 p.rows, ", ", p.tokens, ", ", p.width);
  if (p.rows == 0 || p.width == 0) return;
  LLMPRE_REQUIRE(p.dst && p.index, "gather_rows: dst and index must be device buffers");
  LLMPRE_REQUIRE(p.tokens > 0 && p.src, "gather_rows: ", p.rows, " rows read src, which needs tokens >= 1 rows and a "
                 "device buffer (got tokens=", p.tokens, ")");
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, launch<T>(p, false, stream));
}

void segment_sum_rows(const MoeRowsParams& p, cudaStream_t stream) {
  LLMPRE_REQUIRE(p.rows >= 0 && p.tokens >= 0 && p.width >= 0,
                 "segment_sum_rows: rows, tokens and width must be >= 0, got ", p.rows, ", ", p.tokens, ", ", p.width);
  if (p.tokens == 0 || p.width == 0) return;
  LLMPRE_REQUIRE(p.dst && p.starts, "segment_sum_rows: dst and starts must be device buffers");
  LLMPRE_REQUIRE(p.rows == 0 || (p.src && p.perm), "segment_sum_rows: src and perm must be device buffers");
  LLMPRE_DISPATCH_DTYPE(p.dtype, T, launch<T>(p, true, stream));
}

void bucket_starts(const MoeRowsParams& p, cudaStream_t stream) {
  LLMPRE_REQUIRE(p.rows >= 0 && p.tokens >= 0, "bucket_starts: rows and tokens must be >= 0, got ", p.rows, ", ",
                 p.tokens);
  LLMPRE_REQUIRE(p.starts_out && (p.rows == 0 || p.sorted), "bucket_starts: sorted and starts_out must be device buffers");
  const int threads = 128;
  const int64_t want = (p.tokens + 1 + threads - 1) / threads;
  const int grid = int(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(sm_count(current_device())) * 8)));
  auto kernel = bucket_starts_kernel;
  LLMPRE_LAUNCH(kernel, grid, threads, 0, stream, p.sorted, p.rows, p.tokens, p.starts_out);
  LLMPRE_CUDA_CHECK_LAUNCH();
}

void write_pointers(void** dst, const void* const* host, int64_t count, cudaStream_t stream) {
  LLMPRE_REQUIRE(count >= 0, "write_pointers: count must be >= 0, got ", count);
  if (count == 0) return;
  LLMPRE_REQUIRE(dst && host, "write_pointers: dst (device) and host must be set");
  for (int64_t first = 0; first < count; first += kPointerChunk) {
    PointerChunk chunk;
    chunk.count = std::min<int64_t>(kPointerChunk, count - first);
    for (int64_t i = 0; i < chunk.count; ++i) chunk.values[i] = host[first + i];
    void** out = dst + first;
    auto kernel = write_pointers_kernel;
    LLMPRE_LAUNCH(kernel, 1, 128, 0, stream, out, chunk);
    LLMPRE_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace cuda
}  // namespace llmpre
