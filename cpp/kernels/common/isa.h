// Runtime choice between the baseline x86-64 build of a kernel body and its
// AVX2+FMA build. Each op's .cpp includes its body (<op>_body.inc) twice:
//
//   namespace baseline {
//   #include "op/op_body.inc"
//   }
//   LLMPRE_BEGIN_AVX2
//   namespace avx2 {
//   #include "op/op_body.inc"
//   }
//   LLMPRE_END_AVX2
//
// and calls avx2:: when use_avx2() is true. The library itself is compiled
// for the baseline ISA, so it loads and runs on any x86-64 CPU. Bodies only
// call inline helpers (dtype.h, vmath.h), which are then compiled into each
// copy; distinct namespaces keep the two copies' template instances apart.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#define LLMPRE_HAVE_AVX2_PATH 1
#if defined(__clang__)
#define LLMPRE_BEGIN_AVX2 \
  _Pragma("clang attribute push (__attribute__((target(\"avx2,fma\"))), apply_to = function)")
#define LLMPRE_END_AVX2 _Pragma("clang attribute pop")
#else
#define LLMPRE_BEGIN_AVX2 _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")")
#define LLMPRE_END_AVX2 _Pragma("GCC pop_options")
#endif
#else
#define LLMPRE_HAVE_AVX2_PATH 0
#define LLMPRE_BEGIN_AVX2
#define LLMPRE_END_AVX2
#endif

namespace llmpre::kernels {

// True when the CPU has AVX2 and FMA and LLMPRE_CPU_ISA is not "baseline"
// (set LLMPRE_CPU_ISA=baseline to test or time the portable path). Decided once.
bool use_avx2();

// "avx2" or "baseline": the path use_avx2() selects.
const char* active_isa();

}  // namespace llmpre::kernels
