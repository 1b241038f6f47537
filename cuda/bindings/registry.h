// Each cuda/bindings/<op>_bind.cpp adds its functions to llmpre._cuda without
// editing the module file:
//
//   #include "bindings/registry.h"
//   LLMPRE_CUDA_BINDINGS(rms_norm, m) { m.def("rms_norm_forward", ...); }
//
// The module (cuda_module.cpp) runs every registered function at import.
#pragma once

#include <pybind11/pybind11.h>

#include <functional>
#include <vector>

namespace llmpre {
namespace cuda {

using BindFn = void (*)(pybind11::module_&);

inline std::vector<BindFn>& binding_registry() {
  static std::vector<BindFn> fns;
  return fns;
}

struct BindingRegistrar {
  explicit BindingRegistrar(BindFn fn) { binding_registry().push_back(fn); }
};

}  // namespace cuda
}  // namespace llmpre

#define LLMPRE_CUDA_BINDINGS(name, module)                                           \
  static void llmpre_cuda_bind_##name(pybind11::module_& module);                    \
  static ::llmpre::cuda::BindingRegistrar llmpre_cuda_registrar_##name(              \
      &llmpre_cuda_bind_##name);                                                      \
  static void llmpre_cuda_bind_##name(pybind11::module_& module)
