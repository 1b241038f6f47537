// numpy's legacy `np.random.RandomState`, bit for bit, for the draws the GPT
// sample index needs: MT19937 seeded from a 32-bit integer, `random_interval`
// (masked rejection sampling) and the in-place Fisher-Yates `shuffle` of a
// 1-D array. PaddleNLP builds doc_idx and shuffle_idx with these calls, so
// reproducing them exactly is what makes our cached indices interchangeable.
//
// Speed: the generator tempers a whole state block (624 outputs) at once, and
// `shuffle_draws` produces the j of every Fisher-Yates step ahead of time with
// a branch-free rejection loop. Separating the draws from the swaps lets the
// swaps prefetch (`apply_shuffle`) and lets another thread do the swapping.
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
    if (pos_ == kN) refill();
    return out_[pos_++];
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

  // RandomState.shuffle(x) for a contiguous 1-D array of n elements (the
  // plain sequential form; any n).
  template <typename T>
  void shuffle(T* x, int64_t n) {
    for (int64_t i = n - 1; i >= 1; --i) {
      const int64_t j = static_cast<int64_t>(interval(static_cast<uint64_t>(i)));
      std::swap(x[i], x[j]);
    }
  }

  // The j of Fisher-Yates steps i = top, top-1, ..., top-count+1 (each i >= 1
  // and top < 2**32), exactly as `shuffle` draws them: js[k] is the j of step
  // i = top - k. Consumes the same generator outputs as those interval() calls.
  void shuffle_draws(uint64_t top, uint64_t count, uint32_t* js) {
    const uint64_t stop = top - count;  // the first step not drawn
    uint64_t i = top;
    while (i > stop) {
      if (pos_ == kN) refill();
      const uint32_t* o = out_ + pos_;
      const int avail = kN - pos_;
      int used = 0;
      // Each output is tried against the current step's mask; a rejected one
      // is overwritten by the next try, an accepted one moves to the next step.
      while (used < avail && i > stop) {
        const uint32_t ii = static_cast<uint32_t>(i);
        const uint32_t v = o[used++] & (0xffffffffu >> __builtin_clz(ii));
        js[top - i] = v;
        i -= (v <= ii) ? 1u : 0u;
      }
      pos_ += used;
    }
  }

 private:
  void refill() {
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
    for (int k = 0; k < kN; ++k) {  // tempering, a vectorisable loop
      uint32_t t = key_[k];
      t ^= (t >> 11);
      t ^= (t << 7) & 0x9d2c5680u;
      t ^= (t << 15) & 0xefc60000u;
      out_[k] = t ^ (t >> 18);
    }
    pos_ = 0;
  }

  uint32_t key_[kN];
  uint32_t out_[kN];
  int pos_;
};

// Applies Fisher-Yates steps i = top, ..., top-count+1 to x with the draws
// from MT19937::shuffle_draws, prefetching the random side a few steps ahead.
template <typename T>
void apply_shuffle(T* x, uint64_t top, uint64_t count, const uint32_t* js) {
  constexpr uint64_t kAhead = 48;
  for (uint64_t k = 0; k < count; ++k) {
    if (k + kAhead < count) __builtin_prefetch(x + js[k + kAhead], 1);
    const uint64_t i = top - k;
    const uint32_t j = js[k];
    T t = x[i];
    x[i] = x[j];
    x[j] = t;
  }
}

}  // namespace llmpre
