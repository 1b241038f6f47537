// llmpre._core: the framework-free C++ data core, with numpy in and out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "llmpre/blend_index.h"
#include "llmpre/buffer.h"
#include "llmpre/corpus.h"
#include "llmpre/counter_init.h"
#include "llmpre/gpt_index.h"

namespace py = pybind11;
using namespace llmpre;

namespace {

// Hands a vector to numpy without copying; numpy frees it.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

// Hands a Buffer to numpy without copying; numpy frees it.
template <typename T>
py::array_t<T> to_numpy(Buffer<T>&& b, std::vector<py::ssize_t> shape) {
  T* data = b.release();
  if (data == nullptr) return py::array_t<T>(shape);  // an empty array
  py::capsule owner(data, [](void* p) { std::free(p); });
  return py::array_t<T>(shape, data, owner);
}

// One Python-visible corpus type over both on-disk layouts.
class Corpus {
 public:
  static std::shared_ptr<Corpus> open_mmap(const std::string& prefix) {
    auto c = std::make_shared<Corpus>();
    c->mmap_ = std::make_unique<MMapCorpus>(prefix);
    c->view_ = c->mmap_->view();
    c->name_ = prefix;
    return c;
  }

  // Legacy `_ids.npy/_idx.npz`: element offsets are cumsum(lens) computed by the caller.
  static std::shared_ptr<Corpus> from_arrays(py::array tokens, py::array_t<int32_t> sizes,
                                             py::array_t<int64_t> offsets,
                                             py::array_t<int64_t> doc_idx,
                                             const std::string& name) {
    auto c = std::make_shared<Corpus>();
    c->name_ = name;
    auto need = [&](const py::array& a, const char* what) {
      if (a.ndim() != 1 || !(a.flags() & py::array::c_style)) {
        throw DataError(name + ": " + what + " must be a contiguous 1-D array");
      }
    };
    need(tokens, "token ids");
    need(sizes, "lens");
    need(offsets, "offsets");
    need(doc_idx, "docs");
    if (sizes.shape(0) != offsets.shape(0)) {
      throw DataError(name + ": lens and offsets differ in length");
    }
    const std::string kind(1, tokens.dtype().kind());
    const auto isz = tokens.dtype().itemsize();
    DType dt;
    if (kind == "u" && isz == 1) dt = DType::kUInt8;
    else if (kind == "i" && isz == 1) dt = DType::kInt8;
    else if (kind == "i" && isz == 2) dt = DType::kInt16;
    else if (kind == "u" && isz == 2) dt = DType::kUInt16;
    else if (kind == "i" && isz == 4) dt = DType::kInt32;
    else if (kind == "u" && isz == 4) dt = DType::kUInt32;
    else if (kind == "i" && isz == 8) dt = DType::kInt64;
    else if (kind == "u" && isz == 8) dt = DType::kUInt64;
    else if (kind == "f" && isz == 4) dt = DType::kFloat32;
    else if (kind == "f" && isz == 8) dt = DType::kFloat64;
    else throw DataError(name + ": token ids have an unsupported dtype");
    c->keep_ = {tokens, sizes, offsets, doc_idx};
    c->view_.dtype = dt;
    c->view_.tokens = tokens.data();
    c->view_.num_tokens = static_cast<uint64_t>(tokens.shape(0));
    c->view_.sizes = reinterpret_cast<const uint8_t*>(sizes.data());
    c->view_.pointers = reinterpret_cast<const uint8_t*>(offsets.data());
    c->view_.pointer_unit = 1;
    c->view_.num_items = static_cast<uint64_t>(sizes.shape(0));
    c->view_.doc_idx = reinterpret_cast<const uint8_t*>(doc_idx.data());
    c->view_.doc_idx_len = static_cast<uint64_t>(doc_idx.shape(0));
    validate_view(c->view_, name);
    return c;
  }

  const CorpusView& view() const { return view_; }
  const std::string& name() const { return name_; }
  bool is_mmap() const { return mmap_ != nullptr; }

