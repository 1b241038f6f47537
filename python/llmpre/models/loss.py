"""The causal language-modelling loss (and the MoE auxiliary term)."""

from __future__ import annotations

from typing import Optional

import paddle

from llmpre.ops.select import select_ops


def causal_lm_loss(logits: paddle.Tensor, labels: paddle.Tensor, ignore_index: int = -100,
                   aux_loss: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """Mean next-token cross-entropy, an fp32 scalar, plus ``aux_loss`` when given.

    logits: ``[batch, seq, vocab]``; labels: ``[batch, seq]``, **already aligned**
    with the logits: the data collator shifts (``input_ids = t[:-1]``,
    ``labels = t[1:]``), so position i of ``logits`` is scored against
    ``labels[i]`` with no shift here.  The mean runs over positions whose label is
    not ``ignore_index`` (0 if there are none).

    PaddleNLP's ``LlamaPretrainingCriterion`` instead averages over the positions
    whose per-token loss is ``> 0``, after zeroing ignored ones.  The two agree
    unless some kept position has a loss of exactly 0 (a probability of 1.0 in
    fp32 for the right token, which only a saturated softmax produces); such a
    position lowers this mean and is skipped by PaddleNLP's.

    ``aux_loss`` is a mixture-of-experts model's ``model.aux_loss`` after its
    forward pass: the router load-balancing loss already multiplied by its
    coefficient (``MoEConfig.router_aux_loss_coef``), as HF's Mixtral/Qwen-MoE add
    ``router_aux_loss_coef * aux_loss`` to the LM loss.  None (dense models, or a
    coefficient of 0) adds nothing.

    (HF's ``ForCausalLMLoss`` shifts inside the loss: it equals
    ``causal_lm_loss(logits[:, :-1], input_ids[:, 1:])``.)
    """
    loss = select_ops().cross_entropy(logits, labels, ignore_index=ignore_index)
    return loss if aux_loss is None else loss + aux_loss.astype(loss.dtype)
