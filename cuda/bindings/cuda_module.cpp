// llmpre._cuda: device buffers and kernel launchers on raw device pointers
// (Python ints), so CUDA kernels are tested and benchmarked without Paddle.
#include <cuda_runtime.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings/registry.h"
#include "common/buffer_ops.h"
#include "common/cuda_check.h"

namespace py = pybind11;

namespace {

void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }
cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "llmpre's CUDA kernels on raw device pointers (framework-free harness)";

  m.def("device_count", []() {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return 0;
    }
    return n;
  });
  m.def("device_name", [](int device) {
    cudaDeviceProp prop;
    LLMPRE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    return std::string(prop.name);
  }, py::arg("device") = 0);
  m.def("malloc", [](size_t bytes) {
    void* p = nullptr;
    LLMPRE_CUDA_CHECK(cudaMalloc(&p, bytes == 0 ? 1 : bytes));
    return reinterpret_cast<uintptr_t>(p);
  }, py::arg("bytes"), "cudaMalloc; returns the device pointer as an int");
  m.def("free", [](uintptr_t p) { LLMPRE_CUDA_CHECK(cudaFree(as_ptr(p))); }, py::arg("ptr"));
  m.def("synchronize", []() { LLMPRE_CUDA_CHECK(cudaDeviceSynchronize()); });
  m.def("upload", [](uintptr_t dst, py::buffer src) {
    py::buffer_info info = src.request();
    const size_t bytes = static_cast<size_t>(info.size) * static_cast<size_t>(info.itemsize);
    LLMPRE_CUDA_CHECK(cudaMemcpy(as_ptr(dst), info.ptr, bytes, cudaMemcpyHostToDevice));
  }, py::arg("dst"), py::arg("src"), "copy a contiguous host buffer (numpy array) to dst");
  m.def("download", [](py::buffer dst, uintptr_t src) {
    py::buffer_info info = dst.request(true);
    const size_t bytes = static_cast<size_t>(info.size) * static_cast<size_t>(info.itemsize);
    LLMPRE_CUDA_CHECK(cudaMemcpy(info.ptr, as_ptr(src), bytes, cudaMemcpyDeviceToHost));
  }, py::arg("dst"), py::arg("src"), "copy device memory at src into a writable numpy array");
  m.def("fill", [](uintptr_t dst, py::bytes pattern, size_t count, uintptr_t stream) {
    std::string v = pattern;
    llmpre::cuda::fill_pattern(as_ptr(dst), v.data(), static_cast<int>(v.size()), count,
                               as_stream(stream));
  }, py::arg("dst"), py::arg("pattern"), py::arg("count"), py::arg("stream") = 0);
  m.def("flush_l2", [](uintptr_t scratch, size_t bytes, uintptr_t stream) {
    llmpre::cuda::flush_l2(as_ptr(scratch), bytes, as_stream(stream));
  }, py::arg("scratch"), py::arg("bytes"), py::arg("stream") = 0);

  // CUDA events, for benchmarks that time kernels on the device.
  m.def("event_create", []() {
    cudaEvent_t e;
    LLMPRE_CUDA_CHECK(cudaEventCreate(&e));
    return reinterpret_cast<uintptr_t>(e);
  });
  m.def("event_record", [](uintptr_t e, uintptr_t stream) {
    LLMPRE_CUDA_CHECK(cudaEventRecord(reinterpret_cast<cudaEvent_t>(e), as_stream(stream)));
  }, py::arg("event"), py::arg("stream") = 0);
  m.def("event_elapsed_ms", [](uintptr_t start, uintptr_t stop) {
    LLMPRE_CUDA_CHECK(cudaEventSynchronize(reinterpret_cast<cudaEvent_t>(stop)));
    float ms = 0.f;
    LLMPRE_CUDA_CHECK(cudaEventElapsedTime(&ms, reinterpret_cast<cudaEvent_t>(start),
                                           reinterpret_cast<cudaEvent_t>(stop)));
    return ms;
  });
  m.def("event_destroy", [](uintptr_t e) {
    LLMPRE_CUDA_CHECK(cudaEventDestroy(reinterpret_cast<cudaEvent_t>(e)));
  });

  for (auto fn : llmpre::cuda::binding_registry()) fn(m);
}
