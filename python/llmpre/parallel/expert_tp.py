"""Expert tensor parallelism: every expert of a MoE layer split over the tensor-parallel ranks.

Each expert (and the shared expert) is split like a dense MLP: gate/up by columns,
down by rows, so the grouped op runs unchanged on this rank's ``moe_intermediate_size
/ tp`` columns of every expert and yields a partial sum of each row's output. The
router stays whole and runs on the whole sequence on every rank (identical results,
so identical gradients: its parameters are not summed over tp); the routing is the
same as in one process, and so are the router statistics the auxiliary loss reads.

    x_full  = x                      (SP: gather_seq(x): all-gather | keep own slice)
    w, e, s = router(x_full)         every rank the same
    y_part  = routed(copy_to(x_full), copy_to(w), e) + shared(copy_to(x_full))   this rank's columns
    y       = reduce_from(y_part)    (SP: reduce_scatter_seq: back to this rank's chunk)

Backward: the experts' partial input gradients are summed by ``copy_to``'s all-reduce
(once per layer: the region's input is entered once per forward), the router's own
gradient is whole on every rank, and under SP ``gather_seq`` keeps this rank's part.
The shared expert's gate (``sigmoid(x w_s)``, replicated) multiplies a partial sum, so
its gradient is partial: summed over tp.
"""

from __future__ import annotations

from llmpre.parallel import comm
from llmpre.parallel import tensor_parallel as tpl
from llmpre.parallel.comm import Group


def _split_mlp(mlp, group: Group) -> None:
    """gate/up: this rank's columns, down: its rows; the layers keep their names."""
    width = int(mlp.up_proj.weight.shape[1])
    local = range(group.index * width // group.size, (group.index + 1) * width // group.size)
    mlp.gate_proj = tpl.LocalLinear(mlp.gate_proj.weight, 1, local)
    mlp.up_proj = tpl.LocalLinear(mlp.up_proj.weight, 1, local)
    mlp.down_proj = tpl.LocalLinear(mlp.down_proj.weight, 0, local)


def expert_tensor_parallel(moe, group: Group, sequence_parallel: bool) -> None:
    """Split ``moe`` (a :class:`llmpre.models.moe.MoE`) over ``group`` in place (module doc)."""
    for expert in moe.experts:
        if hasattr(expert, "up_proj"):            # expert parallelism leaves others' experts out
            _split_mlp(expert, group)
    if moe.shared_expert is not None:
        _split_mlp(moe.shared_expert, group)
    if moe.shared_expert_gate is not None:
        setattr(moe.shared_expert_gate.weight, tpl.TP_GRAD_SUM, True)
    for p in moe.gate.parameters():
        setattr(p, tpl.TP_GRAD_SUM, False)        # whole sequence on every rank: whole gradients
    routed, shared, shared_gate, forward = (moe.routed, moe.shared_expert, moe.shared_expert_gate,
                                            moe.forward)
    entered: dict = {}

    def enter(x):
        """copy_to(x), once per forward for the same tensor (one all-reduce in backward)."""
        if entered.get("from") is not x:
            entered["from"], entered["to"] = x, comm.copy_to(x, group)
        return entered["to"]

    def routed_part(flat, weights, experts):
        return routed(enter(flat), comm.copy_to(weights, group), experts)
    moe.routed = routed_part
    if shared is not None:
        shared_forward = shared.forward
        shared.forward = lambda x: shared_forward(enter(x))
    if shared_gate is not None:
        gate_forward = shared_gate.forward
        shared_gate.forward = lambda x: gate_forward(enter(x))

    def tensor_parallel_forward(x):
        """x ``[b, s, h]`` (SP: this rank's ``s / tp`` positions) -> (y like x, router stats)."""
        full = comm.gather_seq(x, group) if sequence_parallel else x          # [b, s_full, h]
        try:
            part, stats = forward(full)                                      # partial sum over ranks
        finally:
            entered.clear()
        y = comm.reduce_scatter_seq(part, group) if sequence_parallel else comm.reduce_from(part, group)
        return y, stats
    moe.forward = tensor_parallel_forward
