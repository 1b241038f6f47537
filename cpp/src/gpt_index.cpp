#include "llmpre/gpt_index.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

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

// doc_idx for `epochs` passes over items [begin, end), shuffled once.
void append_shuffled_epochs(std::vector<int32_t>& out, int64_t begin, int64_t end,
                            int64_t epochs, MT19937& rng) {
  const size_t start = out.size();
  for (int64_t e = 0; e < epochs; ++e) {
    for (int64_t d = begin; d < end; ++d) out.push_back(static_cast<int32_t>(d));
  }
  rng.shuffle(out.data() + start, static_cast<int64_t>(out.size() - start));
}

template <typename T>
void fill_sample_idx(const CorpusView& corpus, const std::vector<int32_t>& doc_idx,
                     int64_t seq_length, int64_t num_samples, std::vector<T>& out) {
  out.assign(2 * static_cast<size_t>(num_samples + 1), 0);
  int64_t doc_idx_index = 0;
  int64_t doc_offset = 0;
  for (int64_t sample = 1; sample <= num_samples; ++sample) {
    int64_t remaining = seq_length + 1;
    while (remaining != 0) {
      const int64_t doc_length = corpus.size(doc_idx[doc_idx_index]) - doc_offset;
      remaining -= doc_length;
      if (remaining <= 0) {
        doc_offset += remaining + doc_length - 1;
        remaining = 0;
      } else {
        ++doc_idx_index;
        doc_offset = 0;
      }
    }
    out[2 * sample] = static_cast<T>(doc_idx_index);
    out[2 * sample + 1] = static_cast<T>(doc_offset);
  }
}

template <typename T>
void fill_shuffle_idx(int64_t first, int64_t total, MT19937& rng, std::vector<T>& out) {
  out.resize(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) out[i] = static_cast<T>(i);
  rng.shuffle(out.data(), first);
  if (first < total) rng.shuffle(out.data() + first, total - first);
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
                         int64_t num_samples, int64_t seq_length, uint32_t seed) {
  if (begin < 0 || end > static_cast<int64_t>(corpus.num_items) || begin >= end) {
    throw DataError("document range [" + std::to_string(begin) + ", " + std::to_string(end) +
                    ") is empty or outside the corpus of " +
                    std::to_string(corpus.num_items) + " items");
  }
  if (end > std::numeric_limits<int32_t>::max()) {
    throw DataError("corpus has more than 2**31-1 items; PaddleNLP's int32 doc_idx cannot "
                    "index it, split the corpus into several prefixes and blend them");
  }
  GptIndex g;
  g.plan = plan_gpt_index(count_tokens(corpus, begin, end), seq_length, num_samples);
  const GptIndexPlan& p = g.plan;
  MT19937 rng(seed);

  const int64_t docs = end - begin;
  g.doc_idx.reserve(static_cast<size_t>(docs * p.num_epochs));
  if (!p.separate_last_epoch) {
    append_shuffled_epochs(g.doc_idx, begin, end, p.num_epochs, rng);
  } else {
    append_shuffled_epochs(g.doc_idx, begin, end, p.num_epochs - 1, rng);
    append_shuffled_epochs(g.doc_idx, begin, end, 1, rng);
  }

  const int64_t n = p.total_samples;
  const int64_t i32max = std::numeric_limits<int32_t>::max();
  // Rows hold a doc_idx position and an offset inside one item (< 2**31).
  g.sample_idx_int64 = static_cast<int64_t>(g.doc_idx.size()) > i32max;
  if (g.sample_idx_int64) {
    fill_sample_idx(corpus, g.doc_idx, seq_length, n, g.sample_idx64);
  } else {
    fill_sample_idx(corpus, g.doc_idx, seq_length, n, g.sample_idx32);
  }

  const int64_t first = p.separate_last_epoch ? p.samples_from_epochs_minus_one : n;
  g.shuffle_idx_int64 = n >= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()) - 1;
  if (g.shuffle_idx_int64) {
    fill_shuffle_idx(first, n, rng, g.shuffle_idx64);
  } else {
    fill_shuffle_idx(first, n, rng, g.shuffle_idx32);
  }
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
