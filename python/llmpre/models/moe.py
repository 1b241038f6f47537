"""Mixture-of-experts feed-forward block (Mixtral, Qwen1.5-MoE / Qwen2-MoE, DeepSeek-V2/V3).

For tokens ``x_t`` (flattened over batch and sequence) and experts ``E_e``
(SwiGLU MLPs of width ``moe_intermediate_size``):

    s_t      = softmax(x_t W_g)            or sigmoid(x_t W_g) (DeepSeek-V3)
    K_t      = top-k experts by s_t        (grouped / bias-corrected variants: MoEConfig)
    w_t,e    = s_t,e for e in K_t          renormalised to sum 1 if norm_topk_prob, times routed_scaling_factor
    y_t      = sum_{e in K_t} w_t,e E_e(x_t)  +  [sigmoid(x_t w_s)] S(x_t)   (shared expert S, optional gate)

Router math runs in fp32.  The block also returns the statistics the model turns
into the auxiliary loss (see :func:`switch_aux_loss`, :func:`seq_aux_loss`).

Expert compute is grouped, with no host synchronisation: the ``n k`` (token, slot)
pairs are sorted by expert once per layer (a stable sort, so each expert's rows stay
in token order), per-expert row offsets are found on the device (``searchsorted``),
all experts run as one ``ops.grouped_mlp`` call over the tokens' rows in that order
(the fused op gathers them while packing its GEMM operands), and ``ops.moe_combine``
sums each token's ``k`` outputs times their routing weights.  Dropless by default; with ``moe_capacity_factor`` ``c > 0``
each expert keeps at most ``ceil(c n k / E)`` pairs, the earliest tokens first, and
the later pairs contribute nothing (their rows sort past every expert).
"""

from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.nn.initializer import Constant

from llmpre.errors import ConfigError
from llmpre.models.config import ModelConfig
from llmpre.models.layers import MLP
from llmpre.ops.select import Ops


