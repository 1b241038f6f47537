// llmpre_rotary: rotary position embedding of one tensor (kernel: cpp/kernels/rotary).
// llmpre.ops.rotary(q, k, ...) calls it once for q and once for k.
//   inputs  X [batch, seq, heads, head_dim] fp32|bf16,
//           Cos, Sin [positions, r/2] (fp32; bf16/fp64 tables are cast to fp32),
//           PositionIds (optional) int64|int32 with batch*seq or seq elements
//   attrs   interleaved: bool (false: HF rotate_half pairs (i, i+r/2); true: pairs (2i, 2i+1))
//   outputs Out (X's shape and dtype); no gradient flows to the tables or ids.
#include "cuda_ops.h"
#include "op_common.h"
#include "rotary/rotary.h"

namespace {
using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_rotary";

paddle::Tensor table(const paddle::Tensor& t, const char* arg) {
  PD_CHECK(t.shape().size() == 2, kOp, ": `", arg, "` must be a [positions, rotary_dim/2] table, got ",
           shape_str(t.shape()));
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32 || t.dtype() == paddle::DataType::BFLOAT16 ||
               t.dtype() == paddle::DataType::FLOAT64,
           kOp, ": `", arg, "` must be a float32 table, got ", dtype_str(t.dtype()));
  paddle::Tensor c = contiguous(t);
  return t.dtype() == paddle::DataType::FLOAT32 ? c : paddle::experimental::cast(c, paddle::DataType::FLOAT32);
}

// Checks shapes, fills the parameters, and returns the tables/ids the kernel reads.
k::RotaryParams params(const paddle::Tensor& x, const paddle::Tensor& cos, const paddle::Tensor& sin,
                       const paddle::optional<paddle::Tensor>& ids, bool interleaved, bool inverse) {
  const auto& xs = x.shape();
  PD_CHECK(xs.size() == 4, kOp, ": `x` must be [batch, seq, heads, head_dim], got ", shape_str(xs));
  PD_CHECK(cos.shape() == sin.shape(), kOp, ": `cos` ", shape_str(cos.shape()),
           " and `sin` ", shape_str(sin.shape()), " must have the same shape [positions, rotary_dim/2]");
  k::RotaryParams p;
  p.batch = xs[0];
  p.seq = xs[1];
  p.heads = xs[2];
  p.head_dim = xs[3];
  p.table_rows = cos.shape()[0];
  p.rot_dim = 2 * cos.shape()[1];
  PD_CHECK(p.rot_dim >= 2 && p.rot_dim <= p.head_dim, kOp, ": tables of width ", cos.shape()[1],
           " rotate ", p.rot_dim, " features, which must be between 2 and head_dim=", p.head_dim,
           " (x ", shape_str(xs), ")");
  p.interleaved = interleaved;
  p.inverse = inverse;
  p.dtype = kernel_dtype(x, kOp, "x");
  if (ids) {
    const int64_t n = ids->numel();
    PD_CHECK(p.seq > 0 && n % p.seq == 0 && (n / p.seq == 1 || n / p.seq == p.batch), kOp,
             ": `position_ids` must be [batch, seq] = [", p.batch, ", ", p.seq, "] (or [1, seq]), got ",
             shape_str(ids->shape()));
    p.ids_batch = n / p.seq;
  }
  return p;
}

paddle::Tensor rotate(const paddle::Tensor& x_in, const paddle::Tensor& cos_in, const paddle::Tensor& sin_in,
                      const paddle::optional<paddle::Tensor>& ids_in, bool interleaved, bool inverse,
                      const char* x_name) {
  paddle::Tensor cos = table(cos_in, "cos"), sin = table(sin_in, "sin");
  paddle::optional<paddle::Tensor> ids;
  if (ids_in) ids = as_int64(*ids_in, kOp, "position_ids");
  const k::RotaryParams p = params(x_in, cos, sin, ids, interleaved, inverse);
#ifdef LLMPRE_CUDA_ROTARY
  if (x_in.is_gpu()) return RotaryCuda(x_in, cos, sin, ids, interleaved, inverse);
#endif
  check_cpu(x_in, kOp, x_name);
  check_cpu(cos, kOp, "cos");
  check_cpu(sin, kOp, "sin");
  if (ids) check_cpu(*ids, kOp, "position_ids");
  paddle::Tensor x = contiguous(x_in);
  paddle::Tensor out = new_output(x.shape(), x.dtype(), x.place());
  run_kernel(kOp, [&] {
    k::rotary_apply(p, x.data(), cos.data<float>(), sin.data<float>(),
                    ids ? ids->data<int64_t>() : nullptr, out.data());
  });
  return out;
}
}  // namespace

std::vector<paddle::Tensor> RotaryForward(const paddle::Tensor& x, const paddle::Tensor& cos,
                                          const paddle::Tensor& sin,
                                          const paddle::optional<paddle::Tensor>& position_ids,
                                          bool interleaved) {
  return {rotate(x, cos, sin, position_ids, interleaved, /*inverse=*/false, "x")};
}

// The rotation is orthogonal: the input gradient is the output gradient rotated back.
std::vector<paddle::Tensor> RotaryBackward(const paddle::Tensor& cos, const paddle::Tensor& sin,
                                           const paddle::optional<paddle::Tensor>& position_ids,
                                           const paddle::Tensor& dout, bool interleaved) {
  return {rotate(dout, cos, sin, position_ids, interleaved, /*inverse=*/true, "grad of out")};
}

PD_BUILD_OP(llmpre_rotary)
    .Inputs({"X", "Cos", "Sin", paddle::Optional("PositionIds")})
    .Outputs({"Out"})
    .Attrs({"interleaved: bool"})
    .SetKernelFn(PD_KERNEL(RotaryForward));

PD_BUILD_GRAD_OP(llmpre_rotary)
    .Inputs({"Cos", "Sin", paddle::Optional("PositionIds"), paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"interleaved: bool"})
    .SetKernelFn(PD_KERNEL(RotaryBackward));