  // Zero-copy numpy views into the corpus; `self` keeps the mapping alive.
  py::array raw_view(py::object self, const char* dtype, const uint8_t* ptr,
                     py::ssize_t n) const {
    return py::array(py::dtype(dtype), {n}, {}, ptr, self);
  }

 private:
  std::unique_ptr<MMapCorpus> mmap_;
  std::vector<py::object> keep_;
  CorpusView view_;
  std::string name_;
};

IndexArray as_index(const py::array& a, const char* what) {
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(what) + " must be C-contiguous");
  }
  IndexArray ia;
  ia.data = a.data();
  ia.length = a.size();
  const char kind = a.dtype().kind();
  const auto isz = a.dtype().itemsize();
  if (kind == 'i' && isz == 4) ia.kind = IndexArray::kInt32;
  else if (kind == 'u' && isz == 4) ia.kind = IndexArray::kUInt32;
  else if (kind == 'i' && isz == 8) ia.kind = IndexArray::kInt64;
  else throw std::invalid_argument(std::string(what) + " must be int32, uint32 or int64");
  return ia;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "llmpre's C++ data core: mmap corpora and the GPT sample index";
  py::register_exception<DataError>(m, "DataError", PyExc_ValueError);

  py::class_<Corpus, std::shared_ptr<Corpus>>(m, "Corpus")
      .def_static("open_mmap", &Corpus::open_mmap, py::arg("prefix"),
                  "Open PREFIX.idx + PREFIX.bin (checks magic, version, dtype, sizes).")
      .def_static("from_arrays", &Corpus::from_arrays, py::arg("tokens"), py::arg("sizes"),
                  py::arg("offsets"), py::arg("doc_idx"), py::arg("name"),
                  "A corpus over in-memory arrays (legacy _ids.npy/_idx.npz layout).")
      .def_property_readonly("name", &Corpus::name)
      .def_property_readonly("is_mmap", &Corpus::is_mmap)
      .def_property_readonly("dtype",
                             [](const Corpus& c) { return std::string(dtype_name(c.view().dtype)); })
      .def_property_readonly("dtype_code",
                             [](const Corpus& c) { return static_cast<int>(c.view().dtype); })
      .def_property_readonly("num_items", [](const Corpus& c) { return c.view().num_items; })
      .def_property_readonly("num_docs", [](const Corpus& c) { return c.view().doc_idx_len - 1; })
      .def_property_readonly("num_tokens", [](const Corpus& c) { return c.view().num_tokens; })
      .def_property_readonly("pointer_unit", [](const Corpus& c) { return c.view().pointer_unit; })
      .def_property_readonly("sizes",
                             [](py::object self) {
                               const Corpus& c = self.cast<const Corpus&>();
                               return c.raw_view(self, "<i4", c.view().sizes,
                                                 static_cast<py::ssize_t>(c.view().num_items));
                             })
      .def_property_readonly("pointers",
                             [](py::object self) {
                               const Corpus& c = self.cast<const Corpus&>();
                               return c.raw_view(self, "<i8", c.view().pointers,
                                                 static_cast<py::ssize_t>(c.view().num_items));
                             },
                             "Item starts as stored: bytes (mmap) or elements (legacy).")
      .def_property_readonly("doc_idx",
                             [](py::object self) {
                               const Corpus& c = self.cast<const Corpus&>();
                               return c.raw_view(self, "<i8", c.view().doc_idx,
                                                 static_cast<py::ssize_t>(c.view().doc_idx_len));
                             })
      .def(
          "read",
          [](const Corpus& c, int64_t item, int64_t offset, int64_t length) {
            const CorpusView& v = c.view();
            if (item < 0 || static_cast<uint64_t>(item) >= v.num_items) {
              throw py::index_error("item " + std::to_string(item) + " out of range [0, " +
                                    std::to_string(v.num_items) + ")");
            }
            const int64_t size = v.size(static_cast<uint64_t>(item));
            if (length < 0) length = size - offset;
            if (offset < 0 || length < 0 || offset + length > size) {
              throw py::index_error("tokens [" + std::to_string(offset) + ", " +
                                    std::to_string(offset + length) + ") outside item " +
                                    std::to_string(item) + " of " + std::to_string(size) +
                                    " tokens");
            }
            std::vector<int64_t> out(static_cast<size_t>(length));
            v.read(item, offset, length, out.data());
            return to_numpy(std::move(out), {static_cast<py::ssize_t>(length)});
          },
          py::arg("item"), py::arg("offset") = 0, py::arg("length") = -1,
          "Tokens of one item as int64 (PaddleNLP's get(idx, offset, length)).")
      .def(
          "count_tokens",
          [](const Corpus& c, int64_t begin, int64_t end) {
            const auto n = static_cast<int64_t>(c.view().num_items);
            if (end < 0) end = n;
            if (begin < 0 || begin > end || end > n) {
              throw py::index_error("item range outside the corpus");
            }
            return count_tokens(c.view(), begin, end);
          },
          py::arg("begin") = 0, py::arg("end") = -1, "Tokens in items [begin, end).")
      .def(
          "max_token",
          [](const Corpus& c, int64_t begin, int64_t end, int threads) {
            const auto n = static_cast<int64_t>(c.view().num_items);
            if (end < 0) end = n;
            if (begin < 0 || begin > end || end > n) {
              throw py::index_error("item range outside the corpus");
            }
            py::gil_scoped_release nogil;
            return max_token(c.view(), begin, end, threads);
          },
          py::arg("begin") = 0, py::arg("end") = -1, py::arg("threads") = 0,
          "Largest token id in items [begin, end) (-1 if they hold no tokens); "
          "threads=0 uses all cores (at most 8).");

  m.def("split_ranges", &split_ranges, py::arg("split"), py::arg("size"),
        "Item boundaries [0, a, b, size] for a split string like '949,50,1'.");

  m.def(
      "plan_gpt_index",
      [](int64_t tokens_per_epoch, int64_t seq_length, int64_t num_samples) {
        GptIndexPlan p = plan_gpt_index(tokens_per_epoch, seq_length, num_samples);
        py::dict d;
        d["tokens_per_epoch"] = p.tokens_per_epoch;
        d["num_epochs"] = p.num_epochs;
        d["separate_last_epoch"] = p.separate_last_epoch;
        d["samples_from_epochs_minus_one"] =
            p.num_epochs > 1 ? py::object(py::int_(p.samples_from_epochs_minus_one)) : py::none();
        d["total_samples"] = p.total_samples;
        return d;
      },
      py::arg("tokens_per_epoch"), py::arg("seq_length"), py::arg("num_samples"));

  m.def(
      "build_gpt_index",
      [](const Corpus& c, int64_t begin, int64_t end, int64_t num_samples, int64_t seq_length,
         uint32_t seed, int threads) {
        GptIndex g;
        {
          py::gil_scoped_release nogil;
          g = build_gpt_index(c.view(), begin, end, num_samples, seq_length, seed, threads);
        }
        py::dict d;
        d["tokens_per_epoch"] = g.plan.tokens_per_epoch;
        d["num_epochs"] = g.plan.num_epochs;
        d["separate_last_epoch"] = g.plan.separate_last_epoch;
        d["samples_from_epochs_minus_one"] =
            g.plan.num_epochs > 1 ? py::object(py::int_(g.plan.samples_from_epochs_minus_one))
                                  : py::none();
        d["total_samples"] = g.plan.total_samples;
        py::dict timings;
        for (const auto& kv : g.timings) timings[py::str(kv.first)] = kv.second;
        d["timings"] = timings;
        const auto n_doc = static_cast<py::ssize_t>(g.doc_idx.size());
        d["doc_idx"] = to_numpy(std::move(g.doc_idx), {n_doc});
        const auto rows = static_cast<py::ssize_t>(g.plan.total_samples + 1);
        if (g.sample_idx_int64) {
          d["sample_idx"] = to_numpy(std::move(g.sample_idx64), {rows, 2});
        } else {
          d["sample_idx"] = to_numpy(std::move(g.sample_idx32), {rows, 2});
        }
        const auto n = static_cast<py::ssize_t>(g.plan.total_samples);
        if (g.shuffle_idx_int64) {
          d["shuffle_idx"] = to_numpy(std::move(g.shuffle_idx64), {n});
        } else {
          d["shuffle_idx"] = to_numpy(std::move(g.shuffle_idx32), {n});
        }
        return d;
      },
      py::arg("corpus"), py::arg("begin"), py::arg("end"), py::arg("num_samples"),
      py::arg("seq_length"), py::arg("seed"), py::arg("threads") = 0,
      "doc_idx, sample_idx and shuffle_idx for items [begin, end), bit-identical to PaddleNLP "
      "(threads=0: all cores, at most 8; the result does not depend on it).");

  m.def(
      "build_blend_index",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> weights, int64_t size) {
        if (weights.ndim() != 1) throw DataError("blend weights must be a 1-D array");
        BlendIndex b;
        {
          py::gil_scoped_release nogil;
          b = build_blend_index(weights.data(), weights.shape(0), size);
        }
        py::dict d;
        d["dataset_index"] = to_numpy(std::move(b.dataset_index), {static_cast<py::ssize_t>(size)});
        d["dataset_sample_index"] =
            to_numpy(std::move(b.dataset_sample_index), {static_cast<py::ssize_t>(size)});
        d["taken"] = to_numpy(std::move(b.taken), {static_cast<py::ssize_t>(weights.shape(0))});
        return d;
      },
      py::arg("weights"), py::arg("size"),
      "PaddleNLP's greedy blending indices: int16 dataset_index, int64 dataset_sample_index "
      "and the samples taken from each dataset.");

  m.def(
      "gather_samples",
      [](const Corpus& c, py::array doc_idx, py::array sample_idx, py::array shuffle_idx,
         py::array_t<int64_t, py::array::c_style | py::array::forcecast> indices,
         int64_t seq_length) {
        IndexArray d = as_index(doc_idx, "doc_idx");
        IndexArray s = as_index(sample_idx, "sample_idx");
        IndexArray sh = as_index(shuffle_idx, "shuffle_idx");
        const int64_t n = indices.size();
        std::vector<int64_t> out(static_cast<size_t>(n * (seq_length + 1)));
        {
          py::gil_scoped_release nogil;
          gather_samples(c.view(), d, s, sh, indices.data(), n, seq_length, out.data());
        }
        return to_numpy(std::move(out), {static_cast<py::ssize_t>(n),
                                         static_cast<py::ssize_t>(seq_length + 1)});
      },
      py::arg("corpus"), py::arg("doc_idx"), py::arg("sample_idx"), py::arg("shuffle_idx"),
      py::arg("indices"), py::arg("seq_length"),
      "Samples at dataset positions `indices` as int64 [n, seq_length+1].");

  m.def(
      "counter_normal",
      [](uint64_t key, std::vector<int64_t> shape, std::vector<std::pair<int64_t, int64_t>> region,
         double std_dev, int threads) {
        std::vector<py::ssize_t> dims;
        for (auto& r : region) dims.push_back(static_cast<py::ssize_t>(r.second - r.first));
        py::array_t<float> out(dims);
        float* data = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          counter_normal(key, shape, region, std_dev, data, threads);
        }
        return out;
      },
      py::arg("key"), py::arg("shape"), py::arg("region"), py::arg("std"), py::arg("threads") = 0,
      "float32 N(0, std^2) values of `region` ((start, stop) per axis) of a parameter of `shape` "
      "under counter key `key` (llmpre.models.init's scheme; any region computable alone).");
}
