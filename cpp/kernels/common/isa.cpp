#include "common/isa.h"

#include <cstdlib>
#include <cstring>

namespace llmpre::kernels {

namespace {
bool detect_avx2() {
#if LLMPRE_HAVE_AVX2_PATH && (defined(__GNUC__) || defined(__clang__))
  const char* forced = std::getenv("LLMPRE_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "baseline") == 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
}  // namespace

bool use_avx2() {
  static const bool avx2 = detect_avx2();
  return avx2;
}

const char* active_isa() { return use_avx2() ? "avx2" : "baseline"; }

}  // namespace llmpre::kernels
