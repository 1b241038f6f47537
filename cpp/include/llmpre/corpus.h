// Token corpora in PaddleNLP / Megatron layouts, read without copying.
//
// A corpus is a sequence of items (token arrays) grouped into documents:
//   sizes[i]     tokens in item i                                   (int32)
//   pointers[i]  where item i starts: bytes in the ".bin/.idx" mmap format,
//                elements in the legacy "_ids.npy/_idx.npz" format    (int64)
//   doc_idx      item index where each document starts, then N      (int64)
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "llmpre/dtype.h"

namespace llmpre {

// Every error about data on disk: the message names the file and the fix.
class DataError : public std::runtime_error {
 public:
  explicit DataError(const std::string& msg) : std::runtime_error(msg) {}
};

// A token file's dtype code is PaddleNLP's (indexed_dataset.py `dtypes`), which
// is the DType with that value (llmpre/dtype.h); float16 and bfloat16 have none.
bool dtype_code_valid(int code);

// A read-only memory mapping of a whole file (empty files map to nothing).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Header of an ".idx" file, parsed and checked (magic, version, dtype, size).
struct IdxHeader {
  uint64_t version = 0;
  DType dtype = DType::kUInt16;
  uint64_t num_items = 0;     // N = len(sizes)
  uint64_t doc_idx_len = 0;   // D = len(doc_idx) = documents + 1
};
IdxHeader parse_idx_header(const uint8_t* data, size_t size, const std::string& path);

// The view every sampler works on. Arrays are owned elsewhere (a MappedFile
// or numpy arrays kept alive by the caller). The mmap layout puts int32 sizes
// at byte 34, so nothing here is assumed aligned: arrays are read through
// memcpy accessors (one unaligned load each on x86-64 / arm64).
struct CorpusView {
  DType dtype = DType::kUInt16;
  const void* tokens = nullptr;       // token buffer
  uint64_t num_tokens = 0;            // elements in the token buffer
  const uint8_t* sizes = nullptr;     // int32[num_items]
  const uint8_t* pointers = nullptr;  // int64[num_items], in units of pointer_unit bytes
  int64_t pointer_unit = 1;           // itemsize for byte pointers, 1 for element offsets
  uint64_t num_items = 0;
  const uint8_t* doc_idx = nullptr;   // int64[doc_idx_len]
  uint64_t doc_idx_len = 0;

  int32_t size(uint64_t i) const { return load<int32_t>(sizes, i); }
  int64_t pointer(uint64_t i) const { return load<int64_t>(pointers, i); }
  int64_t offset(uint64_t i) const { return pointer(i) / pointer_unit; }  // elements
  int64_t doc(uint64_t i) const { return load<int64_t>(doc_idx, i); }

  // Copies tokens [offset, offset+length) of item `item` into `out` as int64.
  void read(int64_t item, int64_t offset, int64_t length, int64_t* out) const;

 private:
  template <typename T>
  static T load(const uint8_t* base, uint64_t i) {
    T v;
    std::memcpy(&v, base + i * sizeof(T), sizeof(T));
    return v;
  }
};

// A `.bin/.idx` corpus opened by memory-mapping both files.
class MMapCorpus {
 public:
  explicit MMapCorpus(const std::string& prefix);
  const CorpusView& view() const { return view_; }
  const std::string& prefix() const { return prefix_; }
  const IdxHeader& header() const { return header_; }
  const MappedFile& idx_file() const { return idx_; }

 private:
  std::string prefix_;
  MappedFile idx_;
  MappedFile bin_;
  IdxHeader header_;
  CorpusView view_;
};

// Checks a view built from arrays (the legacy `_ids.npy/_idx.npz` layout or a
// freshly opened mmap corpus): sizes non-negative, every item inside the token
// buffer, doc_idx starting at 0, non-decreasing and ending at num_items.
// `what` names the files in the error message.
void validate_view(const CorpusView& v, const std::string& what);

// Largest token id in items [begin, end) (-1 when they hold no tokens); used
// to check a corpus against a model's vocabulary before training.
int64_t max_token(const CorpusView& v, int64_t begin, int64_t end, int threads = 1);

}  // namespace llmpre
