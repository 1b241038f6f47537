// numpy's legacy `np.random.RandomState`, bit for bit, for the draws the GPT
// sample index needs: MT19937 seeded from a 32-bit integer, `random_interval`
// (masked rejection sampling) and the in-place Fisher-Yates `shuffle` of a
// 1-D array. PaddleNLP builds doc_idx and shuffle_idx with these calls, so
// reproducing them exactly is what makes our cached indices interchangeable.
#pragma once

#include <cstdint>
#include <utility>

namespace llmpre {

class MT19937 {
 public:
  static constexpr int kN = 624;

  // RandomState(seed) for an integer seed in [0, 2**32).
  explicit MT19937(uint32_t seed) {
    uint32_t s = seed;
    for (int i = 0; i < kN; ++i) {
      key_[i] = s;
      s = 1812433253u * (s ^ (s >> 30)) + static_cast<uint32_t>(i + 1);
    }
    pos_ = kN;
  }

  uint32_t next32() {
    if (pos_ == kN) twist();
    uint32_t y = key_[pos_++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
  }

  // numpy's mt19937_next64: the first 32-bit draw is the high word.
  uint64_t next64() {
    uint64_t hi = next32();
    uint64_t lo = next32();
    return (hi << 32) | lo;
  }

  // A uniform integer in [0, max], numpy's `random_interval`.
  uint64_t interval(uint64_t max) {
    if (max == 0) return 0;
    uint64_t mask = max;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    mask |= mask >> 32;
    uint64_t value;
    if (max <= 0xffffffffull) {
      while ((value = (next32() & mask)) > max) {
      }
    } else {
      while ((value = (next64() & mask)) > max) {
      }
    }
    return value;
  }

  // RandomState.shuffle(x) for a contiguous 1-D array of n elements.
  template <typename T>
  void shuffle(T* x, int64_t n) {
    for (int64_t i = n - 1; i >= 1; --i) {
      const int64_t j = static_cast<int64_t>(interval(static_cast<uint64_t>(i)));
      std::swap(x[i], x[j]);
    }
  }

 private:
  void twist() {
    constexpr uint32_t kUpper = 0x80000000u, kLower = 0x7fffffffu, kMatrixA = 0x9908b0dfu;
    constexpr int kM = 397;
    int i = 0;
    for (; i < kN - kM; ++i) {
      uint32_t y = (key_[i] & kUpper) | (key_[i + 1] & kLower);
      key_[i] = key_[i + kM] ^ (y >> 1) ^ (-(y & 1u) & kMatrixA);
    }
    for (; i < kN - 1; ++i) {
      uint32_t y = (key_[i] & kUpper) | (key_[i + 1] & kLower);
      key_[i] = key_[i + (kM - kN)] ^ (y >> 1) ^ (-(y & 1u) & kMatrixA);
    }
    uint32_t y = (key_[kN - 1] & kUpper) | (key_[0] & kLower);
    key_[kN - 1] = key_[kM - 1] ^ (y >> 1) ^ (-(y & 1u) & kMatrixA);
    pos_ = 0;
  }

  uint32_t key_[kN];
  int pos_;
};

}  // namespace llmpre
