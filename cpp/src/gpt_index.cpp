#include "llmpre/gpt_index.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <thread>

#include "llmpre/numpy_random.h"

namespace llmpre {

namespace {

double parse_split_number(const std::string& text, const std::string& whole) {
  const char* begin = text.c_str();
  char* end = nullptr;
  double v = std::strtod(begin, &end);
  while (end != nullptr && (*end == ' ' || *end == '\t')) ++end;
  if (end == begin || end == nullptr || *end != '\0' || !std::isfinite(v) || v < 0) {
    throw DataError("split '" + whole + "': '" + text +
                    "' is not a non-negative number; write it like 949,50,1");
  }
  return v;
}

// One entry of doc_idx while it is being shuffled: the item and its size
// travel together, so filling sample_idx afterwards reads sizes in order
// instead of gathering them at random (a swap moves one cache line either way).
struct DocEntry {
  int32_t item;
  int32_t size;
};

// A stretch of doc_idx shuffled on its own: `len` entries from `start`.
struct Segment {
  int64_t start;
  int64_t len;
};

constexpr uint64_t kChunk = uint64_t(1) << 16;  // draws handed over at a time
constexpr uint64_t kMaxFastLen = uint64_t(1) << 32;  // shuffle_draws needs i < 2**32

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

uint64_t draws_of(int64_t len) { return len > 1 ? static_cast<uint64_t>(len - 1) : 0; }

// Fisher-Yates of x[0, len) in chunks: draw, then swap with prefetching.
template <typename T>
void shuffle_in_chunks(MT19937& rng, T* x, int64_t len, uint32_t* scratch) {
  const uint64_t total = draws_of(len);
  if (static_cast<uint64_t>(len) > kMaxFastLen) {
    rng.shuffle(x, len);  // 64-bit draws: the plain loop (never met in practice)
    return;
  }
  for (uint64_t done = 0; done < total; done += kChunk) {
    const uint64_t count = std::min(kChunk, total - done);
    const uint64_t top = static_cast<uint64_t>(len - 1) - done;
    rng.shuffle_draws(top, count, scratch);
    apply_shuffle(x, top, count, scratch);
  }
}

// The draws of every doc_idx segment, in the generator's order, published
// chunk by chunk to the thread that applies them.
class DocDraws {
 public:
  explicit DocDraws(const std::vector<Segment>& segs) {
    uint64_t total = 0;
    for (const Segment& s : segs) total += draws_of(s.len);
    js_ = Buffer<uint32_t>(total);
  }
  void generate(MT19937& rng, const std::vector<Segment>& segs) {
    uint64_t offset = 0;
    for (const Segment& s : segs) {
      const uint64_t total = draws_of(s.len);
      for (uint64_t done = 0; done < total; done += kChunk) {
        const uint64_t count = std::min(kChunk, total - done);
        rng.shuffle_draws(static_cast<uint64_t>(s.len - 1) - done, count, js_.data() + offset);
        offset += count;
        ready_.store(offset, std::memory_order_release);
      }
    }
  }
  void fail() { failed_.store(true, std::memory_order_release); }
  // Waits until draws [0, upto) exist; false if the generator failed.
  bool wait(uint64_t upto) const {
    while (ready_.load(std::memory_order_acquire) < upto) {
      if (failed_.load(std::memory_order_acquire)) return false;
      std::this_thread::yield();
    }
    return true;
  }
  const uint32_t* data() const { return js_.data(); }

