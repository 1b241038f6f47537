// The 6 x 16 fp32 GEMM micro-kernel (AVX2 + FMA) shared by the CPU kernels that
// tile their matrix products (flash attention's tiles, the grouped expert MLP).
#pragma once

#include <cstdint>

#include "common/isa.h"

#if LLMPRE_HAVE_AVX2_PATH
#include <immintrin.h>

#define LLMPRE_MICRO_AVX2 __attribute__((target("avx2,fma")))

namespace llmpre::kernels::micro {

// One 6 x 16 block of C = A B (+ C when ``accumulate``) over the whole k: twelve
// accumulators that stay in registers (written out one by one; GCC spills an array of
// them to the stack on every step), the B row loaded as two vectors, A entries
// broadcast. A is read at a + i rsa + kk csa, B at b + kk ldb (16 columns), C at
// c + i ldc. A block with mr < 6 rows repeats row 0 in the unused rows and stores only mr.
LLMPRE_MICRO_AVX2 inline void micro_avx2(int64_t k, int mr, const float* a, int64_t rsa, int64_t csa,
                                   const float* b, int64_t ldb, float* c, int64_t ldc,
                                   bool accumulate) {
  // Row offsets into A (one pointer walks k: fewer increments than six pointers).
  const int64_t o0 = 0, o1 = mr > 1 ? rsa : 0, o2 = mr > 2 ? 2 * rsa : 0;
  const int64_t o3 = mr > 3 ? 3 * rsa : 0, o4 = mr > 4 ? 4 * rsa : 0, o5 = mr > 5 ? 5 * rsa : 0;
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  if (accumulate) {
#define LLMPRE_LOAD_ROW(r)                              \
  if (mr > r) {                                         \
    c##r##0 = _mm256_loadu_ps(c + r * ldc);             \
    c##r##1 = _mm256_loadu_ps(c + r * ldc + 8);         \
  }
    LLMPRE_LOAD_ROW(0) LLMPRE_LOAD_ROW(1) LLMPRE_LOAD_ROW(2)
    LLMPRE_LOAD_ROW(3) LLMPRE_LOAD_ROW(4) LLMPRE_LOAD_ROW(5)
#undef LLMPRE_LOAD_ROW
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = _mm256_loadu_ps(b + 8);
    b += ldb;
    __m256 av;
#define LLMPRE_FMA_ROW(r)                        \
  av = _mm256_broadcast_ss(a + o##r);           \
  c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);   \
  c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);
    LLMPRE_FMA_ROW(0) LLMPRE_FMA_ROW(1) LLMPRE_FMA_ROW(2)
    LLMPRE_FMA_ROW(3) LLMPRE_FMA_ROW(4) LLMPRE_FMA_ROW(5)
#undef LLMPRE_FMA_ROW
    a += csa;
  }
#define LLMPRE_STORE_ROW(r)                        \
  if (mr > r) {                                    \
    _mm256_storeu_ps(c + r * ldc, c##r##0);        \
    _mm256_storeu_ps(c + r * ldc + 8, c##r##1);    \
  }
  LLMPRE_STORE_ROW(0) LLMPRE_STORE_ROW(1) LLMPRE_STORE_ROW(2)
  LLMPRE_STORE_ROW(3) LLMPRE_STORE_ROW(4) LLMPRE_STORE_ROW(5)
#undef LLMPRE_STORE_ROW
}

}  // namespace llmpre::kernels::micro

#undef LLMPRE_MICRO_AVX2
#endif  // LLMPRE_HAVE_AVX2_PATH
