"""The kernel-selection point: flags -> fused or reference ops, defaults, refusal and fallback."""

from __future__ import annotations

import warnings

import numpy as np
import paddle
import pytest

import llmpre.ops as ops
from llmpre.errors import ConfigError
from llmpre.ops import _library, fused
from llmpre.ops import reference as R
from llmpre.ops.select import FLAGS, REFERENCE, flags_from_args, select_ops

BUILT = all(ops.available(op) for _, op, _ in FLAGS.values())
needs_ops = pytest.mark.skipif(not BUILT, reason=f"op library incomplete: {ops.status()['unavailable']}")
ALL_FALSE = {flag: False for flag in FLAGS}
ALL_TRUE = {flag: True for flag in FLAGS}


@pytest.fixture(autouse=True)
def _fresh_selection():
    select_ops.cache_clear()
    yield
    select_ops.cache_clear()


@pytest.fixture
def no_library(monkeypatch):
    """Pretend the op library was not built."""
    from llmpre.ops import select as S

    broken = _library.Library(error="llmpre was built without its Paddle ops (test)")
    monkeypatch.setattr(_library, "load", lambda: broken)
    monkeypatch.setattr(S, "_warned", set())
    return broken


def test_all_false_is_the_reference_set_and_cached():
    chosen = select_ops(**ALL_FALSE)
    assert chosen == REFERENCE and chosen is select_ops(**ALL_FALSE)


@needs_ops
def test_default_is_fused_where_built():
    chosen = select_ops()
    assert dict(chosen.names) == {field: f"{op} (auto)" for field, op, _ in FLAGS.values()}
    assert chosen is select_ops()


@needs_ops
def test_true_selects_the_fused_functions_themselves():
    chosen = select_ops(**ALL_TRUE)
    for field, op, fn in FLAGS.values():
        assert getattr(chosen, field) is fn and dict(chosen.names)[field] == op


@needs_ops
def test_flags_are_independent():
    chosen = select_ops(use_fused_rms_norm=True, use_fused_rope=False, use_flash_attention=False,
                        use_fused_swiglu=False, use_fused_cross_entropy=False)
    assert chosen.rms_norm is fused.rms_norm and chosen.rotary is R.rotary
    assert chosen.attention is R.attention and chosen.swiglu is R.swiglu
    assert chosen.cross_entropy is R.cross_entropy


@needs_ops
def test_auto_sends_dtypes_without_a_kernel_to_the_reference():
    # float64 has no CPU kernel: auto must compute it (with the reference), strict must refuse.
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.normal(size=(3, 8)))            # float64
    w = paddle.to_tensor(1 + rng.normal(size=8) * 0.1)
    got = select_ops().rms_norm(x, w, 1e-6)
    assert got.dtype == paddle.float64
    np.testing.assert_array_equal(got.numpy(), R.rms_norm(x, w, 1e-6).numpy())
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        select_ops(**ALL_TRUE).rms_norm(x, w, 1e-6)
    x32, w32 = x.astype("float32"), w.astype("float32")    # and fp32 goes to the kernel
    np.testing.assert_array_equal(select_ops().rms_norm(x32, w32, 1e-6).numpy(),
                                  fused.rms_norm(x32, w32, 1e-6).numpy())


def test_requested_but_unavailable_is_a_config_error_naming_flag_and_reason(no_library):
    with pytest.raises(ConfigError) as info:
        select_ops(use_fused_rms_norm=True)
    message = str(info.value)
    assert "use_fused_rms_norm" in message and "built without its Paddle ops" in message
    assert "allow_reference_fallback" in message


def test_fallback_when_allowed_warns_once(no_library):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = select_ops(use_fused_rope=True, allow_reference_fallback=True)
        select_ops.cache_clear()
        again = select_ops(use_fused_rope=True, allow_reference_fallback=True)
    assert first.rotary is R.rotary and again == first
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "use_fused_rope=True" in messages[0]
    assert "built without its Paddle ops" in messages[0]


def test_auto_without_the_library_is_the_reference_silently(no_library):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_ops() == REFERENCE


def test_gpu_device_without_cuda_kernels_is_unavailable(monkeypatch):
    from llmpre.ops import select as S

    monkeypatch.setattr(S, "_device_kind", lambda: "gpu")
    if BUILT:  # CPU-only build: the CPU kernels cannot take GPU tensors
        with pytest.raises(ConfigError, match="no CUDA kernel for `llmpre_swiglu`"):
            select_ops(use_fused_swiglu=True)
    assert select_ops(**{**ALL_FALSE, "use_fused_swiglu": None}) == REFERENCE


def test_non_bool_flag_is_refused():
    with pytest.raises(ConfigError, match="use_fused_swiglu"):
        select_ops(use_fused_swiglu="yes")


def test_training_arguments_carry_the_flags():
    from llmpre.train.args import parse_arguments

    args = parse_arguments(None, {"use_fused_rms_norm": "false", "use_flash_attention": "true",
                                  "allow_reference_fallback": "true"})
    flags = flags_from_args(args)
    assert flags == {"use_flash_attention": True, "use_fused_rms_norm": False, "use_fused_rope": None,
                     "use_fused_swiglu": None, "use_fused_cross_entropy": None,
                     "allow_reference_fallback": True}
    defaults = flags_from_args(parse_arguments(None, {}))
    assert all(defaults[f] is None for f in FLAGS) and defaults["allow_reference_fallback"] is False
