// Large uninitialised arrays and a small fork-join helper for the index builders.
//
// Buffer<T> is a malloc'd array that is not zero-filled (the builders write
// every element) and asks Linux for transparent huge pages: the index arrays
// are hundreds of MB and are accessed at random while shuffling, where 4 KiB
// pages make every access a TLB miss. Ownership can be released to numpy.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <new>
#include <thread>
#include <vector>

namespace llmpre {

template <typename T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n) : size_(n) {
    if (n == 0) return;
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t bytes = n * sizeof(T);
    if (bytes >= kHuge) {
      const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
      data_ = static_cast<T*>(std::aligned_alloc(kHuge, rounded));
      if (data_ != nullptr) ::madvise(data_, rounded, MADV_HUGEPAGE);
    } else {
      data_ = static_cast<T*>(std::malloc(bytes));
    }
    if (data_ == nullptr) throw std::bad_alloc();
  }
  ~Buffer() { std::free(data_); }
  Buffer(Buffer&& o) noexcept : data_(o.data_), size_(o.size_) {
    o.data_ = nullptr;
    o.size_ = 0;
  }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      std::free(data_);
      data_ = o.data_;
      size_ = o.size_;
      o.data_ = nullptr;
      o.size_ = 0;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

  // Hands the memory to the caller, who frees it with std::free.
  T* release() {
    T* p = data_;
    data_ = nullptr;
    size_ = 0;
    return p;
  }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// Number of threads to use for `requested` (0: the machine's cores, at most 8).
inline int resolve_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::clamp(hw == 0 ? 1u : hw, 1u, 8u));
}

// Runs fn(part, begin, end) over `parts` contiguous slices of [0, n), one
// thread each (the calling thread takes part 0). Exceptions are rethrown.
template <typename Fn>
void parallel_parts(int parts, int64_t n, Fn&& fn) {
  parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(parts, n)));
  auto bound = [&](int p) { return n * p / parts; };
  if (parts == 1) {
    fn(0, int64_t{0}, n);
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<size_t>(parts));
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(parts - 1));
  for (int p = 1; p < parts; ++p) {
    pool.emplace_back([&, p] {
      try {
        fn(p, bound(p), bound(p + 1));
      } catch (...) {
        errors[static_cast<size_t>(p)] = std::current_exception();
      }
    });
  }
  try {
    fn(0, bound(0), bound(1));
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& t : pool) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace llmpre
