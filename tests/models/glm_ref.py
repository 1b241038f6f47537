"""An independent numpy forward of GLM (ChatGLM-6B / GLM v1 and GLM-130B), float64, one
sample at a time, written from THUDM's description of the model (chatglm-6b's
``modeling_chatglm.py``, GLM-130B's SAT model and paper) and reading the tensors under
THUDM's names and layout (``query_key_value`` rows per head ``[q | k | v]``).

Positions and the attention mask come from the tokens by the original's rules, written
here as plain loops over the token list: context = tokens before the first ``<sop>``;
mask token ``[gMASK]`` if present, else ``[MASK]``; a sample without ``<sop>`` is causal.
"""

from __future__ import annotations

import math

import numpy as np


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rotate(x, pos, dim):
    """RoPE in rotate-half pairs (i, i + dim/2) of x [s, heads, dim] at integer positions pos [s]."""
    inv = 1.0 / 10000.0 ** (np.arange(0, dim, 2) / dim)              # [dim/2]
    ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None]       # [s, dim/2]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None]               # [s, 1, dim]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None]
    half = np.concatenate([-x[..., dim // 2:], x[..., : dim // 2]], -1)
    return x * cos + half * sin


def positions_and_context(ids, c):
    """(positions, block positions or None, context length) of one sample."""
    ids = [int(t) for t in ids]
    s = len(ids)
    sop, gmask, mask = c["bos_token_id"], c["gmask_token_id"], c["mask_token_id"]
    two_d = c.get("position_encoding_2d", True)
    if sop not in ids:                                  # plain text: causal
        return list(range(s)), ([0] * s if two_d else None), 0
    context = ids.index(sop)
    use_gmask = gmask in ids
    mask_token = gmask if use_gmask else mask
    positions = list(range(s))
    if mask_token in ids and (two_d or not use_gmask):
        mask_at = ids.index(mask_token)
        positions[context:] = [mask_at] * (s - context)
    blocks = [0] * context + list(range(1, s - context + 1)) if two_d else None
    return positions, blocks, context


def forward(t, c, ids):
    """Logits [s, vocab] of one sample: ``t`` HF-named float64 tensors, ``c`` the HF config dict."""
    H, L, eps = c["num_attention_heads"], c["num_layers"], c["layernorm_epsilon"]
    h = c["hidden_size"]
    d, s = h // H, len(ids)
    two_d = c.get("position_encoding_2d", True)
    geglu = c.get("activation") == "geglu"
    pos, blocks, context = positions_and_context(ids, c)
    allowed = np.tril(np.ones((s, s), bool))
    allowed[:, :context] = True
    alpha = math.sqrt(2 * L)
    x = t["transformer.word_embeddings.weight"][ids]
    for i in range(L):
        p = f"transformer.layers.{i}."
        a = layer_norm(x, t[p + "input_layernorm.weight"], t[p + "input_layernorm.bias"], eps)
        qkv = a @ t[p + "attention.query_key_value.weight"].T + t[p + "attention.query_key_value.bias"]
        qkv = qkv.reshape(s, H, 3 * d)                                  # per head [q | k | v]
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        if two_d:
            q = np.concatenate([rotate(q[..., :d // 2], pos, d // 2), rotate(q[..., d // 2:], blocks, d // 2)], -1)
            k = np.concatenate([rotate(k[..., :d // 2], pos, d // 2), rotate(k[..., d // 2:], blocks, d // 2)], -1)
        else:
            q, k = rotate(q, pos, d), rotate(k, pos, d)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        scores = np.where(allowed[None], scores, -np.inf)
        ctx = np.einsum("hqk,khd->qhd", softmax(scores), v).reshape(s, h)
        att = ctx @ t[p + "attention.dense.weight"].T + t[p + "attention.dense.bias"]
        y = a * alpha + att
        g = layer_norm(y, t[p + "post_attention_layernorm.weight"], t[p + "post_attention_layernorm.bias"], eps)
        u = g @ t[p + "mlp.dense_h_to_4h.weight"].T + t[p + "mlp.dense_h_to_4h.bias"]
        if geglu:
            x1, x2 = np.split(u, 2, -1)
            u = x1 * gelu_erf(x2)
        else:
            u = gelu_tanh(u)
        x = g * alpha + u @ t[p + "mlp.dense_4h_to_h.weight"].T + t[p + "mlp.dense_4h_to_h.bias"]
    x = layer_norm(x, t["transformer.final_layernorm.weight"], t["transformer.final_layernorm.bias"], eps)
    return x @ t["transformer.word_embeddings.weight"].T


def logits(tensors, config, ids):
    """``[batch, seq, vocab]`` float64 logits from THUDM-named tensors and an HF config dict."""
    t = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    return np.stack([forward(t, config, row) for row in np.asarray(ids)])
