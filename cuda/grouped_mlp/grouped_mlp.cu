// The grouped expert MLP (grouped_mlp_cuda.h) as a fixed sequence of launches of the grouped
// GEMMs (cuda/grouped_gemm), the row moves (cuda/moe_rows) and SwiGLU (cuda/swiglu), with its
// intermediates carved out of one workspace.
#include "grouped_mlp/grouped_mlp_cuda.h"

#include "common/kernel_args.h"
#include "grouped_gemm/grouped_gemm_cuda.h"
#include "moe_rows/moe_rows_cuda.h"
#include "swiglu/swiglu_cuda.h"

namespace llmpre {
namespace cuda {
namespace {

constexpr size_t kBf16 = 2;

size_t round256(size_t x) { return (x + 255) / 256 * 256; }

// The workspace, in order: GEMM setup arrays, a (gathered rows), h; backward also dh, dgate,
// dup, da (with an index) and the token starts.
struct Scratch {
  void* gemm = nullptr;
  size_t gemm_bytes = 0;
  void* a = nullptr;
  void* h = nullptr;
  void* dh = nullptr;
  void* dgate = nullptr;
  void* dup = nullptr;
  void* da = nullptr;
  int64_t* starts = nullptr;
  size_t total = 0;
};

Scratch layout(const GroupedMlpParams& p, bool backward, void* base) {
  char* at = static_cast<char*>(base);
  Scratch s;
  auto take = [&](size_t bytes) {
    void* here = at ? at + s.total : nullptr;
    s.total += round256(bytes);
    return here;
  };
  const bool gathered = p.index != nullptr;
  const size_t rows_hidden = size_t(p.rows) * size_t(p.hidden) * kBf16;
  const size_t rows_inter = size_t(p.rows) * size_t(p.inter) * kBf16;
  s.gemm_bytes = grouped_gemm_workspace_bytes(p.experts);
  s.gemm = take(s.gemm_bytes);
  if (gathered) s.a = take(rows_hidden);
  s.h = take(rows_inter);
  if (backward) {
    s.dh = take(rows_inter);
    s.dgate = take(rows_inter);
    s.dup = take(rows_inter);
    if (gathered) {
      s.da = take(rows_hidden);
      s.starts = static_cast<int64_t*>(take(size_t(p.tokens + 1) * sizeof(int64_t)));
    }
  }
  return s;
}

void check(const GroupedMlpParams& p, bool backward) {
  const char* fn = backward ? "grouped_mlp_backward" : "grouped_mlp_forward";
  LLMPRE_REQUIRE(p.tokens >= 0 && p.rows >= 0 && p.experts > 0 && p.hidden > 0 && p.inter > 0, fn,
                 ": need tokens, rows >= 0 and experts, hidden, inter > 0, got tokens ", p.tokens, ", rows ", p.rows,
                 ", experts ", p.experts, ", hidden ", p.hidden, ", inter ", p.inter);
  LLMPRE_REQUIRE(p.index || p.rows == p.tokens, fn, ": without an index rows must equal tokens, got rows ", p.rows,
                 ", tokens ", p.tokens);
  LLMPRE_REQUIRE(p.hidden % 8 == 0 && p.inter % 8 == 0, fn, ": hidden and inter must be multiples of 8 (128-bit "
                 "bf16 loads), got hidden ", p.hidden, ", inter ", p.inter);
  LLMPRE_REQUIRE(p.offsets && p.w_gate && p.w_up && p.w_down && p.gate && p.up, fn,
                 ": offsets, w_gate, w_up, w_down, gate and up must be device buffers");
  LLMPRE_REQUIRE(p.rows == 0 || p.x, fn, ": x must be a device buffer");
  if (backward) {
    LLMPRE_REQUIRE(p.dout && p.dw_gate && p.dw_up && p.dw_down && (p.tokens == 0 || p.dx), fn,
                   ": dout, dx, dw_gate, dw_up and dw_down must be device buffers");
    LLMPRE_REQUIRE(!p.index || p.rows == 0 || (p.index_sorted && p.perm), fn,
                   ": with an index the backward needs index_sorted and perm (a stable sort of index)");
  } else {
    LLMPRE_REQUIRE(p.out, fn, ": out must be a device buffer");
  }
  LLMPRE_REQUIRE(aligned16(p.workspace), fn, ": workspace must be 16-byte aligned");
  const size_t need = grouped_mlp_workspace_bytes(p, backward);
  LLMPRE_REQUIRE(p.workspace && p.workspace_bytes >= need, fn, ": workspace has ", p.workspace_bytes,
                 " bytes, needs grouped_mlp_workspace_bytes = ", need);
}

struct Launcher {
  const GroupedMlpParams& p;
  const Scratch& s;
  cudaStream_t stream;

