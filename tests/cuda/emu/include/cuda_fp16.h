// CPU emulation (tests only): float16 as raw bits, converted through GCC's _Float16
// (correctly rounded, subnormals included).
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t x;
};
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.x, sizeof v);
  return static_cast<float>(v);
}
inline __half __float2half_rn(float f) {
  const _Float16 v = static_cast<_Float16>(f);
  __half h;
  std::memcpy(&h.x, &v, sizeof v);
  return h;
}
