"""The pure-Paddle reference ops against float64 numpy formulas (the selection point: test_select_ops.py)."""

import numpy as np
import paddle
import pytest

from llmpre.ops import reference as R

# fp32 ops vs float64 numpy on O(1) values: a few ulps of the result (eps32 ~ 1.2e-7)
# times a handful of accumulations; 1e-5 leaves margin without hiding a wrong formula.
ATOL = 1e-5


def _t(a, grad=False):
    t = paddle.to_tensor(np.asarray(a, dtype=np.float32))
    t.stop_gradient = not grad
    return t


def _np_rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _np_attention(q, k, v, causal):
    """q [b, sq, h, d], k/v [b, sk, kv, d]; explicit per-head loop with head h -> KV head h // groups."""
    b, sq, h, d = q.shape
    sk, kv = k.shape[1], k.shape[2]
    out = np.zeros_like(q)
    for head in range(h):
        kh = head // (h // kv)
        s = np.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, kh]) / np.sqrt(d)
        if causal:
            s = np.where(np.arange(sk)[None, :] > np.arange(sq)[:, None] + (sk - sq), -np.inf, s)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, :, head] = np.einsum("bqk,bkd->bqd", p, v[:, :, kh])
    return out


def test_rms_norm_matches_formula():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 5, 16)) * 3, 1 + 0.2 * rng.normal(size=16)
    want = w * x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5)
    got = R.rms_norm(_t(x), _t(w), 1e-5).numpy()
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-5)


def test_rms_norm_bf16_input_keeps_dtype_and_computes_in_fp32():
    # Paddle's CPU build has no bf16 pow/mean/rsqrt kernels, so this only runs if the
    # statistics really are computed in fp32.
    rng = np.random.default_rng(1)
    x = _t(rng.normal(size=(4, 32)) * 50).astype("bfloat16")
    w = paddle.ones([32], dtype="bfloat16")
    out = R.rms_norm(x, w, 1e-6)
    assert out.dtype == paddle.bfloat16
    want = R.rms_norm(x.astype("float32"), paddle.ones([32]), 1e-6).numpy()
    # bf16 keeps 8 significant bits: one rounding of an O(1) value is <= 2^-8 relative.
    np.testing.assert_allclose(out.astype("float32").numpy(), want, rtol=2 ** -8, atol=0)


