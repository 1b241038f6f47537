// Counter-based N(0, std^2) draws for parameter initialisation (llmpre.models.init):
// element i of a parameter is a pure function of (key, i), so any region of a
// parameter can be produced without the rest.
//
//   h(j)   = splitmix64(key + j * 0x9E3779B97F4A7C15)          (mod 2^64)
//   pair k = i / 2:  u1 = ((h(2k) >> 11) + 1) / 2^53,  u2 = (h(2k+1) >> 11) / 2^53
//   r = sqrt(-2 ln u1), t = 2 pi u2
//   z_i = r cos t (i even), r sin t (i odd)                  (Box-Muller, double)
//   value = float(z_i * std)
#pragma once

#include <cstdint>
#include <vector>

namespace llmpre {

// Writes the float32 values of `region` ({start, stop} per axis) of a parameter of `shape`
// into `out` (row-major, the region's shape), using up to `threads` threads (0: all cores,
// at most 8). The result does not depend on the thread count.
void counter_normal(uint64_t key, const std::vector<int64_t>& shape,
                    const std::vector<std::pair<int64_t, int64_t>>& region, double std_dev,
                    float* out, int threads);

}  // namespace llmpre