class Router(nn.Layer):
    """``weight``: ``[hidden, experts]``; DeepSeek-V3 adds ``e_score_correction_bias``
    ``[experts]``, used only to choose experts (it is updated outside of gradients, so it
    is created with ``stop_gradient=True``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.cfg = config.moe
        self.weight = self.create_parameter([config.hidden_size, self.cfg.num_experts])
        self.e_score_correction_bias = None
        if self.cfg.topk_method == "noaux_tc":
            self.e_score_correction_bias = self.create_parameter(
                [self.cfg.num_experts], default_initializer=Constant(0.0))
            self.e_score_correction_bias.stop_gradient = True

    def forward(self, x):
        """x ``[n, hidden]`` -> (weights ``[n, k]``, experts ``[n, k]`` int64, scores ``[n, E]`` fp32)."""
        c = self.cfg
        logits = paddle.matmul(x.astype("float32"), self.weight.astype("float32"))      # [n, E]
        scores = F.softmax(logits, axis=-1) if c.scoring_func == "softmax" else F.sigmoid(logits)
        choice = scores.detach()                                                         # [n, E]
        if c.topk_method == "noaux_tc":
            choice = choice + self.e_score_correction_bias.astype("float32")
        if c.topk_method != "greedy":
            per_group = choice.reshape([-1, c.n_group, c.num_experts // c.n_group])      # [n, G, E/G]
            if c.topk_method == "noaux_tc":
                group_score = paddle.topk(per_group, 2, axis=-1)[0].sum(-1)              # [n, G]
            else:
                group_score = per_group.max(-1)                                          # [n, G]
            best = paddle.topk(group_score, c.topk_group, axis=-1)[1]                    # [n, topk_group]
            keep = F.one_hot(best, c.n_group).sum(1).astype("bool")                      # [n, G]
            fill = float("-inf") if c.topk_method == "noaux_tc" else 0.0
            per_group = paddle.where(keep.unsqueeze(-1), per_group, paddle.full_like(per_group, fill))
            choice = per_group.reshape([-1, c.num_experts])
        experts = paddle.topk(choice, c.num_experts_per_tok, axis=-1)[1]                  # [n, k]
        weights = paddle.take_along_axis(scores, experts, axis=-1)                       # [n, k]
        if c.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * c.routed_scaling_factor, experts, scores


class MoE(nn.Layer):
    def __init__(self, config: ModelConfig, ops: Ops):
        super().__init__()
        self.cfg = config.moe
        if config.mlp_type != "gated" or config.hidden_act != "silu" or config.mlp_bias:
            raise ConfigError(f"MoE experts are SwiGLU MLPs without bias; this config has mlp_type="
                              f"{config.mlp_type!r}, hidden_act={config.hidden_act!r}, mlp_bias="
                              f"{config.mlp_bias!r}: set hidden_act to silu and mlp_bias to false")
        self.ops = ops
        self.gate = Router(config)
        self.experts = nn.LayerList([MLP(config, ops, width=self.cfg.moe_intermediate_size)
                                     for _ in range(self.cfg.num_experts)])
        self.expert_load = None   # training: (token, slot) pairs routed to each expert since the last step
        self.shared_expert = self.shared_expert_gate = None
        if self.cfg.shared_expert_intermediate_size:
            self.shared_expert = MLP(config, ops, width=self.cfg.shared_expert_intermediate_size)
            if self.cfg.shared_expert_gate:
                self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias_attr=False)

    def forward(self, x):
        """x ``[b, s, h]`` -> (y ``[b, s, h]``, (experts ``[n, k]``, scores ``[n, E]``))."""
        b, s, h = x.shape
        flat = x.reshape([-1, h])                                                        # [n, h]
        weights, experts, scores = self.gate(flat)                                       # [n, k], [n, k], [n, E]
        if self.training and paddle.is_grad_enabled():   # counted once: not in eval nor recompute's no-grad pass
            load = paddle.bincount(experts.reshape([-1]), minlength=self.cfg.num_experts)  # [E]
            self.expert_load = load if self.expert_load is None else self.expert_load + load
        out = self.routed(flat, weights, experts)                                        # [n, h]
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                shared = F.sigmoid(self.shared_expert_gate(flat)) * shared
            out = out + shared
        return out.reshape([b, s, h]), (experts, scores)

    def weights(self, proj: str) -> list:
        """Every expert's ``proj`` weight ``[in, out]``: the experts keep their own parameters
        (and HF/PaddleNLP names); the grouped op reads them in place."""
        return [getattr(expert, proj).weight for expert in self.experts]

    def run_experts(self, x, offsets, index):
        """Rows ``x[index]`` ``[m, h]``, sorted by expert, offsets ``[E + 1]`` -> each row
        through its expert (rows past ``offsets[E]``: 0). The grouped op gathers the rows
        itself. Expert parallelism replaces it on each rank (:mod:`llmpre.parallel.expert`:
        the rows travel to the rank holding their expert)."""
        return self.ops.grouped_mlp(x, offsets, self.weights("gate_proj"), self.weights("up_proj"),
                                    self.weights("down_proj"), index)

    def routed(self, flat, weights, experts):
        """flat ``[n, h]``, weights ``[n, k]`` fp32, experts ``[n, k]`` -> ``sum_k w E(x)`` ``[n, h]``."""
        n, k = experts.shape
        num = self.cfg.num_experts
        key = experts.reshape([-1])                                                      # [n k] (token, slot)
        if self.cfg.moe_capacity_factor > 0:
            capacity = math.ceil(self.cfg.moe_capacity_factor * n * k / num)
            hot = F.one_hot(key, num)                                                    # [n k, E]
            rank = (hot.cumsum(0) * hot).sum(-1) - 1                                     # earlier pairs of its expert
            key = paddle.where(rank < capacity, key, paddle.full_like(key, num))        # num: dropped
        order = paddle.argsort(key, stable=True)                                         # [n k] row -> pair
        offsets = paddle.searchsorted(paddle.gather(key, order),
                                      paddle.arange(num + 1, dtype=key.dtype))           # [E + 1]
        y = self.run_experts(flat, offsets, order // k)                                  # [n k, h] by expert
        pos = paddle.argsort(order).reshape([n, k])                                      # [n, k] pair -> row
        return self.ops.moe_combine(y, pos, weights)                                     # [n, h]


def switch_aux_loss(stats, num_experts: int) -> paddle.Tensor:
    """Switch-Transformer / Mixtral load balancing over all sparse layers' tokens
    (HF's ``load_balancing_loss_func``): with ``N`` = tokens x layers,
    ``f_e = #(token, slot) routed to e / N`` and ``P_e = sum softmax probabilities / N``,
    the loss is ``E * sum_e f_e P_e``; gradients flow through ``P`` only."""
    counts = sum(F.one_hot(experts.reshape([-1]), num_experts).sum(0) for experts, _ in stats)   # [E]
    probs = sum(scores.sum(0) for _, scores in stats)                                          # [E]
    n = float(sum(scores.shape[0] for _, scores in stats))
    return num_experts * ((counts.astype("float32") / n) * (probs / n)).sum()


def seq_aux_loss(stats, num_experts: int, batch: int) -> paddle.Tensor:
    """DeepSeek's sequence-wise balance loss, summed over sparse layers: per sequence,
    ``sum_e (E / (k T)) * count_e * mean_t s'_t,e`` averaged over the batch, where
    ``s'`` are the router scores normalised to sum 1 per token."""
    total = 0.0
    for experts, scores in stats:
        k = experts.shape[-1]
        norm = scores / scores.sum(-1, keepdim=True)                                   # [n, E]
        norm = norm.reshape([batch, -1, num_experts])                                  # [b, T, E]
        seq = norm.shape[1]
        counts = F.one_hot(experts.reshape([batch, -1]), num_experts).sum(1).astype("float32")  # [b, E]
        ce = counts * num_experts / (seq * k)
        total = total + (ce * norm.mean(1)).sum(-1).mean()
    return total
