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
        first = select_ops(**{**ALL_FALSE, "use_fused_rope": True}, allow_reference_fallback=True)
        select_ops.cache_clear()
        again = select_ops(**{**ALL_FALSE, "use_fused_rope": True}, allow_reference_fallback=True)
    assert first.rotary is R.rotary and again == first
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "use_fused_rope=True" in messages[0]
    assert "built without its Paddle ops" in messages[0]


def test_auto_without_the_library_warns_once_with_the_cost_and_the_fix(monkeypatch):
    """A `pip install` with build isolation builds no ops: say so once, loudly."""
    from llmpre.ops import select as S

    broken = _library.Library(error="llmpre was built without its Paddle ops (Paddle was not importable "
                                    f"when the package was compiled); {_library.REBUILD}")
    monkeypatch.setattr(_library, "load", lambda: broken)
    monkeypatch.setattr(S, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert select_ops() == REFERENCE
        select_ops.cache_clear()
        assert select_ops() == REFERENCE
        assert select_ops(**ALL_FALSE) == REFERENCE      # nothing unset: nothing to say
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "1.4x slower" in messages[0] and "pip install --no-build-isolation llmpre" in messages[0]


def _fake_tensor(device: str, dtype):
    class Place:
        def is_cpu_place(self):
            return device == "cpu"

        def is_gpu_place(self):
            return device == "gpu"

    class T:
        pass

    t = T()
    t.place, t.dtype = Place(), dtype
    return t


@pytest.mark.parametrize("name,device,dtype,fused_expected", [
    ("flash_attention", "gpu", paddle.float32, False),    # the CUDA kernels have no fp32 path
    ("flash_attention", "gpu", paddle.bfloat16, True),
    ("flash_attention", "gpu", paddle.float16, True),
    ("flash_attention", "cpu", paddle.float32, True),
    ("flash_attention", "cpu", paddle.float16, False),    # no fp16 CPU kernel
    ("rms_norm", "gpu", paddle.float32, True),
    ("rms_norm", "gpu", paddle.float16, True),
    ("rotary", "gpu", paddle.bfloat16, True),
    ("cross_entropy", "gpu", paddle.float32, True),
    ("swiglu", "gpu", paddle.bfloat16, True),
    ("swiglu", "gpu", paddle.float16, False),             # the op's shared checks take fp32/bf16
    ("grouped_mlp", "gpu", paddle.bfloat16, True),        # CUTLASS's bf16 grouped GEMM
    ("grouped_mlp", "gpu", paddle.float32, False),
    ("grouped_mlp", "cpu", paddle.float32, True),
    ("grouped_mlp", "cpu", paddle.bfloat16, False),
    ("moe_combine", "gpu", paddle.bfloat16, True),        # cuda/moe_combine: fp32/fp16/bf16 storage
    ("moe_combine", "gpu", paddle.float16, True),
    ("moe_combine", "gpu", paddle.float64, False),
    ("moe_combine", "cpu", paddle.bfloat16, False),       # the CPU kernel is fp32 only
    ("rms_norm", "cpu", paddle.float64, False),
])
def test_gpu_and_cpu_rows_of_the_table_route_each_tensor(name, device, dtype, fused_expected):
    """The op table's rows decide, per call, which tensors reach a kernel; checked
    without a GPU by a tensor that only reports its place and dtype."""
    from llmpre.ops import select as S

    row = fused.TABLE[name]
    calls = []
    op = S._auto(row, lambda *a, **k: calls.append("reference"), cuda=True,
                 fused_fn=lambda *a, **k: calls.append("fused"))
    op(_fake_tensor(device, dtype))
    assert calls == ["fused" if fused_expected else "reference"]


def test_without_cuda_kernels_gpu_tensors_take_the_reference():
    from llmpre.ops import select as S

    calls = []
    op = S._auto(fused.TABLE["rms_norm"], lambda *a, **k: calls.append("reference"), cuda=False,
                 fused_fn=lambda *a, **k: calls.append("fused"))
    op(_fake_tensor("gpu", paddle.bfloat16))
    assert calls == ["reference"]


def test_every_fused_function_is_in_the_table():
    assert set(fused.TABLE) == {"rms_norm", "rotary", "flash_attention", "swiglu", "cross_entropy", "grouped_mlp",
                                "moe_combine", "adamw_"}
    for name, row in fused.TABLE.items():
        assert row.fn is getattr(fused, name) and row.custom_op == f"llmpre_{name}"
        assert set(row.dtypes["cpu"]) == ({"float32"} if name in ("grouped_mlp", "moe_combine", "adamw_")
                                          else {"float32", "bfloat16"})
    assert set(fused.TABLE["flash_attention"].dtypes["gpu"]) == {"bfloat16", "float16"}
    assert set(fused.TABLE["grouped_mlp"].dtypes["gpu"]) == {"bfloat16"}        # CUTLASS's bf16 grouped GEMM
    assert set(fused.TABLE["swiglu"].dtypes["gpu"]) == {"float32", "bfloat16"}
    assert set(fused.TABLE["moe_combine"].dtypes["gpu"]) == {"float32", "float16", "bfloat16"}


@needs_ops
def test_flash_attention_kernel_choice_is_an_option_of_select_ops(monkeypatch):
    monkeypatch.delenv("LLMPRE_FLASH_ATTENTION_KERNEL", raising=False)
    chosen = select_ops(use_flash_attention=True, flash_attention_kernel="portable")
    assert chosen.attention.func is fused.flash_attention and chosen.attention.keywords == {"kernel": "portable"}
    assert "[portable kernels]" in dict(chosen.names)["attention"]
    assert "[portable kernels]" in dict(select_ops(flash_attention_kernel="portable").names)["attention"]
    assert select_ops(use_flash_attention=True).attention is fused.flash_attention   # auto: the plain function
    monkeypatch.setenv("LLMPRE_FLASH_ATTENTION_KERNEL", "hopper")       # the override, read here only
    select_ops.cache_clear()
    chosen = select_ops(use_flash_attention=True, flash_attention_kernel="portable")
    assert chosen.attention.keywords == {"kernel": "hopper"}
    monkeypatch.setenv("LLMPRE_FLASH_ATTENTION_KERNEL", "fastest")
    with pytest.raises(ConfigError, match="LLMPRE_FLASH_ATTENTION_KERNEL.*auto, portable, hopper"):
        select_ops()


@needs_ops
def test_flash_attention_kernel_reaches_the_op_and_is_checked():
    q = paddle.randn([1, 8, 2, 16])
    for kernel in ("auto", "portable", "hopper"):   # one CPU kernel: every choice computes the same
        np.testing.assert_array_equal(ops.flash_attention(q, q, q, kernel=kernel).numpy(),
                                      ops.flash_attention(q, q, q).numpy())
    with pytest.raises(ValueError, match="kernel must be one of auto, portable, hopper"):
        ops.flash_attention(q, q, q, kernel="fast")
    with pytest.raises(Exception, match=r"`kernel` must be 0 \(auto\), 1 \(portable\) or 2 \(hopper\), got 7"):
        paddle._C_ops._run_custom_op("llmpre_flash_attention", q, q, q, None, True, -1, 0.0, 7)


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
                     "use_fused_swiglu": None, "use_fused_cross_entropy": None, "use_fused_grouped_mlp": None,
                     "use_fused_moe_combine": None, "use_fused_adamw": None, "allow_reference_fallback": True, "flash_attention_kernel": "auto"}
    defaults = flags_from_args(parse_arguments(None, {}))
    assert all(defaults[f] is None for f in FLAGS) and defaults["allow_reference_fallback"] is False
