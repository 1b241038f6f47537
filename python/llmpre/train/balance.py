"""DeepSeek-V3's auxiliary-loss-free load balancing, and the expert-load figures of the log.

While training, every sparse layer counts the (token, slot) pairs its router sends to
each expert (``MoE.expert_load``; recompute's no-grad pass and evaluation do not count).
After each optimizer step, for every sparse layer ``l``:

    load_l,e  = those counts over the step's micro-batches, summed over every data
                (dp x sharding, expert-parallel ranks included) and sep / cp rank
    b_l,e    -= rate * sign(load_l,e - mean_e load_l,e)     (layers with e_score_correction_bias)

Every rank of a stage applies the same update to the same summed counts, so the bias
stays identical everywhere (tensor-parallel ranks route the same tokens and are not
summed). ``rate`` is ``moe_bias_update_rate`` (the paper's gamma, 0.001 for most of
DeepSeek-V3's training). The bias is a parameter outside the optimizer: checkpoints and
HF exports carry it (``mlp.gate.e_score_correction_bias``).

The load of layer ``l`` is reported relative to a perfect balance: ``max_e load_l,e /
mean_e load_l,e`` and ``min_e ... / mean``, so 1.0 / 1.0 is perfectly balanced;
:func:`load_summary` gives the worst layer's figures for the log line and every
layer's for metrics.jsonl.
"""

from __future__ import annotations

import re

import numpy as np
import paddle

from llmpre.models.moe import MoE
from llmpre.parallel import context

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_MTP = re.compile(r"(?:^|\.)mtp\.(\d+)\.")


def sparse_layers(model) -> list:
    """``[(layer index, MoE)]`` of this rank's sparse layers (global indices under pipelines;
    multi-token-prediction depth ``k`` is layer ``num_hidden_layers + k``, its HF index)."""
    found = []
    for name, sub in model.named_sublayers():
        if isinstance(sub, MoE):
            m, mtp = _LAYER.search(name + "."), _MTP.search(name + ".")
            if mtp:
                index = model.config.num_hidden_layers + int(mtp.group(1))
            else:
                index = int(m.group(1)) if m else len(found)
            found.append((index, sub))
    return sorted(found, key=lambda t: t[0])


def take_loads(model, env) -> dict:
    """``{layer: counts [E] int64 numpy}``: each sparse layer's routed pairs since the
    last call, summed over the data and sep / cp ranks; the layers' counters restart."""
    layers = sparse_layers(model)
    if not layers:
        return {}
    rows = []
    for _, moe in layers:
        load = moe.expert_load
        rows.append(load if load is not None else paddle.zeros([moe.cfg.num_experts], dtype="int64"))
        moe.expert_load = None
    counts = paddle.stack(rows)                                              # [L, E]
    context.seq_group(env).all_reduce(counts)
    env.data.all_reduce(counts)
    values = counts.numpy()
    return {index: values[i] for i, (index, _) in enumerate(layers)}


def update_bias(model, loads: dict, rate: float) -> None:
    """``b -= rate * sign(load - mean load)`` for every sparse layer with a correction bias."""
    if rate <= 0:
        return
    for index, moe in sparse_layers(model):
        bias = moe.gate.e_score_correction_bias
        if bias is None or index not in loads:
            continue
        load = loads[index].astype(np.float64)
        step = -rate * np.sign(load - load.mean())                          # [E]
        with paddle.no_grad():
            bias.set_value((bias.astype("float32") + paddle.to_tensor(step.astype(np.float32)))
                           .astype(bias.dtype))


def load_summary(loads: dict, env=None) -> dict:
    """``moe_load_max`` / ``moe_load_min``: the largest and smallest expert load of any
    layer, relative to that layer's mean (1.0 = balanced), and per layer
    (``moe_load_max_per_layer`` etc., ordered by layer). Under pipeline parallelism the
    stages' layers are gathered, so every rank returns the whole model's figures."""
    per = {i: (float(c.max() / c.mean()), float(c.min() / c.mean())) for i, c in loads.items() if c.sum() > 0}
    pp = getattr(env, "pp", None) if env is not None else None
    if pp is not None and pp.size > 1:
        table = np.zeros([_max_layers(loads, pp), 3], dtype=np.float64)      # [layers, (present, max, min)]
        for i, (hi, lo) in per.items():
            table[i] = (1.0, hi, lo)
        t = paddle.to_tensor(table)
        pp.all_reduce(t)
        table = t.numpy()
        per = {i: (float(table[i, 1]), float(table[i, 2])) for i in range(len(table)) if table[i, 0] > 0}
    if not per:
        return {}
    order = sorted(per)
    highs, lows = [round(per[i][0], 4) for i in order], [round(per[i][1], 4) for i in order]
    return {"moe_load_max": max(highs), "moe_load_min": min(lows), "moe_load_layers": order,
            "moe_load_max_per_layer": highs, "moe_load_min_per_layer": lows}


def _max_layers(loads: dict, pp) -> int:
    """One more than the largest sparse-layer index on any stage."""
    t = paddle.to_tensor([max(loads) + 1 if loads else 0], dtype="int64")
    pp.all_reduce(t, op=paddle.distributed.ReduceOp.MAX)
    return int(t.item())


def balance_step(model, env, rate: float) -> dict:
    """After an optimizer step: sum the step's loads, move the correction biases, and
    return :func:`load_summary` (empty for dense models)."""
    if model.config.moe is None:
        return {}
    loads = take_loads(model, env)
    update_bias(model, loads, rate)
    return load_summary(loads, env)
