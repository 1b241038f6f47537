// Row-parallel loops over the OpenMP runtime the host process already uses
// (with Paddle: its bundled libiomp5, the same pool its MKL kernels use).
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace llmpre::kernels {

// Threads a kernel may use: OMP_NUM_THREADS / the framework's setting.
inline int max_threads() {
#ifdef _OPENMP
  return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
  return 1;
#endif
}

// Work (in elements touched) below which a kernel stays on one thread. Waking a
// second thread is cheap on an idle machine but costs up to a scheduler time
// slice when the cores are busy with other processes: on a loaded 2-core box an
// RMSNorm of 1024 x 256 took 0.1 ms on one thread and 12 ms on two. About 1M
// elements (a few hundred microseconds of work) amortises that.
constexpr int64_t kMinElementsPerThread = int64_t(1) << 20;

// The parallel_for grain for items of `elements_per_item` elements each.
inline int64_t grain_for(int64_t elements_per_item) {
  return std::max<int64_t>(1, kMinElementsPerThread / std::max<int64_t>(1, elements_per_item));
}

// Calls f(begin, end) on contiguous slices of [0, n), one per thread, each at
// least `grain` items (so small problems stay on one thread). f must not throw.
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
  const int64_t slices = std::min<int64_t>(max_threads(), std::max<int64_t>(1, n / std::max<int64_t>(1, grain)));
  if (slices <= 1) {
    f(int64_t(0), n);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(int(slices))
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = n * t / nt, end = n * (t + 1) / nt;
    if (begin < end) f(begin, end);
  }
#endif
}

}  // namespace llmpre::kernels
