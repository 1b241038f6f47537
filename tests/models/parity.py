"""Helpers for comparing llmpre models with reference logits, losses and gradients."""

from __future__ import annotations

import numpy as np

from llmpre.models.hf_names import checkpoint_rules, to_hf


def hf_grads(model) -> dict:
    """Every trainable parameter's gradient under its HF name and layout (numpy)."""
    params = dict(model.named_parameters())
    out = {}
    for rule in checkpoint_rules(model.config):
        if any(params[o].stop_gradient for o in rule.ours):
            continue
        grads = [params[o].grad for o in rule.ours]
        assert all(g is not None for g in grads), rule
        for name, g in zip(rule.hf, to_hf(rule, grads, model.config)):
            out[name] = g.numpy()
    return out


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
