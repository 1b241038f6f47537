#include "llmpre/corpus.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <sstream>
#include <vector>

#include "llmpre/buffer.h"

namespace llmpre {

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;  // 34

template <typename T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // x86/arm64 are little-endian, as the format is
  return v;
}

template <typename T>
void copy_as_int64(const void* base, int64_t start, int64_t n, int64_t* out) {
  const T* src = static_cast<const T*>(base) + start;
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int64_t>(src[i]);
}

template <typename T>
int64_t max_of(const void* base, int64_t start, int64_t n, int64_t best) {
  const T* src = static_cast<const T*>(base) + start;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = static_cast<int64_t>(src[i]);
    best = v > best ? v : best;
  }
  return best;
}

}  // namespace

bool dtype_code_valid(int code) { return code >= 1 && code <= 10; }

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw DataError(path + ": cannot open (" + std::strerror(errno) +
                    "); check the path or data prefix");
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw DataError(path + ": cannot stat (" + std::strerror(e) + ")");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      throw DataError(path + ": mmap failed (" + std::strerror(e) + ")");
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

IdxHeader parse_idx_header(const uint8_t* data, size_t size, const std::string& path) {
  if (size < kHeaderBytes) {
    std::ostringstream m;
    m << path << ": index file is " << size << " bytes, shorter than the " << kHeaderBytes
      << "-byte MMIDIDX header; the file is truncated, re-run preprocessing";
    throw DataError(m.str());
  }
  if (std::memcmp(data, kMagic, sizeof(kMagic)) != 0) {
    throw DataError(path +
                    ": not a PaddleNLP/Megatron mmap index (magic is not 'MMIDIDX\\0\\0'); "
                    "pass the prefix of a .bin/.idx pair written by PaddleNLP's "
                    "create_pretraining_data.py or `llmpre data preprocess`");
  }
  IdxHeader h;
  h.version = load_le<uint64_t>(data + 9);
  if (h.version != 1) {
    throw DataError(path + ": index version " + std::to_string(h.version) +
                    " is not supported (only version 1 exists)");
  }
  int code = data[17];
  if (!dtype_code_valid(code)) {
    throw DataError(path + ": unknown dtype code " + std::to_string(code) +
                    " (valid codes are 1..10); the index is corrupt");
  }
  h.dtype = static_cast<DType>(code);
  h.num_items = load_le<uint64_t>(data + 18);
  h.doc_idx_len = load_le<uint64_t>(data + 26);
  // 34 + 4N + 8N + 8D must be exactly the file size; check without overflow.
  const uint64_t limit = uint64_t(1) << 58;
  if (h.num_items > limit || h.doc_idx_len > limit) {
    throw DataError(path + ": header claims an absurd number of items (" +
                    std::to_string(h.num_items) + ") or documents (" +
                    std::to_string(h.doc_idx_len) + "); the index is corrupt");
  }
  uint64_t expect = kHeaderBytes + 12 * h.num_items + 8 * h.doc_idx_len;
  if (expect != size) {
    std::ostringstream m;
    m << path << ": header says " << h.num_items << " items and " << h.doc_idx_len
      << " doc_idx entries, which needs " << expect << " bytes, but the file has " << size
      << "; the index is truncated or corrupt, re-run preprocessing";
    throw DataError(m.str());
  }
  return h;
}

void CorpusView::read(int64_t item, int64_t offset, int64_t length, int64_t* out) const {
  const int64_t start = this->offset(static_cast<uint64_t>(item)) + offset;
  switch (dtype) {
    case DType::kUInt8: copy_as_int64<uint8_t>(tokens, start, length, out); break;
    case DType::kInt8: copy_as_int64<int8_t>(tokens, start, length, out); break;
    case DType::kInt16: copy_as_int64<int16_t>(tokens, start, length, out); break;
    case DType::kInt32: copy_as_int64<int32_t>(tokens, start, length, out); break;
    case DType::kInt64: copy_as_int64<int64_t>(tokens, start, length, out); break;
    case DType::kFloat64: copy_as_int64<double>(tokens, start, length, out); break;
    case DType::kFloat32: copy_as_int64<float>(tokens, start, length, out); break;
    case DType::kUInt16: copy_as_int64<uint16_t>(tokens, start, length, out); break;
    case DType::kUInt32: copy_as_int64<uint32_t>(tokens, start, length, out); break;
    case DType::kUInt64: copy_as_int64<uint64_t>(tokens, start, length, out); break;
    case DType::kFloat16:
    case DType::kBFloat16:  // no .idx code; neither the reader nor the numpy front door makes them
      throw DataError(std::string("internal: ") + dtype_name(dtype) + " is not a token dtype");
  }
}

namespace {

void validate_items(const CorpusView& v, const std::string& what, uint64_t begin, uint64_t end) {
  for (uint64_t i = begin; i < end; ++i) {
    const int64_t s = v.size(i);
    const int64_t p = v.pointer(i);
    if (s < 0) {
      throw DataError(what + ": item " + std::to_string(i) + " has a negative size (" +
                      std::to_string(s) + "); the index is corrupt");
    }
    if (p < 0 || p % v.pointer_unit != 0) {
      std::ostringstream m;
      m << what << ": pointer of item " << i << " is " << p
        << ", not a non-negative multiple of " << v.pointer_unit << "; the index is corrupt";
      throw DataError(m.str());
    }
    const uint64_t o = static_cast<uint64_t>(p / v.pointer_unit);
    if (o + static_cast<uint64_t>(s) > v.num_tokens) {
      std::ostringstream m;
      m << what << ": item " << i << " (at token " << o << ", " << s
        << " tokens) points past the end of the token data (" << v.num_tokens
        << " tokens); the data file is truncated or the index does not belong to it";
      throw DataError(m.str());
    }
  }
}

}  // namespace

