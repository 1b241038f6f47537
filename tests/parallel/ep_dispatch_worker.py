"""One rank of tests/parallel/test_ep_dispatch.py (started by paddle.distributed.launch):
a MoE block with its experts split over the ep group against the same block whole on every
rank, on this rank's own tokens. Writes ``<out>/rank<r>.json``: the largest differences of
the output, the input gradient, the router gradient and this rank's experts' gradients (the
whole block's, summed over the ranks: what the ep owner must hold)."""

from __future__ import annotations

import copy
import json
import os
import sys

import numpy as np
import paddle
import paddle.nn as nn

import llmpre.ops as ops
from llmpre.models.config import ModelConfig
from llmpre.models.moe import MoE
from llmpre.parallel import expert
from llmpre.parallel.dims import ParallelDims
from llmpre.parallel.env import init_parallel


def _config(capacity: float) -> ModelConfig:
    return ModelConfig(model_type="qwen2_moe", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=4, vocab_size=64, max_position_embeddings=64,
                       moe=dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24,
                                moe_capacity_factor=capacity))


def _grads(block, x, dy):
    xt = paddle.to_tensor(x)
    xt.stop_gradient = False
    y, _ = block(xt)
    params = {n: p for n, p in block.named_parameters() if not p.stop_gradient}
    got = paddle.grad([y], [xt] + list(params.values()), [paddle.to_tensor(dy)], allow_unused=True)
    grads = {n: (np.zeros(p.shape, np.float32) if g is None else g.numpy()) for (n, p), g in zip(params.items(), got[1:])}
    return y.numpy(), got[0].numpy(), grads


def main(out_dir: str, capacity: float, unused: list[int]) -> None:
    env = init_parallel(ParallelDims(dp=2, ep=2))
    rank = env.rank
    paddle.seed(3)
    whole = MoE(_config(capacity), ops.select_ops())
    with paddle.no_grad():
        for p in whole.parameters():          # outputs O(1)
            if p.ndim == 2:
                p.set_value(p * 8.0)
        w = whole.gate.weight.numpy()
        w[0, unused] = -1e3                   # feature 0 of every token is >= 1: never chosen
        whole.gate.weight.set_value(paddle.to_tensor(w))
    split = nn.Layer()
    split.moe = copy.deepcopy(whole)
    expert.apply(split, env)
    rng = np.random.default_rng(10 + rank)   # every rank its own tokens
    x = rng.standard_normal([2, 12, 32]).astype(np.float32)
    x[..., 0] = np.abs(x[..., 0]) + 1.0
    dy = rng.standard_normal([2, 12, 32]).astype(np.float32)
    y_ref, dx_ref, g_ref = _grads(whole, x, dy)
    y, dx, g = _grads(split.moe, x, dy)
    report = {"unused_routed": int(np.isin(whole.gate(paddle.to_tensor(x.reshape([-1, 32])))[1].numpy(),
                                           unused).sum()),
              "local": list(expert.local_experts(8, 2, env.groups["ep"].index)),
              "names": sorted(g), "output": float(np.abs(y - y_ref).max()),
              "input_grad": float(np.abs(dx - dx_ref).max()), "scale": float(np.abs(y_ref).max())}
    diffs = {}
    for name, ref in g_ref.items():
        total = paddle.to_tensor(ref)
        env.groups["ep"].all_reduce(total)    # every rank's tokens' contribution
        if name in g:
            want = total.numpy() if name.startswith("experts.") else ref
            diffs[name] = [float(np.abs(g[name] - want).max()), float(np.abs(want).max())]
    report["grads"] = diffs
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(report, fh)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), [int(e) for e in sys.argv[3].split(",")])