 private:
  Buffer<uint32_t> js_;
  std::atomic<uint64_t> ready_{0};
  std::atomic<bool> failed_{false};
};

// Entries [a, b) of the segments: `docs` items from `begin`, tiled.
void fill_entries(const CorpusView& corpus, int64_t begin, int64_t docs,
                  const std::vector<Segment>& segs, DocEntry* e, int64_t a, int64_t b) {
  for (const Segment& s : segs) {
    const int64_t lo = std::max(a, s.start), hi = std::min(b, s.start + s.len);
    if (lo >= hi) continue;
    int64_t d = (lo - s.start) % docs;
    for (int64_t q = lo; q < hi; ++q) {
      e[q].item = static_cast<int32_t>(begin + d);
      e[q].size = corpus.size(static_cast<uint64_t>(begin + d));
      if (++d == docs) d = 0;
    }
  }
}

// Applies the published draws to each segment, in the generator's order.
void apply_doc_draws(const DocDraws& draws, const std::vector<Segment>& segs, DocEntry* e) {
  uint64_t offset = 0;
  for (const Segment& s : segs) {
    const uint64_t total = draws_of(s.len);
    for (uint64_t done = 0; done < total; done += kChunk) {
      const uint64_t count = std::min(kChunk, total - done);
      if (!draws.wait(offset + count)) return;  // the generator's error is rethrown
      apply_shuffle(e + s.start, static_cast<uint64_t>(s.len - 1) - done, count,
                    draws.data() + offset);
      offset += count;
    }
  }
}

// doc_idx from the shuffled entries, and sample_idx rows 0..n: row k is the
// position p = k*seq_length of the token stream written as (doc_idx position
// q, offset p - start of q), with the q whose tokens hold p (the last token
// of a document when p ends it exactly); row 0 is (0, 0). This is what
// PaddleNLP's document walk (helpers.cpp build_sample_idx) records.
template <typename S>
void fill_doc_and_sample_idx(const DocEntry* e, int64_t n_doc, int64_t seq_length,
                             int64_t n, int threads, int32_t* doc_idx, S* rows) {
  const int parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n_doc)));
  std::vector<int64_t> start(static_cast<size_t>(parts) + 1, 0);
  parallel_parts(parts, n_doc, [&](int p, int64_t a, int64_t b) {
    int64_t sum = 0;
    for (int64_t q = a; q < b; ++q) {
      doc_idx[q] = e[q].item;
      sum += e[q].size;
    }
    start[static_cast<size_t>(p) + 1] = sum;
  });
  for (int p = 0; p < parts; ++p) start[p + 1] += start[p];
  rows[0] = 0;
  rows[1] = 0;
  parallel_parts(parts, n_doc, [&](int p, int64_t a, int64_t b) {
    int64_t lo = start[static_cast<size_t>(p)];
    int64_t k = std::max<int64_t>(1, (lo + seq_length - 1) / seq_length);
    for (int64_t q = a; q < b && k <= n; ++q) {
      const int64_t hi = lo + e[q].size;
      for (; k <= n && k * seq_length < hi; ++k) {
        rows[2 * k] = static_cast<S>(q);
        rows[2 * k + 1] = static_cast<S>(k * seq_length - lo);
      }
      lo = hi;
    }
  });
}

template <typename T>
Buffer<T> shuffled_range(MT19937& rng, int64_t first, int64_t total) {
  Buffer<T> out(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) out[i] = static_cast<T>(i);
  Buffer<uint32_t> scratch(kChunk);
  shuffle_in_chunks(rng, out.data(), first, scratch.data());
  if (first < total) shuffle_in_chunks(rng, out.data() + first, total - first, scratch.data());
  return out;
}

}  // namespace

std::array<int64_t, 4> split_ranges(const std::string& split, int64_t size) {
  char sep = 0;
  if (split.find(',') != std::string::npos) {
    sep = ',';
  } else if (split.find('/') != std::string::npos) {
    sep = '/';
  }
  std::vector<double> parts;
  if (sep == 0) {
    parts.push_back(parse_split_number(split, split));
  } else {
    std::string token;
    std::istringstream in(split);
    while (std::getline(in, token, sep)) parts.push_back(parse_split_number(token, split));
    if (!split.empty() && split.back() == sep) parts.push_back(parse_split_number("", split));
  }
  while (parts.size() < 3) parts.push_back(0.0);
  parts.resize(3);
  const double total = parts[0] + parts[1] + parts[2];
  if (!(total > 0.0)) {
    throw DataError("split '" + split + "' sums to zero; give at least one positive part");
  }
  std::array<int64_t, 4> idx{0, 0, 0, 0};
  for (int i = 0; i < 3; ++i) {
    const double share = parts[i] / total;
    // Python's round(): nearest, ties to even (the default FP rounding mode).
    idx[i + 1] = idx[i] + static_cast<int64_t>(std::nearbyint(share * static_cast<double>(size)));
  }
  const int64_t diff = idx[3] - size;
  for (int i = 1; i < 4; ++i) idx[i] -= diff;
  return idx;
}

