// GPU half of llmpre_grouped_mlp (paddle_ops/grouped_mlp_op.cc sends GPU tensors here after
// its shared shape checks; see cuda_ops.h). bfloat16 only: cuda/grouped_mlp runs the forward
// and the backward as CUTLASS bf16 grouped GEMMs, SwiGLU and row moves, reading the offsets
// on the device. Here: the outputs and one workspace (Paddle tensors on x's stream), the
// experts' weight pointers as device arrays (written by kernel arguments, so nothing waits for
// the GPU), and for the backward a stable argsort of the index (Paddle's), which lists each
// token's rows in row order for the token sums.
//
// Linked only into a CUDA build of Paddle; `make paddle-gpu-glue-check` compiles it without
// one (it has not run on a GPU yet: bench/gpu/check_grouped_mlp.py checks cuda/grouped_mlp).
#include <cstdint>
#include <tuple>
#include <vector>

#include "cuda_ops.h"
#include "gpu_glue.h"
#include "grouped_mlp/grouped_mlp_cuda.h"
#include "moe_rows/moe_rows_cuda.h"

namespace {

using namespace llmpre::ops;
constexpr const char* kOp = "llmpre_grouped_mlp";

// Device checks of every input and the sizes; offsets on the CPU are copied to x's GPU.
llmpre::cuda::GroupedMlpParams sizes(const paddle::Tensor& x, paddle::Tensor& offsets,
                                     const std::vector<paddle::Tensor>& wg, const std::vector<paddle::Tensor>& wu,
                                     const std::vector<paddle::Tensor>& wd,
                                     const paddle::optional<paddle::Tensor>& index) {
  PD_CHECK(x.dtype() == paddle::DataType::BFLOAT16, kOp, ": on GPU `x` must be bfloat16 (the CUTLASS grouped "
           "GEMM's type; other dtypes take the reference op), got ", dtype_str(x.dtype()));
  for (const auto* ws : {&wg, &wu, &wd})
    for (const auto& w : *ws) check_same_gpu(x, "x", w, "expert weight", kOp);
  if (index) check_same_gpu(x, "x", *index, "index", kOp);
  if (offsets.is_cpu()) offsets = offsets.copy_to(x.place(), false);
  check_same_gpu(x, "x", offsets, "offsets", kOp);
  llmpre::cuda::GroupedMlpParams p;
  p.tokens = x.shape()[0];
  p.hidden = x.shape()[1];
  p.rows = index ? index->shape()[0] : p.tokens;
  p.inter = wg[0].shape()[1];
  p.experts = static_cast<int64_t>(wg.size());
  PD_CHECK(p.hidden % 8 == 0 && p.inter % 8 == 0, kOp, ": on GPU hidden and the expert width must be multiples "
           "of 8 (128-bit bf16 loads), got hidden ", p.hidden, ", width ", p.inter);
  return p;
}

std::vector<paddle::Tensor> contiguous_all(const std::vector<paddle::Tensor>& ts) {
  std::vector<paddle::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(contiguous(t));
  return out;
}

// A device array of the tensors' data pointers (kept alive by the caller until the launches
// that read it are queued; Paddle's allocator reuses freed memory in stream order).
paddle::Tensor pointer_array(const std::vector<paddle::Tensor>& ts, const paddle::Place& place, cudaStream_t stream) {
  std::vector<const void*> host;
  host.reserve(ts.size());
  for (const auto& t : ts) host.push_back(t.data());
  paddle::Tensor out = paddle::empty({static_cast<int64_t>(ts.size())}, paddle::DataType::INT64, place);
  run_kernel(kOp, [&] {
    llmpre::cuda::write_pointers(reinterpret_cast<void**>(out.data<int64_t>()), host.data(),
                                 static_cast<int64_t>(host.size()), stream);
  });
  return out;
}

template <class T>
T* device_pointers(const paddle::Tensor& t) { return reinterpret_cast<T*>(t.data<int64_t>()); }

paddle::Tensor workspace_for(llmpre::cuda::GroupedMlpParams& p, bool backward, const paddle::Place& place) {
  run_kernel(kOp, [&] { p.workspace_bytes = llmpre::cuda::grouped_mlp_workspace_bytes(p, backward); });
  paddle::Tensor ws = paddle::empty({static_cast<int64_t>(p.workspace_bytes / 8) + 2}, paddle::DataType::INT64, place);
  p.workspace = ws.data();
  return ws;
}

}  // namespace