void validate_view(const CorpusView& v, const std::string& what) {
  // Large indexes are checked in slices on several threads; parallel_parts
  // rethrows the error of the earliest slice, so the message names the first
  // bad entry, as a sequential scan would.
  constexpr uint64_t kParallelFrom = uint64_t(1) << 20;
  const int parts = v.num_items >= kParallelFrom ? resolve_threads(0) : 1;
  parallel_parts(parts, static_cast<int64_t>(v.num_items), [&](int, int64_t a, int64_t b) {
    validate_items(v, what, static_cast<uint64_t>(a), static_cast<uint64_t>(b));
  });
  if (v.doc_idx_len < 1) {
    throw DataError(what + ": doc_idx is empty (it must start with 0 and end with the item "
                    "count); the index is corrupt");
  }
  const int64_t first = v.doc(0), last = v.doc(v.doc_idx_len - 1);
  if (first != 0 || last < 0 || static_cast<uint64_t>(last) != v.num_items) {
    std::ostringstream m;
    m << what << ": doc_idx must start at 0 and end at the item count " << v.num_items
      << ", but runs from " << first << " to " << last << "; the index is corrupt";
    throw DataError(m.str());
  }
  const int doc_parts = v.doc_idx_len >= kParallelFrom ? resolve_threads(0) : 1;
  parallel_parts(doc_parts, static_cast<int64_t>(v.doc_idx_len), [&](int, int64_t a, int64_t b) {
    for (uint64_t i = std::max<uint64_t>(1, static_cast<uint64_t>(a)); i < static_cast<uint64_t>(b); ++i) {
      if (v.doc(i) < v.doc(i - 1)) {
        throw DataError(what + ": doc_idx decreases at entry " + std::to_string(i) +
                        "; the index is corrupt");
      }
    }
  });
}

namespace {

int64_t max_token_serial(const CorpusView& v, int64_t begin, int64_t end) {
  int64_t best = -1;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t start = v.offset(static_cast<uint64_t>(i));
    const int64_t n = v.size(static_cast<uint64_t>(i));
    switch (v.dtype) {
      case DType::kUInt8: best = max_of<uint8_t>(v.tokens, start, n, best); break;
      case DType::kInt8: best = max_of<int8_t>(v.tokens, start, n, best); break;
      case DType::kInt16: best = max_of<int16_t>(v.tokens, start, n, best); break;
      case DType::kInt32: best = max_of<int32_t>(v.tokens, start, n, best); break;
      case DType::kInt64: best = max_of<int64_t>(v.tokens, start, n, best); break;
      case DType::kFloat64: best = max_of<double>(v.tokens, start, n, best); break;
      case DType::kFloat32: best = max_of<float>(v.tokens, start, n, best); break;
      case DType::kUInt16: best = max_of<uint16_t>(v.tokens, start, n, best); break;
      case DType::kUInt32: best = max_of<uint32_t>(v.tokens, start, n, best); break;
      case DType::kUInt64: best = max_of<uint64_t>(v.tokens, start, n, best); break;
      case DType::kFloat16:
      case DType::kBFloat16:
        throw DataError(std::string("internal: ") + dtype_name(v.dtype) + " is not a token dtype");
    }
  }
  return best;
}

}  // namespace

int64_t max_token(const CorpusView& v, int64_t begin, int64_t end, int threads) {
  const int parts = resolve_threads(threads);
  std::vector<int64_t> best(static_cast<size_t>(parts), -1);
  parallel_parts(parts, end - begin, [&](int p, int64_t a, int64_t b) {
    best[static_cast<size_t>(p)] = max_token_serial(v, begin + a, begin + b);
  });
  return *std::max_element(best.begin(), best.end());
}

MMapCorpus::MMapCorpus(const std::string& prefix)
    : prefix_(prefix), idx_(prefix + ".idx"), bin_(prefix + ".bin") {
  header_ = parse_idx_header(idx_.data(), idx_.size(), idx_.path());
  const size_t itemsize = dtype_size(header_.dtype);
  if (bin_.size() % itemsize != 0) {
    std::ostringstream m;
    m << bin_.path() << ": size " << bin_.size() << " bytes is not a multiple of the "
      << dtype_name(header_.dtype) << " item size " << itemsize
      << "; the data file is truncated or was written with another dtype";
    throw DataError(m.str());
  }
  const uint8_t* p = idx_.data() + kHeaderBytes;
  const uint64_t n = header_.num_items;
  view_.sizes = p;
  view_.pointers = p + 4 * n;
  view_.pointer_unit = static_cast<int64_t>(itemsize);
  view_.doc_idx = p + 12 * n;
  view_.doc_idx_len = header_.doc_idx_len;
  view_.num_items = n;
  view_.dtype = header_.dtype;
  view_.tokens = bin_.data();
  view_.num_tokens = bin_.size() / itemsize;
  validate_view(view_, prefix + ".{idx,bin}");
}

}  // namespace llmpre