GptIndexPlan plan_gpt_index(int64_t tokens_per_epoch, int64_t seq_length, int64_t num_samples) {
  if (seq_length <= 0) throw DataError("seq_length must be positive");
  if (num_samples < 0) throw DataError("num_samples must be >= 0");
  if (tokens_per_epoch <= 0) {
    throw DataError("the split holds no tokens, so no sample can be drawn from it; "
                    "change the split or use a larger corpus");
  }
  GptIndexPlan p;
  p.tokens_per_epoch = tokens_per_epoch;
  int64_t total_tokens = 0;
  while (true) {
    p.num_epochs += 1;
    total_tokens += tokens_per_epoch;
    if ((total_tokens - 1) / seq_length >= num_samples) break;
  }
  p.total_samples = (p.num_epochs * tokens_per_epoch - 1) / seq_length;
  if (p.num_epochs > 1) {
    p.samples_from_epochs_minus_one = ((p.num_epochs - 1) * tokens_per_epoch - 1) / seq_length;
    const int64_t last_epoch_samples = num_samples - p.samples_from_epochs_minus_one;
    const int64_t per_epoch = (tokens_per_epoch - 1) / seq_length;
    // int(0.80 * per_epoch) in Python: float product, truncated.
    const int64_t threshold = static_cast<int64_t>(0.80 * static_cast<double>(per_epoch));
    p.separate_last_epoch = last_epoch_samples < threshold;
  }
  return p;
}

int64_t count_tokens(const CorpusView& corpus, int64_t begin, int64_t end) {
  int64_t total = 0;
  for (int64_t i = begin; i < end; ++i) total += corpus.size(static_cast<uint64_t>(i));
  return total;
}

GptIndex build_gpt_index(const CorpusView& corpus, int64_t begin, int64_t end,
                         int64_t num_samples, int64_t seq_length, uint32_t seed,
                         int threads) {
  if (begin < 0 || end > static_cast<int64_t>(corpus.num_items) || begin >= end) {
    throw DataError("document range [" + std::to_string(begin) + ", " + std::to_string(end) +
                    ") is empty or outside the corpus of " +
                    std::to_string(corpus.num_items) + " items");
  }
  if (end > std::numeric_limits<int32_t>::max()) {
    throw DataError("corpus has more than 2**31-1 items; PaddleNLP's int32 doc_idx cannot "
                    "index it, split the corpus into several prefixes and blend them");
  }
  const int workers = resolve_threads(threads);
  GptIndex g;
  g.plan = plan_gpt_index(count_tokens(corpus, begin, end), seq_length, num_samples);
  const GptIndexPlan& p = g.plan;
  const int64_t docs = end - begin;
  const int64_t n_doc = docs * p.num_epochs;
  std::vector<Segment> segs;
  if (p.separate_last_epoch) {
    segs = {{0, docs * (p.num_epochs - 1)}, {docs * (p.num_epochs - 1), docs}};
  } else {
    segs = {{0, n_doc}};
  }
  const int64_t n = p.total_samples;
  const int64_t first = p.separate_last_epoch ? p.samples_from_epochs_minus_one : n;
  g.shuffle_idx_int64 = n >= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()) - 1;
  g.sample_idx_int64 = n_doc > std::numeric_limits<int32_t>::max();

  MT19937 rng(seed);
  const auto t_start = std::chrono::steady_clock::now();
  double t_gen = 0;
  Buffer<DocEntry> entries(static_cast<size_t>(n_doc));
  bool fast = true;
  for (const Segment& s : segs) fast = fast && static_cast<uint64_t>(s.len) <= kMaxFastLen;

  // The random stream is consumed in PaddleNLP's order whatever the threads:
  // doc_idx segments, then the two parts of shuffle_idx.
  auto shuffle_part = [&] {
    if (g.shuffle_idx_int64) {
      g.shuffle_idx64 = shuffled_range<int64_t>(rng, first, n);
    } else {
      g.shuffle_idx32 = shuffled_range<uint32_t>(rng, first, n);
    }
  };
  if (!fast) {
    fill_entries(corpus, begin, docs, segs, entries.data(), 0, n_doc);
    for (const Segment& s : segs) rng.shuffle(entries.data() + s.start, s.len);
    shuffle_part();
  } else if (workers == 1) {
    DocDraws draws(segs);
    draws.generate(rng, segs);
    fill_entries(corpus, begin, docs, segs, entries.data(), 0, n_doc);
    apply_doc_draws(draws, segs, entries.data());
    shuffle_part();
  } else {
    // The generator thread draws doc_idx's numbers, then builds shuffle_idx;
    // this thread fills doc_idx and swaps as the draws arrive.
    DocDraws draws(segs);
    std::exception_ptr gen_error;
    std::thread gen([&] {
      try {
        draws.generate(rng, segs);
        shuffle_part();
        t_gen = seconds_since(t_start);
      } catch (...) {
        gen_error = std::current_exception();
        draws.fail();
      }
    });
    try {
      parallel_parts(std::max(1, workers - 1), n_doc, [&](int, int64_t a, int64_t b) {
        fill_entries(corpus, begin, docs, segs, entries.data(), a, b);
      });
      apply_doc_draws(draws, segs, entries.data());
    } catch (...) {
      draws.fail();
      gen.join();
      throw;
    }
    gen.join();
    if (gen_error) std::rethrow_exception(gen_error);
  }

  const double t_docs = seconds_since(t_start);
  g.doc_idx = Buffer<int32_t>(static_cast<size_t>(n_doc));
  const size_t rows = 2 * static_cast<size_t>(n + 1);
  if (g.sample_idx_int64) {
    g.sample_idx64 = Buffer<int64_t>(rows);
    fill_doc_and_sample_idx(entries.data(), n_doc, seq_length, n, workers, g.doc_idx.data(),
                            g.sample_idx64.data());
  } else {
    g.sample_idx32 = Buffer<int32_t>(rows);
    fill_doc_and_sample_idx(entries.data(), n_doc, seq_length, n, workers, g.doc_idx.data(),
                            g.sample_idx32.data());
  }
  g.timings = {{"draws+shuffle_idx", t_gen},
               {"doc_idx", t_docs},
               {"sample_idx", seconds_since(t_start) - t_docs}};
  return g;
}

