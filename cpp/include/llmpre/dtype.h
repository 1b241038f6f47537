// The one element-type enum of llmpre's C++ and CUDA code: token files
// (cpp/src/corpus.cpp), the CPU kernels (cpp/kernels), the CUDA kernels
// (cuda/) and the Paddle ops (paddle_ops/) all name storage types with it, so a
// code means the same type everywhere.
//
// Codes 1-10 are PaddleNLP's (and Megatron's) dtype codes of the `.idx` index
// format (indexed_dataset.py `dtypes`): a code read from a file becomes a DType
// once checked (corpus.h dtype_code_valid). float16 and bfloat16, which that
// format has no code for, take the next two. Each consumer accepts its own
// subset and says so when given another type: the CPU kernels store float32 or
// bfloat16, the CUDA row kernels float32, float16 or bfloat16, the CUDA flash
// attention bfloat16 or float16, token files the integer (and legacy float)
// codes.
//
// Plain C++17 with no dependencies, so host code of every layer (and nvcc)
// can include it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace llmpre {

enum class DType : uint8_t {
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kFloat64 = 6,
  kFloat32 = 7,
  kUInt16 = 8,
  kUInt32 = 9,
  kUInt64 = 10,
  kFloat16 = 11,
  kBFloat16 = 12,
};

// Bytes per element (0 for a value outside the enum).
constexpr size_t dtype_size(DType d) {
  switch (d) {
    case DType::kUInt8:
    case DType::kInt8:
      return 1;
    case DType::kInt16:
    case DType::kUInt16:
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kInt32:
    case DType::kUInt32:
    case DType::kFloat32:
      return 4;
    case DType::kInt64:
    case DType::kUInt64:
    case DType::kFloat64:
      return 8;
  }
  return 0;
}

// numpy's (and Paddle's) spelling: "uint16", "int32", "float32", "bfloat16", ...
constexpr const char* dtype_name(DType d) {
  switch (d) {
    case DType::kUInt8: return "uint8";
    case DType::kInt8: return "int8";
    case DType::kInt16: return "int16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kFloat64: return "float64";
    case DType::kFloat32: return "float32";
    case DType::kUInt16: return "uint16";
    case DType::kUInt32: return "uint32";
    case DType::kUInt64: return "uint64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

}  // namespace llmpre
