"""The causal language-modelling loss."""

from __future__ import annotations

import paddle

from llmpre.ops.select import select_ops


def causal_lm_loss(logits: paddle.Tensor, labels: paddle.Tensor, ignore_index: int = -100) -> paddle.Tensor:
    """Mean next-token cross-entropy, an fp32 scalar.

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

    (HF's ``ForCausalLMLoss`` shifts inside the loss: it equals
    ``causal_lm_loss(logits[:, :-1], input_ids[:, 1:])``.)
    """
    return select_ops().cross_entropy(logits, labels, ignore_index=ignore_index)
