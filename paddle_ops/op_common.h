// Shared checks for the Paddle custom ops: the one layer that knows Paddle's
// op API. Each op validates its inputs here (messages name the op, the
// argument, what was expected and what was given), fills the kernel's plain
// parameter struct and calls the framework-free kernel on raw pointers.
#pragma once

#include <exception>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/memory.h"
#include "paddle/extension.h"

namespace llmpre::ops {

namespace k = llmpre::kernels;

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

inline std::string dtype_str(paddle::DataType d) { return phi::DataTypeToString(d); }

// float32 -> kFloat32, bfloat16 -> kBFloat16; any other dtype is an error.
inline llmpre::DType kernel_dtype(const paddle::Tensor& t, const char* op, const char* arg) {
  if (t.dtype() == paddle::DataType::FLOAT32) return llmpre::DType::kFloat32;
  if (t.dtype() == paddle::DataType::BFLOAT16) return llmpre::DType::kBFloat16;
  PD_THROW(op, ": `", arg, "` must be float32 or bfloat16, got ", dtype_str(t.dtype()));
}

inline void check_same_dtype(const paddle::Tensor& a, const char* a_name, const paddle::Tensor& b,
                             const char* b_name, const char* op) {
  PD_CHECK(a.dtype() == b.dtype(), op, ": `", b_name, "` must have the dtype of `", a_name, "` (",
           dtype_str(a.dtype()), "), got ", dtype_str(b.dtype()));
}

inline void check_same_shape(const paddle::Tensor& a, const char* a_name, const paddle::Tensor& b,
                             const char* b_name, const char* op) {
  PD_CHECK(a.shape() == b.shape(), op, ": `", b_name, "` must have the shape of `", a_name, "` ",
           shape_str(a.shape()), ", got ", shape_str(b.shape()));
}

// The CPU kernels need CPU tensors. GPU tensors are served by the CUDA
// launchers when the library is built with them (LLMPRE_WITH_CUDA, see
// cuda_ops.h); without them this says so instead of crashing.
inline void check_cpu(const paddle::Tensor& t, const char* op, const char* arg) {
  PD_CHECK(t.is_cpu(), op, ": `", arg, "` is on ", t.place().DebugString(),
           " but this llmpre build has only CPU kernels for it (",
#ifdef LLMPRE_WITH_CUDA
           "no CUDA kernel for this op yet"
#else
           "built without LLMPRE_WITH_CUDA"
#endif
           "); use the reference op (llmpre.ops.reference) or a CPU tensor");
}

// An uninitialised output the kernel fills; large CPU buffers get huge pages
// (common/memory.h: page faults otherwise dominate writing a fresh 100 MB buffer).
inline paddle::Tensor new_output(const std::vector<int64_t>& shape, paddle::DataType dtype,
                                 const paddle::Place& place) {
  paddle::Tensor t = paddle::empty(shape, dtype, place);
  if (t.is_cpu() && t.numel() > 0) k::advise_huge_pages(t.data(), size_t(t.numel()) * phi::SizeOf(dtype));
  return t;
}

inline paddle::Tensor contiguous(const paddle::Tensor& t) {
  return t.is_contiguous() ? t : t.contiguous();
}

// Gradients of outputs that took no part in the loss arrive undefined.
inline bool has_grad(const paddle::Tensor& g) { return g.defined() && g.initialized(); }

// Runs a kernel call. A C++ exception escaping a Paddle custom op aborts the
// process, so kernel errors (bad sizes, out-of-range labels or positions) are
// rethrown as Paddle errors, which reach Python as exceptions.
template <class F>
void run_kernel(const char* op, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    PD_THROW(op, ": ", e.what());
  }
}

// Integer index tensors (labels, position ids) as contiguous int64 on CPU.
inline paddle::Tensor as_int64(const paddle::Tensor& t, const char* op, const char* arg) {
  PD_CHECK(t.dtype() == paddle::DataType::INT64 || t.dtype() == paddle::DataType::INT32, op, ": `",
           arg, "` must be int64 or int32, got ", dtype_str(t.dtype()));
  paddle::Tensor c = contiguous(t);
  return t.dtype() == paddle::DataType::INT64 ? c : paddle::experimental::cast(c, paddle::DataType::INT64);
}

}  // namespace llmpre::ops
