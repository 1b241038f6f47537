#include "llmpre/counter_init.h"

#include "llmpre/buffer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <thread>

namespace llmpre {
namespace {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
constexpr double kTwoPi = 6.283185307179586476925286766559;

inline uint64_t splitmix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The pair of draws (elements 2k and 2k + 1): r cos t and r sin t.
inline void pair(uint64_t key, uint64_t k, double* c, double* s) {
  const uint64_t base = key + (2 * k) * kGamma;
  const double u1 = (static_cast<double>(splitmix(base) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
  const double u2 = static_cast<double>(splitmix(base + kGamma) >> 11) * (1.0 / 9007199254740992.0);
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double t = kTwoPi * u2;
  *c = r * std::cos(t);
  *s = r * std::sin(t);
}

}  // namespace

void counter_normal(uint64_t key, const std::vector<int64_t>& shape,
                    const std::vector<std::pair<int64_t, int64_t>>& region, double std_dev,
                    float* out, int threads) {
  const size_t nd = shape.size();
  if (region.size() != nd) throw std::invalid_argument("counter_normal: region rank != shape rank");
  std::vector<int64_t> stride(nd, 1), extent(nd, 1);
  for (size_t a = nd; a-- > 1;) stride[a - 1] = stride[a] * shape[a];
  int64_t total = 1;
  for (size_t a = 0; a < nd; ++a) {
    if (region[a].first < 0 || region[a].second > shape[a] || region[a].first > region[a].second)
      throw std::invalid_argument("counter_normal: region outside the shape");
    extent[a] = region[a].second - region[a].first;
    total *= extent[a];
  }
  if (total == 0) return;
  // rows: every axis but the last; each row is a contiguous run of the last axis
  const int64_t row_len = nd ? extent[nd - 1] : 1;
  const int64_t rows = total / row_len;
  auto run = [&](int64_t r0, int64_t r1) {
    std::vector<int64_t> idx(nd, 0);
    for (int64_t r = r0; r < r1; ++r) {
      int64_t rem = r, flat = 0;
      for (size_t a = nd >= 1 ? nd - 1 : 0; a-- > 0;) {
        idx[a] = rem % extent[a];
        rem /= extent[a];
        flat += (region[a].first + idx[a]) * stride[a];
      }
      if (nd) flat += region[nd - 1].first;
      float* dst = out + r * row_len;
      double zc, zs;
      int64_t c = 0;
      if (flat & 1) {  // the row starts on the second element of a pair
        pair(key, static_cast<uint64_t>(flat) >> 1, &zc, &zs);
        dst[c++] = static_cast<float>(zs * std_dev);
      }
      for (; c + 1 < row_len; c += 2) {
        pair(key, static_cast<uint64_t>(flat + c) >> 1, &zc, &zs);
        dst[c] = static_cast<float>(zc * std_dev);
        dst[c + 1] = static_cast<float>(zs * std_dev);
      }
      if (c < row_len) {
        pair(key, static_cast<uint64_t>(flat + c) >> 1, &zc, &zs);
        dst[c] = static_cast<float>(zc * std_dev);
      }
    }
  };
  int workers = total < (1 << 16) ? 1 : resolve_threads(threads);
  workers = static_cast<int>(std::min<int64_t>(workers, rows));
  if (workers == 1) {
    run(0, rows);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (rows + workers - 1) / workers;
  for (int w = 0; w < workers; ++w) {
    const int64_t a = w * per, b = std::min<int64_t>(rows, a + per);
    if (a < b) pool.emplace_back(run, a, b);
  }
  for (auto& t : pool) t.join();
}

}  // namespace llmpre
