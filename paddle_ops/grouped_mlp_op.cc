// llmpre_grouped_mlp: every expert's SwiGLU MLP over rows grouped by expert
// (kernel: cpp/kernels/grouped_mlp). No host synchronisation: the offsets are
// read by the kernel itself. The experts' weights come as lists of their own
// parameters (no stacked copy); their gradients go to one tensor per expert.
//   inputs  X [tokens, hidden] fp32, Offsets [experts + 1] int64 (CPU),
//           WGate, WUp: experts x [hidden, inter]; WDown: experts x [inter, hidden] (X's dtype),
//           Index (optional) [rows] int64|int32: row r is X[Index[r]] (gathered inside the
//           kernel; without it the rows are X's own, rows = tokens)
//   outputs Out [rows, hidden]; Gate, Up [rows, inter] (pre-activations, kept for the backward)
//   grads   X [tokens, hidden]: each token's rows summed token-major (no atomics)
//   GPU tensors (a CUDA build): bfloat16, paddle_ops/cuda/grouped_mlp_cuda.cc, after the shape checks.
#include "cuda_ops.h"
#include "grouped_mlp/grouped_mlp.h"
#include "op_common.h"

namespace {
using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_grouped_mlp";

void check_weights(const std::vector<paddle::Tensor>& ws, const char* name, const std::vector<int64_t>& shape,
                   const paddle::Tensor& x) {
  for (size_t e = 0; e < ws.size(); ++e) {
    const std::string arg = std::string(name) + "[" + std::to_string(e) + "]";
    PD_CHECK(ws[e].shape() == shape, kOp, ": `", arg, "` must be ", shape_str(shape), ", got ",
             shape_str(ws[e].shape()));
    check_same_dtype(x, "x", ws[e], arg.c_str(), kOp);
  }
}

void check_all_cpu(const std::vector<paddle::Tensor>& ws, const char* name) {
  for (size_t e = 0; e < ws.size(); ++e) check_cpu(ws[e], kOp, (std::string(name) + "[" + std::to_string(e) + "]").c_str());
}

// The shape checks both devices share.
k::GroupedMlpParams shapes(const paddle::Tensor& x, const paddle::Tensor& offsets,
                           const std::vector<paddle::Tensor>& wg, const std::vector<paddle::Tensor>& wu,
                           const std::vector<paddle::Tensor>& wd, const paddle::optional<paddle::Tensor>& index) {
  PD_CHECK(x.shape().size() == 2, kOp, ": `x` must be [tokens, hidden], got ", shape_str(x.shape()));
  PD_CHECK(!wg.empty() && wg[0].shape().size() == 2, kOp,
           ": `w_gate` must be a non-empty list of [hidden, inter] expert weights");
  k::GroupedMlpParams p;
  p.tokens = x.shape()[0];
  p.rows = p.tokens;
  if (index) {
    PD_CHECK(index->shape().size() == 1, kOp, ": `index` must be [rows] (the row of x each row reads), got ",
             shape_str(index->shape()));
    p.rows = index->shape()[0];
  }
  p.hidden = x.shape()[1];
  p.experts = static_cast<int64_t>(wg.size());
  p.inter = wg[0].shape()[1];
  PD_CHECK(wu.size() == wg.size() && wd.size() == wg.size(), kOp, ": `w_gate`, `w_up` and `w_down` must list ",
           "the same experts, got ", wg.size(), ", ", wu.size(), " and ", wd.size(), " weights");
  check_weights(wg, "w_gate", {p.hidden, p.inter}, x);
  check_weights(wu, "w_up", {p.hidden, p.inter}, x);
  check_weights(wd, "w_down", {p.inter, p.hidden}, x);
  const std::vector<int64_t> offs = {p.experts + 1};
  PD_CHECK(offsets.shape() == offs, kOp, ": `offsets` must be ", shape_str(offs), " (experts + 1), got ",
           shape_str(offsets.shape()));
  PD_CHECK(offsets.dtype() == paddle::DataType::INT64, kOp, ": `offsets` must be int64, got ",
           dtype_str(offsets.dtype()));
  return p;
}

// The CPU kernel's checks on top of the shared ones.
k::GroupedMlpParams params(const paddle::Tensor& x, const paddle::Tensor& offsets,
                           const std::vector<paddle::Tensor>& wg, const std::vector<paddle::Tensor>& wu,
                           const std::vector<paddle::Tensor>& wd, const paddle::optional<paddle::Tensor>& index) {
  k::GroupedMlpParams p = shapes(x, offsets, wg, wu, wd, index);
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, kOp, ": `x` must be float32 on CPU (other dtypes take the "
           "reference op), got ", dtype_str(x.dtype()));
  p.dtype = llmpre::DType::kFloat32;
  check_cpu(x, kOp, "x");
  check_cpu(offsets, kOp, "offsets");
  if (index) check_cpu(*index, kOp, "index");
  check_all_cpu(wg, "w_gate");
  check_all_cpu(wu, "w_up");
  check_all_cpu(wd, "w_down");
  return p;
}

std::vector<paddle::Tensor> contiguous_all(const std::vector<paddle::Tensor>& ts) {
  std::vector<paddle::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(contiguous(t));
  return out;
}

std::vector<const void*> pointers(const std::vector<paddle::Tensor>& ts) {
  std::vector<const void*> out;
  for (const auto& t : ts) out.push_back(t.data());
  return out;
}

std::vector<void*> mutable_pointers(std::vector<paddle::Tensor>& ts) {
  std::vector<void*> out;
  for (auto& t : ts) out.push_back(t.data());
  return out;
}

std::vector<paddle::Tensor> new_like(const std::vector<paddle::Tensor>& ts) {
  std::vector<paddle::Tensor> out;
  for (const auto& t : ts) out.push_back(new_output(t.shape(), t.dtype(), t.place()));
  return out;
}
}  // namespace

const int64_t* index_data(const paddle::optional<paddle::Tensor>& index, paddle::Tensor& holder) {
  if (!index) return nullptr;
  holder = as_int64(*index, kOp, "index");
  return holder.data<int64_t>();
}

std::vector<paddle::Tensor> GroupedMlpForward(const paddle::Tensor& x_in, const paddle::Tensor& offsets_in,
                                              const std::vector<paddle::Tensor>& wg_in,
                                              const std::vector<paddle::Tensor>& wu_in,
                                              const std::vector<paddle::Tensor>& wd_in,
                                              const paddle::optional<paddle::Tensor>& index_in) {
#ifdef LLMPRE_CUDA_GROUPED_MLP
  if (x_in.is_gpu()) {
    shapes(x_in, offsets_in, wg_in, wu_in, wd_in, index_in);
    return GroupedMlpForwardCuda(x_in, offsets_in, wg_in, wu_in, wd_in, index_in);
  }
#endif
  const k::GroupedMlpParams p = params(x_in, offsets_in, wg_in, wu_in, wd_in, index_in);
  paddle::Tensor x = contiguous(x_in), offsets = contiguous(offsets_in), index;
  const int64_t* idx = index_data(index_in, index);
  const auto wg = contiguous_all(wg_in), wu = contiguous_all(wu_in), wd = contiguous_all(wd_in);
  paddle::Tensor out = new_output({p.rows, p.hidden}, x.dtype(), x.place());
  paddle::Tensor gate = new_output({p.rows, p.inter}, x.dtype(), x.place());
  paddle::Tensor up = new_output({p.rows, p.inter}, x.dtype(), x.place());
  const auto pg = pointers(wg), pu = pointers(wu), pd = pointers(wd);
  run_kernel(kOp, [&] {
    k::grouped_mlp_forward(p, x.data(), idx, offsets.data<int64_t>(), pg.data(), pu.data(), pd.data(), out.data(),
                           gate.data(), up.data());
  });
  return {out, gate, up};
}

std::vector<paddle::Tensor> GroupedMlpBackward(const paddle::Tensor& x_in, const paddle::Tensor& offsets_in,
                                               const std::vector<paddle::Tensor>& wg_in,
                                               const std::vector<paddle::Tensor>& wu_in,
                                               const std::vector<paddle::Tensor>& wd_in,
                                               const paddle::optional<paddle::Tensor>& index_in,
                                               const paddle::Tensor& gate_in, const paddle::Tensor& up_in,
                                               const paddle::Tensor& dout_in) {
  // both devices: the shapes, the answer without an upstream gradient, grad of out's shape and dtype
  const k::GroupedMlpParams s = shapes(x_in, offsets_in, wg_in, wu_in, wd_in, index_in);
  std::vector<paddle::Tensor> grads;   // dx, then dwg..., dwu..., dwd... (one per expert each)
  if (!has_grad(dout_in)) {
    grads.push_back(paddle::zeros(x_in.shape(), x_in.dtype(), x_in.place()));
    for (const auto* ws : {&wg_in, &wu_in, &wd_in})
      for (const auto& w : *ws) grads.push_back(paddle::zeros(w.shape(), w.dtype(), w.place()));
    return grads;
  }
  const std::vector<int64_t> out_shape = {s.rows, s.hidden};
  PD_CHECK(dout_in.shape() == out_shape, kOp, ": `grad of out` must be ", shape_str(out_shape), ", got ",
           shape_str(dout_in.shape()));
  check_same_dtype(x_in, "x", dout_in, "grad of out", kOp);
#ifdef LLMPRE_CUDA_GROUPED_MLP
  if (x_in.is_gpu())
    return GroupedMlpBackwardCuda(x_in, offsets_in, wg_in, wu_in, wd_in, index_in, gate_in, up_in, dout_in);
#endif
  const k::GroupedMlpParams p = params(x_in, offsets_in, wg_in, wu_in, wd_in, index_in);
  paddle::Tensor x = contiguous(x_in), offsets = contiguous(offsets_in), index;
  const int64_t* idx = index_data(index_in, index);
  const auto wg = contiguous_all(wg_in), wu = contiguous_all(wu_in), wd = contiguous_all(wd_in);
  paddle::Tensor gate = contiguous(gate_in), up = contiguous(up_in), dout = contiguous(dout_in);
  paddle::Tensor dx = new_output(x.shape(), x.dtype(), x.place());
  auto dwg = new_like(wg), dwu = new_like(wu), dwd = new_like(wd);
  // the rows' input gradients before each token sums its own (from Paddle's allocator, which
  // keeps freed memory: no page faults on every call)
  paddle::Tensor workspace = idx ? paddle::empty({p.rows, p.hidden}, x.dtype(), x.place()) : paddle::Tensor();
  const auto pg = pointers(wg), pu = pointers(wu), pd = pointers(wd);
  const auto qg = mutable_pointers(dwg), qu = mutable_pointers(dwu), qd = mutable_pointers(dwd);
  run_kernel(kOp, [&] {
    k::grouped_mlp_backward(p, x.data(), idx, offsets.data<int64_t>(), pg.data(), pu.data(), pd.data(), gate.data(),
                            up.data(), dout.data(), dx.data(), qg.data(), qu.data(), qd.data(),
                            idx ? workspace.data() : nullptr);
  });
  grads.push_back(dx);
  for (auto* gs : {&dwg, &dwu, &dwd}) grads.insert(grads.end(), gs->begin(), gs->end());
  return grads;
}

std::vector<std::vector<int64_t>> GroupedMlpInferShape(const std::vector<int64_t>& x,
                                                       const std::vector<int64_t>& offsets,
                                                       const std::vector<std::vector<int64_t>>& wg,
                                                       const std::vector<std::vector<int64_t>>& wu,
                                                       const std::vector<std::vector<int64_t>>& wd,
                                                       const paddle::optional<std::vector<int64_t>>& index) {
  const int64_t rows = index ? (*index)[0] : x[0];
  return {{rows, x[1]}, {rows, wg[0][1]}, {rows, wg[0][1]}};
}

std::vector<paddle::DataType> GroupedMlpInferDtype(const paddle::DataType& x, const paddle::DataType& offsets,
                                                   const std::vector<paddle::DataType>& wg,
                                                   const std::vector<paddle::DataType>& wu,
                                                   const std::vector<paddle::DataType>& wd,
                                                   const paddle::optional<paddle::DataType>& index) {
  return {x, x, x};
}

PD_BUILD_OP(llmpre_grouped_mlp)
    .Inputs({"X", "Offsets", paddle::Vec("WGate"), paddle::Vec("WUp"), paddle::Vec("WDown"),
             paddle::Optional("Index")})
    .Outputs({"Out", "Gate", "Up"})
    .SetKernelFn(PD_KERNEL(GroupedMlpForward))
    .SetInferShapeFn(PD_INFER_SHAPE(GroupedMlpInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(GroupedMlpInferDtype));

PD_BUILD_GRAD_OP(llmpre_grouped_mlp)
    .Inputs({"X", "Offsets", paddle::Vec("WGate"), paddle::Vec("WUp"), paddle::Vec("WDown"),
             paddle::Optional("Index"), "Gate", "Up", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad(paddle::Vec("WGate")), paddle::Grad(paddle::Vec("WUp")),
              paddle::Grad(paddle::Vec("WDown"))})
    .SetKernelFn(PD_KERNEL(GroupedMlpBackward));
