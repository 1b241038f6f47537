// Host-side pieces every launcher shares: the storage dtype of a kernel's
// tensors (llmpre::DType of llmpre/dtype.h; the row kernels take float32,
// float16 and bfloat16), its parsing from the names the bindings accept, and precondition
// checks that throw std::invalid_argument naming file:line and the fix
// (pybind11 turns it into a Python ValueError). No device code here, so the
// pybind11 bindings and the Paddle wrappers can include it from plain C++.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#include "llmpre/dtype.h"

namespace llmpre {
namespace cuda {

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

namespace detail {
inline std::ostringstream& stream_all(std::ostringstream& os) { return os; }
template <class A, class... Rest>
std::ostringstream& stream_all(std::ostringstream& os, const A& a, const Rest&... rest) {
  os << a;
  return stream_all(os, rest...);
}
template <class... Args>
[[noreturn]] void fail(const char* file, int line, const Args&... args) {
  std::ostringstream os;
  os << file << ":" << line << ": ";
  stream_all(os, args...);
  throw std::invalid_argument(os.str());
}
}  // namespace detail

// LLMPRE_REQUIRE(rows >= 0, "rms_norm: rows must be >= 0, got ", rows);
#define LLMPRE_REQUIRE(cond, ...) \
  do {                            \
    if (!(cond)) ::llmpre::cuda::detail::fail(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

// "float32"/"fp32", "float16"/"fp16"/"half", "bfloat16"/"bf16".
inline DType parse_dtype(const std::string& s) {
  if (s == "float32" || s == "fp32") return DType::kFloat32;
  if (s == "float16" || s == "fp16" || s == "half") return DType::kFloat16;
  if (s == "bfloat16" || s == "bf16") return DType::kBFloat16;
  detail::fail(__FILE__, __LINE__, "dtype must be one of float32, float16, bfloat16 (or fp32, fp16, bf16), got '",
               s, "'");
}

}  // namespace cuda
}  // namespace llmpre

