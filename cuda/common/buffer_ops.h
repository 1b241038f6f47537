// Small device-side helpers for the standalone harness (no framework).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace llmpre {
namespace cuda {

// Writes `count` copies of the `elem_bytes`-byte pattern at `value` (1, 2, 4
// or 8 bytes) to `dst`, e.g. a float 1.0 or a bf16 -inf.
void fill_pattern(void* dst, const void* value, int elem_bytes, size_t count,
                  cudaStream_t stream);

// Reads and rewrites `bytes` of scratch memory so a following kernel starts
// with a cold L2 (benchmarks call it between timed runs).
void flush_l2(void* scratch, size_t bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmpre
