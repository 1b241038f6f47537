// llmpre_grouped_mlp: every expert's SwiGLU MLP over rows grouped by expert
// (kernel: cpp/kernels/grouped_mlp). No host synchronisation: the offsets are
// read by the kernel itself.
//   inputs  X [rows, hidden] fp32, Offsets [experts + 1] int64 (CPU),
//           WGate, WUp [experts, hidden, inter], WDown [experts, inter, hidden] (X's dtype)
//   outputs Out [rows, hidden]; Gate, Up [rows, inter] (pre-activations, kept for the backward)
#include "grouped_mlp/grouped_mlp.h"
#include "op_common.h"

namespace {
using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_grouped_mlp";

k::GroupedMlpParams params(const paddle::Tensor& x, const paddle::Tensor& offsets, const paddle::Tensor& wg,
                           const paddle::Tensor& wu, const paddle::Tensor& wd) {
  PD_CHECK(x.shape().size() == 2, kOp, ": `x` must be [rows, hidden], got ", shape_str(x.shape()));
  PD_CHECK(wg.shape().size() == 3, kOp, ": `w_gate` must be [experts, hidden, inter], got ",
           shape_str(wg.shape()));
  k::GroupedMlpParams p;
  p.rows = x.shape()[0];
  p.hidden = x.shape()[1];
  p.experts = wg.shape()[0];
  p.inter = wg.shape()[2];
  PD_CHECK(wg.shape()[1] == p.hidden, kOp, ": `w_gate` must be [experts, hidden=", p.hidden, ", inter], got ",
           shape_str(wg.shape()));
  check_same_shape(wg, "w_gate", wu, "w_up", kOp);
  const std::vector<int64_t> down = {p.experts, p.inter, p.hidden};
  PD_CHECK(wd.shape() == down, kOp, ": `w_down` must be ", shape_str(down), ", got ", shape_str(wd.shape()));
  const std::vector<int64_t> offs = {p.experts + 1};
  PD_CHECK(offsets.shape() == offs, kOp, ": `offsets` must be ", shape_str(offs), " (experts + 1), got ",
           shape_str(offsets.shape()));
  PD_CHECK(offsets.dtype() == paddle::DataType::INT64, kOp, ": `offsets` must be int64, got ",
           dtype_str(offsets.dtype()));
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, kOp, ": `x` must be float32 (bf16 grouped MLPs take "
           "the reference op), got ", dtype_str(x.dtype()));
  p.dtype = llmpre::DType::kFloat32;
  check_same_dtype(x, "x", wg, "w_gate", kOp);
  check_same_dtype(x, "x", wu, "w_up", kOp);
  check_same_dtype(x, "x", wd, "w_down", kOp);
  check_cpu(x, kOp, "x");
  check_cpu(offsets, kOp, "offsets");
  check_cpu(wg, kOp, "w_gate");
  check_cpu(wu, kOp, "w_up");
  check_cpu(wd, kOp, "w_down");
  return p;
}
}  // namespace

std::vector<paddle::Tensor> GroupedMlpForward(const paddle::Tensor& x_in, const paddle::Tensor& offsets_in,
                                              const paddle::Tensor& wg_in, const paddle::Tensor& wu_in,
                                              const paddle::Tensor& wd_in) {
  const k::GroupedMlpParams p = params(x_in, offsets_in, wg_in, wu_in, wd_in);
  paddle::Tensor x = contiguous(x_in), offsets = contiguous(offsets_in);
  paddle::Tensor wg = contiguous(wg_in), wu = contiguous(wu_in), wd = contiguous(wd_in);
  paddle::Tensor out = new_output({p.rows, p.hidden}, x.dtype(), x.place());
  paddle::Tensor gate = new_output({p.rows, p.inter}, x.dtype(), x.place());
  paddle::Tensor up = new_output({p.rows, p.inter}, x.dtype(), x.place());
  run_kernel(kOp, [&] {
    k::grouped_mlp_forward(p, x.data(), offsets.data<int64_t>(), wg.data(), wu.data(), wd.data(), out.data(),
                           gate.data(), up.data());
  });
  return {out, gate, up};
}

std::vector<paddle::Tensor> GroupedMlpBackward(const paddle::Tensor& x_in, const paddle::Tensor& offsets_in,
                                               const paddle::Tensor& wg_in, const paddle::Tensor& wu_in,
                                               const paddle::Tensor& wd_in, const paddle::Tensor& gate_in,
                                               const paddle::Tensor& up_in, const paddle::Tensor& dout_in) {
  const k::GroupedMlpParams p = params(x_in, offsets_in, wg_in, wu_in, wd_in);
  paddle::Tensor x = contiguous(x_in), offsets = contiguous(offsets_in);
  paddle::Tensor wg = contiguous(wg_in), wu = contiguous(wu_in), wd = contiguous(wd_in);
  if (!has_grad(dout_in))
    return {paddle::zeros(x.shape(), x.dtype(), x.place()), paddle::zeros(wg.shape(), wg.dtype(), wg.place()),
            paddle::zeros(wu.shape(), wu.dtype(), wu.place()), paddle::zeros(wd.shape(), wd.dtype(), wd.place())};
  check_same_shape(x, "x", dout_in, "grad of out", kOp);
  check_same_dtype(x, "x", dout_in, "grad of out", kOp);
  paddle::Tensor gate = contiguous(gate_in), up = contiguous(up_in), dout = contiguous(dout_in);
  paddle::Tensor dx = new_output(x.shape(), x.dtype(), x.place());
  paddle::Tensor dwg = new_output(wg.shape(), wg.dtype(), wg.place());
  paddle::Tensor dwu = new_output(wu.shape(), wu.dtype(), wu.place());
  paddle::Tensor dwd = new_output(wd.shape(), wd.dtype(), wd.place());
  run_kernel(kOp, [&] {
    k::grouped_mlp_backward(p, x.data(), offsets.data<int64_t>(), wg.data(), wu.data(), wd.data(), gate.data(),
                            up.data(), dout.data(), dx.data(), dwg.data(), dwu.data(), dwd.data());
  });
  return {dx, dwg, dwu, dwd};
}

std::vector<std::vector<int64_t>> GroupedMlpInferShape(const std::vector<int64_t>& x,
                                                       const std::vector<int64_t>& offsets,
                                                       const std::vector<int64_t>& wg,
                                                       const std::vector<int64_t>& wu,
                                                       const std::vector<int64_t>& wd) {
  return {x, {x[0], wg[2]}, {x[0], wg[2]}};
}

std::vector<paddle::DataType> GroupedMlpInferDtype(const paddle::DataType& x, const paddle::DataType& offsets,
                                                   const paddle::DataType& wg, const paddle::DataType& wu,
                                                   const paddle::DataType& wd) {
  return {x, x, x};
}

PD_BUILD_OP(llmpre_grouped_mlp)
    .Inputs({"X", "Offsets", "WGate", "WUp", "WDown"})
    .Outputs({"Out", "Gate", "Up"})
    .SetKernelFn(PD_KERNEL(GroupedMlpForward))
    .SetInferShapeFn(PD_INFER_SHAPE(GroupedMlpInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(GroupedMlpInferDtype));

PD_BUILD_GRAD_OP(llmpre_grouped_mlp)
    .Inputs({"X", "Offsets", "WGate", "WUp", "WDown", "Gate", "Up", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("WGate"), paddle::Grad("WUp"), paddle::Grad("WDown")})
    .SetKernelFn(PD_KERNEL(GroupedMlpBackward));
