// _cuda_emu: the llmpre._cuda interface (buffers + the RMSNorm, RoPE and
// cross-entropy launchers, registered by the unchanged cuda/bindings/*_bind.cpp)
// over the CPU emulator in include/cuda_runtime.h. Tests only; built by
// tests/cuda/emu_build.py. "Device" buffers are host memory with guard bytes
// on both sides, checked when freed, so a kernel writing outside its buffer
// fails the test instead of corrupting memory silently.
#include <pybind11/pybind11.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>  // the emulator's (tests/cuda/emu/include)

#include "bindings/registry.h"

namespace py = pybind11;

namespace {

constexpr size_t kGuard = 256;
constexpr unsigned char kGuardByte = 0xa5;

struct Allocation {
  unsigned char* base;
  size_t bytes;
};
std::map<uintptr_t, Allocation>& allocations() {
  static std::map<uintptr_t, Allocation> m;
  return m;
}

uintptr_t emu_malloc(size_t bytes) {
  const size_t body = (bytes + kGuard - 1) / kGuard * kGuard;
  auto* base = static_cast<unsigned char*>(std::aligned_alloc(kGuard, body + 2 * kGuard));
  if (!base) throw std::runtime_error("emulator: out of host memory");
  std::memset(base, kGuardByte, body + 2 * kGuard);
  const auto ptr = reinterpret_cast<uintptr_t>(base + kGuard);
  allocations()[ptr] = {base, bytes};
  return ptr;
}

void emu_free(uintptr_t ptr) {
  auto it = allocations().find(ptr);
  if (it == allocations().end()) throw std::runtime_error("emulator: free of an unknown pointer");
  const Allocation a = it->second;
  allocations().erase(it);
  const size_t body = (a.bytes + kGuard - 1) / kGuard * kGuard;
  size_t before = 0, after = 0;
  for (size_t i = 0; i < kGuard; ++i) before += a.base[i] != kGuardByte;
  for (size_t i = kGuard + a.bytes; i < body + 2 * kGuard; ++i) after += a.base[i] != kGuardByte;
  std::free(a.base);
  if (before || after) {
    std::ostringstream os;
    os << "emulator: a kernel wrote outside a " << a.bytes << "-byte buffer (" << before
       << " guard bytes changed before it, " << after << " after it)";
    throw std::runtime_error(os.str());
  }
}

}  // namespace

PYBIND11_MODULE(_cuda_emu, m) {
  m.doc() = "llmpre._cuda's row kernels on a CPU emulator (tests only)";
  m.def("device_count", []() { return 1; });
  m.def("device_name", [](int) { return std::string("CPU emulator"); }, py::arg("device") = 0);
  m.def("configure", [](int sms, int blocks_per_sm) {
    emu::config().sms = sms;
    emu::config().blocks_per_sm = blocks_per_sm;
  }, py::arg("sms"), py::arg("blocks_per_sm"));
  m.def("malloc", &emu_malloc, py::arg("bytes"));
  m.def("free", &emu_free, py::arg("ptr"));
  m.def("live_allocations", []() { return allocations().size(); });
  m.def("synchronize", []() {});
  m.def("upload", [](uintptr_t dst, py::buffer src) {
    py::buffer_info info = src.request();
    std::memcpy(reinterpret_cast<void*>(dst), info.ptr, static_cast<size_t>(info.size) * info.itemsize);
  }, py::arg("dst"), py::arg("src"));
  m.def("download", [](py::buffer dst, uintptr_t src) {
    py::buffer_info info = dst.request(true);
    std::memcpy(info.ptr, reinterpret_cast<const void*>(src), static_cast<size_t>(info.size) * info.itemsize);
  }, py::arg("dst"), py::arg("src"));
  m.def("fill", [](uintptr_t dst, py::bytes pattern, size_t count, uintptr_t) {
    const std::string v = pattern;
    auto* p = reinterpret_cast<unsigned char*>(dst);
    for (size_t i = 0; i < count; ++i) std::memcpy(p + i * v.size(), v.data(), v.size());
  }, py::arg("dst"), py::arg("pattern"), py::arg("count"), py::arg("stream") = 0);

  // Host-clock "events" and a no-op L2 flush, so the benchmark scripts can be
  // smoke-tested here (their numbers mean nothing on the emulator).
  m.def("flush_l2", [](uintptr_t, size_t, uintptr_t) {}, py::arg("scratch"), py::arg("bytes"),
        py::arg("stream") = 0);
  m.def("event_create", []() { return reinterpret_cast<uintptr_t>(new double(0.0)); });
  m.def("event_record", [](uintptr_t e, uintptr_t) {
    *reinterpret_cast<double*>(e) =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }, py::arg("event"), py::arg("stream") = 0);
  m.def("event_elapsed_ms", [](uintptr_t a, uintptr_t b) {
    return static_cast<float>(*reinterpret_cast<double*>(b) - *reinterpret_cast<double*>(a));
  });
  m.def("event_destroy", [](uintptr_t e) { delete reinterpret_cast<double*>(e); });

  for (auto fn : llmpre::cuda::binding_registry()) fn(m);
}