std::vector<paddle::Tensor> GroupedMlpForwardCuda(const paddle::Tensor& x_in, const paddle::Tensor& offsets_in,
                                                  const std::vector<paddle::Tensor>& wg_in,
                                                  const std::vector<paddle::Tensor>& wu_in,
                                                  const std::vector<paddle::Tensor>& wd_in,
                                                  const paddle::optional<paddle::Tensor>& index_in) {
  paddle::Tensor offsets = contiguous(offsets_in);
  llmpre::cuda::GroupedMlpParams p = sizes(x_in, offsets, wg_in, wu_in, wd_in, index_in);
  DeviceGuard guard(x_in, kOp);
  const paddle::Tensor x = contiguous(x_in);
  const paddle::Tensor index = index_in ? as_int64(*index_in, kOp, "index") : paddle::Tensor();
  const auto wg = contiguous_all(wg_in), wu = contiguous_all(wu_in), wd = contiguous_all(wd_in);
  const cudaStream_t stream = x.stream();
  const paddle::Place place = x.place();
  const paddle::Tensor pg = pointer_array(wg, place, stream), pu = pointer_array(wu, place, stream),
                       pd = pointer_array(wd, place, stream);
  paddle::Tensor out = new_output({p.rows, p.hidden}, x.dtype(), place);
  paddle::Tensor gate = new_output({p.rows, p.inter}, x.dtype(), place);
  paddle::Tensor up = new_output({p.rows, p.inter}, x.dtype(), place);
  const paddle::Tensor ws = workspace_for(p, false, place);
  p.x = x.data();
  p.index = index.defined() ? index.data<int64_t>() : nullptr;
  p.offsets = offsets.data<int64_t>();
  p.w_gate = device_pointers<const void* const>(pg);
  p.w_up = device_pointers<const void* const>(pu);
  p.w_down = device_pointers<const void* const>(pd);
  p.out = out.data();
  p.gate = gate.data();
  p.up = up.data();
  run_kernel(kOp, [&] { llmpre::cuda::grouped_mlp_forward(p, stream); });
  return {out, gate, up};
}

std::vector<paddle::Tensor> GroupedMlpBackwardCuda(const paddle::Tensor& x_in, const paddle::Tensor& offsets_in,
                                                   const std::vector<paddle::Tensor>& wg_in,
                                                   const std::vector<paddle::Tensor>& wu_in,
                                                   const std::vector<paddle::Tensor>& wd_in,
                                                   const paddle::optional<paddle::Tensor>& index_in,
                                                   const paddle::Tensor& gate_in, const paddle::Tensor& up_in,
                                                   const paddle::Tensor& dout_in) {
  paddle::Tensor offsets = contiguous(offsets_in);
  llmpre::cuda::GroupedMlpParams p = sizes(x_in, offsets, wg_in, wu_in, wd_in, index_in);
  DeviceGuard guard(x_in, kOp);
  const paddle::Tensor x = contiguous(x_in);
  const auto wg = contiguous_all(wg_in), wu = contiguous_all(wu_in), wd = contiguous_all(wd_in);
  const paddle::Place place = x.place();
  std::vector<paddle::Tensor> grads;   // dx, then dwg..., dwu..., dwd... (one per expert each)
  check_same_gpu(x, "x", dout_in, "grad of out", kOp);
  const cudaStream_t stream = x.stream();
  const paddle::Tensor gate = contiguous(gate_in), up = contiguous(up_in), dout = contiguous(dout_in);
  const paddle::Tensor index = index_in ? as_int64(*index_in, kOp, "index") : paddle::Tensor();
  paddle::Tensor sorted, perm;
  if (index.defined()) std::tie(sorted, perm) = paddle::experimental::argsort(index, -1, false, true);

  std::vector<paddle::Tensor> dwg, dwu, dwd;
  for (const auto& w : wg) dwg.push_back(new_output(w.shape(), w.dtype(), place));
  for (const auto& w : wu) dwu.push_back(new_output(w.shape(), w.dtype(), place));
  for (const auto& w : wd) dwd.push_back(new_output(w.shape(), w.dtype(), place));
  paddle::Tensor dx = new_output(x.shape(), x.dtype(), place);
  const paddle::Tensor pg = pointer_array(wg, place, stream), pu = pointer_array(wu, place, stream),
                       pd = pointer_array(wd, place, stream), qg = pointer_array(dwg, place, stream),
                       qu = pointer_array(dwu, place, stream), qd = pointer_array(dwd, place, stream);
  const paddle::Tensor ws = workspace_for(p, true, place);
  p.x = x.data();
  p.index = index.defined() ? index.data<int64_t>() : nullptr;
  p.index_sorted = index.defined() ? sorted.data<int64_t>() : nullptr;
  p.perm = index.defined() ? perm.data<int64_t>() : nullptr;
  p.offsets = offsets.data<int64_t>();
  p.w_gate = device_pointers<const void* const>(pg);
  p.w_up = device_pointers<const void* const>(pu);
  p.w_down = device_pointers<const void* const>(pd);
  p.gate = const_cast<void*>(gate.data());
  p.up = const_cast<void*>(up.data());
  p.dout = dout.data();
  p.dx = dx.data();
  p.dw_gate = device_pointers<void* const>(qg);
  p.dw_up = device_pointers<void* const>(qu);
  p.dw_down = device_pointers<void* const>(qd);
  run_kernel(kOp, [&] { llmpre::cuda::grouped_mlp_backward(p, stream); });
  grads.push_back(dx);
  for (auto* gs : {&dwg, &dwu, &dwd}) grads.insert(grads.end(), gs->begin(), gs->end());
  return grads;
}
