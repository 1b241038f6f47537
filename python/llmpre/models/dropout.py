"""Dropout whose masks are a pure function of the run's seed, the training step,
the sample, the site and the element, never of a generator's state.

PaddleNLP's GPT draws its masks from Paddle's global generator, so they depend on
everything drawn before (and on the layout). Here each mask is computed:

    step key    k = first 4 bytes of blake2b(f"{seed}/dropout/{step}")      (Python)
    sample key  s_b = fmix32( sum_t fmix32(ids[b, t] * 0x9E3779B1 ^ t) mod 2^32  ^  k )
    element     h = fmix32( fmix32(c ^ fmix32(s_b ^ site)) ^ site * 0x85EBCA6B )
    keep        h >= round(p * 2^32);   kept values are scaled by 1 / (1 - p)

where ``c`` is the element's index within its sample in the *whole* tensor (a
tensor-parallel rank holding heads ``[h0, h0 + n)`` of the attention probabilities
offsets its indices by ``h0 * seq * seq``), ``site`` numbers the dropout call
(embedding 0, layer ``i``'s attention probabilities / attention output / MLP output
``3i + 1 .. 3i + 3``) and ``fmix32`` is MurmurHash3's 32-bit finaliser. The sample
key comes from the sample's own token ids, so a sample gets the same masks whichever
rank, micro-batch or layout processes it, a resumed run gets the masks of the
uninterrupted one, and recomputation repeats them. All arithmetic is int64 Paddle
ops with products kept below 2^63 (no overflow), so any device computes the same bits.
"""

from __future__ import annotations

import hashlib

import paddle

__all__ = ["step_key", "sample_keys", "dropout", "set_dropout_step", "supports_dropout",
           "attention_with_dropout"]

M32 = 0xFFFFFFFF


def _int(value: int) -> paddle.Tensor:
    return paddle.full([], value, dtype="int64")


def _mul32(x: paddle.Tensor, c: int) -> paddle.Tensor:
    """``(x * c) mod 2^32`` for ``0 <= x < 2^32``, in int64 without overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + ((x * hi) % 65536) * 65536) % (M32 + 1)


def fmix32(h: paddle.Tensor) -> paddle.Tensor:
    """MurmurHash3's finaliser on int64 tensors holding 32-bit values."""
    h = h ^ (h // 65536)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h // 8192)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h // 65536)


def step_key(seed: int, step: int) -> int:
    digest = hashlib.blake2b(f"{seed}/dropout/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little")


def sample_keys(input_ids: paddle.Tensor, key: int) -> paddle.Tensor:
    """``[batch]`` int64 keys, one per sample, from its token ids and the step key."""
    ids = input_ids.astype("int64") % (M32 + 1)                                # [b, s]
    pos = paddle.arange(ids.shape[1], dtype="int64").unsqueeze(0)            # [1, s]
    per_token = fmix32(_mul32(ids, 0x9E3779B1) ^ pos)                         # [b, s]
    total = per_token.sum(axis=1) % (M32 + 1)                                 # [b]
    return fmix32(total ^ _int(key))


def dropout(x: paddle.Tensor, p: float, keys: paddle.Tensor | None, site: int,
            offset: int = 0) -> paddle.Tensor:
    """``x`` ``[batch, ...]`` with each element dropped with probability ``p`` (kept ones
    scaled by ``1 / (1 - p)``); identity when ``p`` is 0 or ``keys`` is None (not training)."""
    if keys is None or p <= 0:
        return x
    rest = x.shape[1:]
    n = 1
    for d in rest:
        n *= d
    if offset + n > M32:
        raise ValueError(f"dropout site with {offset + n} elements per sample exceeds 2^32")
    c = (paddle.arange(n, dtype="int64") + offset).reshape([1] + list(rest))  # [1, ...]
    k = fmix32(keys ^ _int(site)).reshape([-1] + [1] * len(rest))             # [b, 1, ...]
    h = fmix32(fmix32(c ^ k) ^ _mul32(_int(site), 0x85EBCA6B))
    keep = (h >= int(round(p * 2 ** 32))).astype(x.dtype)                     # [b, ...]
    return x * keep * (1.0 / (1.0 - p))


def attention_with_dropout(q, k, v, p: float, keys, site: int, head_offset: int = 0,
                           window: int | None = None, alibi_slopes=None) -> paddle.Tensor:
    """Causal attention with dropout on the probabilities: the math of
    :func:`llmpre.ops.reference.attention_math` (fp32 scores and softmax), the
    ``[b, heads, sq, sk]`` probabilities dropped as :func:`dropout` says, head
    ``h`` of this rank being head ``head_offset + h`` of the model."""
    import math

    import paddle.nn.functional as F

    from llmpre.ops.reference import attention_bias, repeat_kv

    groups = q.shape[2] // k.shape[2]
    qt = (q * (1.0 / math.sqrt(q.shape[-1]))).transpose([0, 2, 1, 3])   # [b, h, sq, d]
    kt = repeat_kv(k, groups).transpose([0, 2, 1, 3])                   # [b, h, sk, d]
    vt = repeat_kv(v, groups).transpose([0, 2, 1, 3])                   # [b, h, sk, dv]
    scores = paddle.matmul(qt, kt, transpose_y=True).astype("float32")  # [b, h, sq, sk]
    bias = attention_bias(q.shape[1], k.shape[1], True, window, alibi_slopes)
    if bias is not None:
        scores = scores + bias
    probs = F.softmax(scores, axis=-1).astype(q.dtype)                  # [b, h, sq, sk]
    probs = dropout(probs, p, keys, site, offset=head_offset * q.shape[1] * k.shape[1])
    return paddle.matmul(probs, vt).transpose([0, 2, 1, 3])             # [b, sq, h, dv]


def supports_dropout(model, config) -> bool:
    """PaddleNLP's run_pretrain sets the two dropout keys on configs that have them:
    GPT's (model_type gpt2 here), not OPT's or Bloom's (other names)."""
    return config.model_type == "gpt2" and hasattr(model, "set_dropout")


def set_dropout_step(model, step: int) -> None:
    """Key the next training step's masks (no-op for a model without dropout)."""
    seed = getattr(model, "dropout_seed", None)
    if seed is not None:
        model.dropout_key = step_key(seed, step)