void gather_samples(const CorpusView& corpus, const IndexArray& doc_idx,
                    const IndexArray& sample_idx, const IndexArray& shuffle_idx,
                    const int64_t* indices, int64_t n, int64_t seq_length, int64_t* out) {
  const int64_t len = shuffle_idx.length;
  const int64_t width = seq_length + 1;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t idx = indices[k];
    if (idx < 0 || idx >= len) {
      throw std::out_of_range("sample index " + std::to_string(idx) +
                              " is outside the dataset of " + std::to_string(len) + " samples");
    }
    const int64_t s = shuffle_idx.get(idx);
    if (s < 0 || 2 * (s + 1) + 1 >= sample_idx.length) {
      throw DataError("shuffle_idx entry " + std::to_string(s) +
                      " is outside sample_idx; the index cache is corrupt, delete it");
    }
    const int64_t f_doc = sample_idx.get(2 * s), f_off = sample_idx.get(2 * s + 1);
    const int64_t l_doc = sample_idx.get(2 * s + 2), l_off = sample_idx.get(2 * s + 3);
    if (f_doc < 0 || l_doc >= doc_idx.length || f_doc > l_doc) {
      throw DataError("sample_idx rows point outside doc_idx; the index cache is corrupt, "
                      "delete it");
    }
    int64_t* row = out + k * width;
    int64_t filled = 0;
    auto item_at = [&](int64_t pos_in_doc_idx) {
      const int64_t item = doc_idx.get(pos_in_doc_idx);
      if (item < 0 || static_cast<uint64_t>(item) >= corpus.num_items) {
        throw DataError("doc_idx names item " + std::to_string(item) + ", but the corpus has " +
                        std::to_string(corpus.num_items) +
                        "; the index cache belongs to other data, delete it");
      }
      return item;
    };
    auto take = [&](int64_t item, int64_t offset, int64_t length) {
      if (offset < 0 || length < 0 || offset + length > corpus.size(static_cast<uint64_t>(item)) ||
          filled + length > width) {
        throw DataError("the sample index does not match the corpus (an item is shorter than "
                        "the index says); the index cache belongs to other data, delete it");
      }
      corpus.read(item, offset, length, row + filled);
      filled += length;
    };
    if (f_doc == l_doc) {
      take(item_at(f_doc), f_off, l_off - f_off + 1);
    } else {
      const int64_t first = item_at(f_doc);
      take(first, f_off, corpus.size(static_cast<uint64_t>(first)) - f_off);
      for (int64_t d = f_doc + 1; d < l_doc; ++d) {
        const int64_t item = item_at(d);
        take(item, 0, corpus.size(static_cast<uint64_t>(item)));
      }
      take(item_at(l_doc), 0, l_off + 1);
    }
    if (filled != width) {
      throw DataError("a sample has " + std::to_string(filled) + " tokens instead of " +
                      std::to_string(width) +
                      "; the index cache was built for another seq_length, delete it");
    }
  }
}

}  // namespace llmpre
