// Element types the CPU kernels store, and the conversions they compute with.
//
// Kernels read and write fp32 or bf16 (DType::kFloat32 / kBFloat16 of the
// shared enum, llmpre/dtype.h) and always accumulate in fp32. bf16 is the
// upper half of an IEEE fp32 (Paddle's phi::dtype::bfloat16 layout); rounding
// to it is round-to-nearest-even, NaN stays NaN.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "llmpre/dtype.h"

// Helpers called from kernel loops: always inlined, so that each ISA build of a
// kernel body (isa.h) compiles them with its own instruction set.
#if defined(__GNUC__) || defined(__clang__)
#define LLMPRE_INLINE inline __attribute__((always_inline))
#else
#define LLMPRE_INLINE inline
#endif

namespace llmpre::kernels {

// The storage types every CPU kernel implements; `fn` names the kernel in the error.
inline void check_dtype(DType d, const char* fn) {
  if (d != DType::kFloat32 && d != DType::kBFloat16)
    throw std::invalid_argument(std::string(fn) + ": dtype must be float32 or bfloat16, got " + dtype_name(d));
}

// A bf16 value in memory (a distinct type so overloads pick the right conversion).
struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 must be two bytes");

LLMPRE_INLINE float to_float(float v) { return v; }

LLMPRE_INLINE float to_float(bf16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <class T>
T from_float(float f);

template <>
LLMPRE_INLINE float from_float<float>(float f) {
  return f;
}

template <>
LLMPRE_INLINE bf16 from_float<bf16>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  return bf16{uint16_t(is_nan ? quiet_nan : rounded)};
}

}  // namespace llmpre::kernels
