"""Independent numpy forwards of the families transformers does not ship (their checkpoints
need ``trust_remote_code``): Qwen v1, Baichuan/Baichuan2, ChatGLM2/3 and Yuan2.

Each is written from the family's published modeling description and reads the tensors
under their HF checkpoint names and layouts (fused ``c_attn`` / ``W_pack`` /
``query_key_value``, Yuan's interleaved q/k heads), so a match checks llmpre's layout
mapping as well as its math.  Everything is float64, one sequence at a time.
"""

from __future__ import annotations

import numpy as np


def rms(x, w, eps):
    return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rope_tables(seq, dim, theta):
    inv = 1.0 / theta ** (np.arange(0, dim, 2) / dim)          # [dim/2]
    ang = np.arange(seq)[:, None] * inv[None]                  # [s, dim/2]
    return np.cos(ang), np.sin(ang)


def rope_half(x, cos, sin):
    """rotate_half on the first 2*cos.shape[-1] features of x [s, heads, d]."""
    r = 2 * cos.shape[-1]
    a, b, rest = x[..., : r // 2], x[..., r // 2: r], x[..., r:]
    c, s = cos[:, None], sin[:, None]
    return np.concatenate([a * c - b * s, b * c + a * s, rest], -1)


def rope_pairs(x, cos, sin):
    """Interleaved pairs (2i, 2i+1) on the first 2*cos.shape[-1] features (ChatGLM)."""
    r = 2 * cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    even, odd = rot[..., 0::2], rot[..., 1::2]
    c, s = cos[:, None], sin[:, None]
    out = np.stack([even * c - odd * s, odd * c + even * s], -1).reshape(rot.shape)
    return np.concatenate([out, rest], -1)


def attend(q, k, v, bias=None):
    """Causal attention, q [s, H, d], k/v [s, G, d] with H % G == 0 -> [s, H*d]."""
    s, heads, d = q.shape
    groups = heads // k.shape[1]
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
    if bias is not None:
        scores = scores + bias
    scores = np.where(np.tril(np.ones((s, s), bool))[None], scores, -np.inf)
    return np.einsum("hqk,khd->qhd", softmax(scores), v).reshape(s, heads * d)


def alibi_bias(heads, s):
    def powers(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]
    closest = 2 ** int(np.floor(np.log2(heads)))
    slopes = np.array(powers(closest) + powers(2 * closest)[0::2][: heads - closest])
    return slopes[:, None, None] * np.arange(s)[None, None, :]   # slope * key position (Baichuan's form)


def lin(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def qwen(t, c, ids):
    """Qwen v1: c_attn = [q | k | v] with bias, rotate_half RoPE on rotary_pct of each head,
    MLP c_proj(w1(x) * silu(w2(x)))."""
    H, d, L = c["num_attention_heads"], c["kv_channels"], c["num_hidden_layers"]
    eps = c["layer_norm_epsilon"]
    x = t["transformer.wte.weight"][ids]
    cos, sin = rope_tables(len(ids), int(d * c["rotary_pct"]), c["rotary_emb_base"])
    for i in range(L):
        p = f"transformer.h.{i}."
        h = rms(x, t[p + "ln_1.weight"], eps)
        q, k, v = np.split(lin(h, t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"]), 3, -1)
        q, k, v = (a.reshape(len(ids), H, d) for a in (q, k, v))
        a = attend(rope_half(q, cos, sin), rope_half(k, cos, sin), v)
        x = x + lin(a, t[p + "attn.c_proj.weight"])
        h = rms(x, t[p + "ln_2.weight"], eps)
        x = x + lin(lin(h, t[p + "mlp.w1.weight"]) * silu(lin(h, t[p + "mlp.w2.weight"])), t[p + "mlp.c_proj.weight"])
    return lin(rms(x, t["transformer.ln_f.weight"], eps), t["lm_head.weight"])


def baichuan(t, c, ids):
    """Baichuan: W_pack = [q | k | v]; RoPE (7B) or ALiBi (13B); Baichuan2's NormHead."""
    H, L, eps = c["num_attention_heads"], c["num_hidden_layers"], c["rms_norm_eps"]
    d = c["hidden_size"] // H
    s = len(ids)
    x = t["model.embed_tokens.weight"][ids]
    cos, sin = rope_tables(s, d, c.get("rope_theta", 10000.0))
    for i in range(L):
        p = f"model.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"], eps)
        q, k, v = (a.reshape(s, H, d) for a in np.split(lin(h, t[p + "self_attn.W_pack.weight"]), 3, -1))
        if c["alibi"]:
            a = attend(q, k, v, alibi_bias(H, s))
        else:
            a = attend(rope_half(q, cos, sin), rope_half(k, cos, sin), v)
        x = x + lin(a, t[p + "self_attn.o_proj.weight"])
        h = rms(x, t[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(silu(lin(h, t[p + "mlp.gate_proj.weight"])) * lin(h, t[p + "mlp.up_proj.weight"]),
                    t[p + "mlp.down_proj.weight"])
    w = t["lm_head.weight"]
    if c["lm_head_norm"]:
        w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    return lin(rms(x, t["model.norm.weight"], eps), w)


def chatglm(t, c, ids):
    """ChatGLM2/3: query_key_value = [q (H d) | k (G d) | v (G d)] with bias, multi-query groups,
    RoPE on the first half of each head in interleaved pairs, MLP silu(x0) * x1 of dense_h_to_4h."""
    H, G, d, L = c["num_attention_heads"], c["multi_query_group_num"], c["kv_channels"], c["num_layers"]
    eps, s = c["layernorm_epsilon"], len(ids)
    x = t["transformer.embedding.word_embeddings.weight"][ids]
    cos, sin = rope_tables(s, d // 2, 10000.0 * c.get("rope_ratio", 1.0))
    for i in range(L):
        p = f"transformer.encoder.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"], eps)
        qkv = lin(h, t[p + "self_attention.query_key_value.weight"], t[p + "self_attention.query_key_value.bias"])
        q, k, v = np.split(qkv, [H * d, H * d + G * d], -1)
        q, k, v = q.reshape(s, H, d), k.reshape(s, G, d), v.reshape(s, G, d)
        a = attend(rope_pairs(q, cos, sin), rope_pairs(k, cos, sin), v)
        x = x + lin(a, t[p + "self_attention.dense.weight"])
        h = rms(x, t[p + "post_attention_layernorm.weight"], eps)
        x0, x1 = np.split(lin(h, t[p + "mlp.dense_h_to_4h.weight"]), 2, -1)
        x = x + lin(silu(x0) * x1, t[p + "mlp.dense_4h_to_h.weight"])
    return lin(rms(x, t["transformer.encoder.final_layernorm.weight"], eps), t["transformer.output_layer.weight"])


def _causal_conv(x, w, b):
    """Yuan's Conv2d((2, 1), padding (1, 0)) keeping the first s outputs: y_t = W0 x_{t-1} + W1 x_t + b."""
    prev = np.concatenate([np.zeros_like(x[:1]), x[:-1]], 0)
    return prev @ w[:, :, 0, 0].T + x @ w[:, :, 1, 0].T + b


def yuan(t, c, ids):
    """Yuan2: localized filtering (two causal convolutions + RMSNorm with a residual) feeds q/k;
    q_proj|k_proj outputs are regrouped per head as [q_h | k_h]; MLP down(gate(x) * silu(up(x)))."""
    H, L, eps = c["num_attention_heads"], c["num_hidden_layers"], c["rms_norm_eps"]
    d, s = c["hidden_size"] // H, len(ids)
    x = t["model.embed_tokens.weight"][ids]
    cos, sin = rope_tables(s, d, c.get("rope_theta", 10000.0))
    for i in range(L):
        p = f"model.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"], eps)
        v = lin(h, t[p + "self_attn.v_proj.weight"]).reshape(s, H, d)
        f = p + "self_attn.lf_gate."
        y = _causal_conv(_causal_conv(h, t[f + "conv1.weight"], t[f + "conv1.bias"]), t[f + "conv2.weight"],
                         t[f + "conv2.bias"])
        lf = rms(y + h, t[f + "output_layernorm.weight"], eps)
        qk = np.concatenate([lin(lf, t[p + "self_attn.q_proj.weight"]), lin(lf, t[p + "self_attn.k_proj.weight"])], -1)
        qk = qk.reshape(s, H, 2 * d)
        q, k = qk[..., :d], qk[..., d:]
        a = attend(rope_half(q, cos, sin), rope_half(k, cos, sin), v)
        x = x + lin(a, t[p + "self_attn.o_proj.weight"])
        h = rms(x, t[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(lin(h, t[p + "mlp.gate_proj.weight"]) * silu(lin(h, t[p + "mlp.up_proj.weight"])),
                    t[p + "mlp.down_proj.weight"])
    out = t["lm_head.weight"] if "lm_head.weight" in t else t["model.embed_tokens.weight"]
    return lin(rms(x, t["model.norm.weight"], eps), out)


FORWARDS = {"qwen": qwen, "baichuan": baichuan, "chatglm": chatglm, "yuan": yuan}


def logits(tensors, config, ids):
    """``[batch, seq, vocab]`` float64 logits from HF-named tensors and an HF config dict."""
    f = FORWARDS[config["model_type"]]
    t = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    return np.stack([f(t, config, row) for row in np.asarray(ids)])


def loss(tensors, config, ids):
    """HF causal-LM loss: logits[:, :-1] against ids[:, 1:], mean over all positions."""
    z = logits(tensors, config, ids)[:, :-1]
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    target = np.asarray(ids)[:, 1:]
    return float(-np.take_along_axis(logp, target[..., None], -1).mean())