  // c [rows, n] = a @ b[e] (b [k, n]) or a @ b[e]^T (b [n, k]), per expert's rows.
  void gemm(const void* a, const void* const* b, void* c, int64_t n, int64_t k, bool transposed,
            bool accumulate) const {
    GroupedGemmParams g;
    g.rows = p.rows;
    g.n = n;
    g.k = k;
    g.experts = p.experts;
    g.a = a;
    g.b = b;
    g.c = c;
    g.offsets = p.offsets;
    g.workspace = s.gemm;
    g.workspace_bytes = s.gemm_bytes;
    g.b_transposed = transposed;
    g.accumulate = accumulate;
    grouped_gemm_bf16(g, stream);
  }

  // c[e] [m, n] = a_e^T b_e.
  void weight_grad(const void* a, const void* b, void* const* c, int64_t m, int64_t n) const {
    GroupedWeightGradParams g;
    g.rows = p.rows;
    g.m = m;
    g.n = n;
    g.experts = p.experts;
    g.a = a;
    g.b = b;
    g.c = c;
    g.offsets = p.offsets;
    g.workspace = s.gemm;
    g.workspace_bytes = s.gemm_bytes;
    grouped_gemm_weight_grad_bf16(g, stream);
  }

  // The rows the GEMMs read: x's own, or gathered into the workspace.
  const void* rows() const {
    if (!p.index) return p.x;
    MoeRowsParams m;
    m.rows = p.rows;
    m.tokens = p.tokens;
    m.width = p.hidden;
    m.dtype = DType::kBFloat16;
    m.src = p.x;
    m.index = p.index;
    m.dst = s.a;
    gather_rows(m, stream);
    return s.a;
  }

  void swiglu(void* h) const {
    SwiGluParams w;
    w.n = p.rows * p.inter;
    w.dtype = DType::kBFloat16;
    w.gate = p.gate;
    w.up = p.up;
    w.out = h;
    swiglu_forward(w, stream);
  }
};

}  // namespace

size_t grouped_mlp_workspace_bytes(const GroupedMlpParams& p, bool backward) {
  return layout(p, backward, nullptr).total;
}

void grouped_mlp_forward(const GroupedMlpParams& p, cudaStream_t stream) {
  check(p, false);
  if (p.rows == 0) return;
  const Scratch s = layout(p, false, p.workspace);
  const Launcher run{p, s, stream};
  const void* a = run.rows();
  run.gemm(a, p.w_gate, p.gate, p.inter, p.hidden, false, false);
  run.gemm(a, p.w_up, p.up, p.inter, p.hidden, false, false);
  run.swiglu(s.h);
  run.gemm(s.h, p.w_down, p.out, p.hidden, p.inter, false, false);
}

void grouped_mlp_backward(const GroupedMlpParams& p, cudaStream_t stream) {
  check(p, true);
  const Scratch s = layout(p, true, p.workspace);
  const Launcher run{p, s, stream};
  // the down projection (with no rows the weight gradients are still written: zeros)
  if (p.rows > 0) run.swiglu(s.h);
  run.weight_grad(s.h, p.dout, p.dw_down, p.inter, p.hidden);
  run.gemm(p.dout, p.w_down, s.dh, p.inter, p.hidden, true, false);
  SwiGluParams w;
  w.n = p.rows * p.inter;
  w.dtype = DType::kBFloat16;
  w.gate = p.gate;
  w.up = p.up;
  w.dout = s.dh;
  w.dgate = s.dgate;
  w.dup = s.dup;
  swiglu_backward(w, stream);
  // the gate and up projections
  const void* a = p.rows > 0 ? run.rows() : p.x;
  run.weight_grad(a, s.dgate, p.dw_gate, p.hidden, p.inter);
  run.weight_grad(a, s.dup, p.dw_up, p.hidden, p.inter);
  void* da = p.index ? s.da : p.dx;
  run.gemm(s.dgate, p.w_gate, da, p.hidden, p.inter, true, false);
  run.gemm(s.dup, p.w_up, da, p.hidden, p.inter, true, true);
  if (!p.index) return;
  // each token sums its rows
  MoeRowsParams m;
  m.rows = p.rows;
  m.tokens = p.tokens;
  m.width = p.hidden;
  m.dtype = DType::kBFloat16;
  m.sorted = p.index_sorted;
  m.starts_out = s.starts;
  bucket_starts(m, stream);
  m.src = s.da;
  m.perm = p.perm;
  m.starts = s.starts;
  m.dst = p.dx;
  segment_sum_rows(m, stream);
}

}  // namespace cuda
}  // namespace llmpre