def _np_rotary(x, c, s, interleaved):
    """x [b, s, h, d]; c, s [b or 1, s, 1, r/2]: rotate pairs of the first r features."""
    r = 2 * c.shape[-1]
    out = x.copy()
    if interleaved:
        a, b = x[..., 0:r:2], x[..., 1:r:2]
        out[..., 0:r:2], out[..., 1:r:2] = a * c - b * s, b * c + a * s
    else:
        a, b = x[..., : r // 2], x[..., r // 2: r]
        out[..., : r // 2], out[..., r // 2: r] = a * c - b * s, b * c + a * s
    return out


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rot_dim", [8, 4])  # full and partial rotary (head_dim 8)
@pytest.mark.parametrize("with_ids", [False, True])
def test_rotary_layouts_partial_and_position_ids(interleaved, rot_dim, with_ids):
    rng = np.random.default_rng(2)
    b, s, h, kv, d, positions = 2, 6, 4, 2, 8, 20
    q, k = rng.normal(size=(b, s, h, d)), rng.normal(size=(b, s, kv, d))
    angles = rng.uniform(0, 6, size=(positions, rot_dim // 2))
    ids = rng.integers(0, positions, size=(b, s)) if with_ids else None
    rows = angles[ids][:, :, None] if with_ids else angles[None, :s, None]
    got_q, got_k = R.rotary(_t(q), _t(k), _t(np.cos(angles)), _t(np.sin(angles)),
                            None if ids is None else paddle.to_tensor(ids), interleaved)
    np.testing.assert_allclose(got_q.numpy(), _np_rotary(q, np.cos(rows), np.sin(rows), interleaved), atol=ATOL)
    np.testing.assert_allclose(got_k.numpy(), _np_rotary(k, np.cos(rows), np.sin(rows), interleaved), atol=ATOL)


def test_rotary_rotate_half_equals_hf_formula():
    rng = np.random.default_rng(8)
    q = rng.normal(size=(1, 5, 2, 8))
    angles = rng.uniform(0, 6, size=(5, 4))
    full = np.concatenate([angles, angles], -1)[None, :, None]  # HF's [cos, cos] duplicated table
    got, _ = R.rotary(_t(q), _t(q), _t(np.cos(angles)), _t(np.sin(angles)))
    np.testing.assert_allclose(got.numpy(), q * np.cos(full) + _np_rotate_half(q) * np.sin(full), atol=ATOL)


def _np_attention_general(q, k, v, causal, window=None, slopes=None, scale=None):
    b, sq, h, d = q.shape
    sk, kv = k.shape[1], k.shape[2]
    scale = 1 / np.sqrt(d) if scale is None else scale
    out = np.zeros((b, sq, h, v.shape[-1]))
    pos = np.arange(sq)[:, None] + (sk - sq)
    j = np.arange(sk)[None, :]
    visible = np.ones((sq, sk), bool)
    if causal:
        visible &= j <= pos
    if window is not None:
        visible &= j > pos - window
    for head in range(h):
        kh = head // (h // kv)
        sc = np.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, kh]) * scale
        if slopes is not None:
            sc = sc + slopes[head] * (j - pos)
        sc = np.where(visible, sc, -np.inf)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        out[:, :, head] = np.einsum("bqk,bkd->bqd", p / p.sum(-1, keepdims=True), v[:, :, kh])
    return out


@pytest.mark.parametrize("causal,window,alibi,scale", [
    (True, 3, False, None), (True, None, True, None), (False, None, True, 0.5), (True, 2, True, None),
    (False, 4, False, None)])
def test_attention_windows_alibi_and_scale(causal, window, alibi, scale):
    rng = np.random.default_rng(9)
    q, k, v = rng.normal(size=(2, 7, 4, 8)), rng.normal(size=(2, 7, 2, 8)), rng.normal(size=(2, 7, 2, 8))
    slopes = 2.0 ** -np.arange(1, 5) if alibi else None
    got = R.attention(_t(q), _t(k), _t(v), causal=causal, window=window,
                      alibi_slopes=None if slopes is None else _t(slopes), scale=scale)
    np.testing.assert_allclose(got.numpy(), _np_attention_general(q, k, v, causal, window, slopes, scale),
                               atol=ATOL)


@pytest.mark.parametrize("h,kv,causal", [(4, 4, True), (4, 2, True), (6, 1, True), (4, 2, False)])
def test_attention_matches_numpy_with_gqa(h, kv, causal):
    rng = np.random.default_rng(3)
    b, s, d = 2, 7, 8
    q, k, v = rng.normal(size=(b, s, h, d)), rng.normal(size=(b, s, kv, d)), rng.normal(size=(b, s, kv, d))
    want = _np_attention(q, k, v, causal)
    for fn in (R.attention_math, R.attention_sdpa, R.attention):
        got = fn(_t(q), _t(k), _t(v), causal=causal)
        assert got.shape == [b, s, h, d]
        np.testing.assert_allclose(got.numpy(), want, atol=ATOL, err_msg=fn.__name__)


def test_attention_causal_with_fewer_queries_than_keys():
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(1, 3, 2, 8)), rng.normal(size=(1, 5, 1, 8)), rng.normal(size=(1, 5, 1, 8))
    got = R.attention_math(_t(q), _t(k), _t(v), causal=True)
    np.testing.assert_allclose(got.numpy(), _np_attention(q, k, v, True), atol=ATOL)


def test_attention_gradients_agree_between_implementations():
    rng = np.random.default_rng(5)
    arrays = rng.normal(size=(2, 6, 4, 8)), rng.normal(size=(2, 6, 2, 8)), rng.normal(size=(2, 6, 2, 8))
    g = _t(rng.normal(size=(2, 6, 4, 8)))
    grads = []
    for fn in (R.attention_math, R.attention_sdpa):
        q, k, v = (_t(a, grad=True) for a in arrays)
        (fn(q, k, v) * g).sum().backward()
        grads.append([t.grad.numpy() for t in (q, k, v)])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=ATOL)


def test_swiglu():
    rng = np.random.default_rng(6)
    gate, up = rng.normal(size=(3, 10)), rng.normal(size=(3, 10))
    want = gate / (1 + np.exp(-gate)) * up
    np.testing.assert_allclose(R.swiglu(_t(gate), _t(up)).numpy(), want, atol=ATOL)


def test_cross_entropy_mean_over_kept_positions():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 5, 11)) * 2
    labels = rng.integers(0, 11, size=(2, 5))
    labels[0, 1] = labels[1, 4] = -100
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = labels != -100
    want = -np.take_along_axis(logp, np.where(keep, labels, 0)[..., None], -1)[..., 0][keep].mean()
    got = R.cross_entropy(_t(logits), paddle.to_tensor(labels), ignore_index=-100)
    assert got.dtype == paddle.float32 and got.shape == []
    np.testing.assert_allclose(got.item(), want, atol=ATOL)


def test_cross_entropy_all_ignored_is_zero_with_finite_grad():
    logits = _t(np.ones((2, 3, 4)), grad=True)
    loss = R.cross_entropy(logits, paddle.full([2, 3], -100, dtype="int64"))
    loss.backward()
    assert loss.item() == 0.0
    assert np.isfinite(logits.grad.numpy()).all()
