"""Mixed-precision logic that can run on a CPU: loss scaling, master weights, O2 casting,
and the clear refusal of bf16/fp16 on a CPU build."""

from __future__ import annotations

import types

import numpy as np
import pytest

from llmpre.errors import ConfigError
from llmpre.runtime import import_paddle

paddle = import_paddle()

from llmpre.parallel.dims import ParallelDims  # noqa: E402
from llmpre.parallel.env import init_parallel  # noqa: E402
from llmpre.parallel.optimizer import ShardedAdamW  # noqa: E402
from llmpre.train.precision import DynamicLossScaler, Precision  # noqa: E402


def args(**kw):
    base = dict(bf16=False, fp16=False, fp16_opt_level="O1")
    return types.SimpleNamespace(**{**base, **kw})


def test_precision_from_args():
    assert Precision.from_args(args()) == Precision("float32", None)
    assert Precision.from_args(args(bf16=True, fp16_opt_level="O2")) == Precision("bfloat16", "O2")
    p = Precision.from_args(args(fp16=True))
    assert p.low and p.loss_scaling and p.level == "O1"
    with pytest.raises(ConfigError, match="only one"):
        Precision.from_args(args(bf16=True, fp16=True))


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="this Paddle is a GPU build: "
                    "bf16 is available, so there is no refusal to test")
def test_low_precision_on_a_cpu_build_is_one_clear_error():
    for flag in ("bf16", "fp16"):
        with pytest.raises(ConfigError, match=f"`{flag}` needs .* GPU build"):
            Precision.from_args(args(**{flag: True})).check_available(paddle)
    Precision.from_args(args()).check_available(paddle)  # fp32 is fine


def test_loss_scaler_follows_gradscaler_rules():
    s = DynamicLossScaler(init_scale=1024.0, incr_every_n_steps=3, decr_every_n_nan_or_inf=2)
    s.update(found_inf=True)
    assert s.scale == 1024.0          # one overflow: not yet
    s.update(found_inf=True)
    assert s.scale == 512.0           # second consecutive overflow halves
    for _ in range(2):
        s.update(found_inf=False)
    assert s.scale == 512.0
    s.update(found_inf=False)
    assert s.scale == 1024.0          # three clean steps double
    s.update(found_inf=True)
    s.update(found_inf=False)         # a clean step resets the overflow count
    s.update(found_inf=True)
    assert s.scale == 1024.0
    state = s.state_dict()
    t = DynamicLossScaler()
    t.load_state_dict(state)
    assert t.state_dict() == state
    off = DynamicLossScaler(enabled=False)
    off.update(True)
    assert off.scale == 1.0


class Tiny(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.w = self.create_parameter([3, 2])
        self.register_buffer("table", paddle.arange(4, dtype="float32"), persistable=False)


def test_o2_casts_parameters_and_keeps_fp32_buffers():
    m = Tiny()
    Precision("bfloat16", "O2").prepare_model(m)
    assert m.w.dtype == paddle.bfloat16
    assert m.table.dtype == paddle.float32
    assert m.table.numpy().tolist() == [0, 1, 2, 3]
    n = Tiny()
    Precision("bfloat16", "O1").prepare_model(n)  # O1 keeps fp32 weights
    assert n.w.dtype == paddle.float32


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even fp32 -> bf16 -> fp32, in numpy."""
    bits = x.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.view(np.float32)


def test_master_weights_for_bf16_parameters():
    rng = np.random.default_rng(0)
    init = bf16_round(rng.standard_normal((4, 3)).astype(np.float32))
    param = paddle.create_parameter([4, 3], "float32")
    param.set_value(init)
    model = Tiny()
    model.w = param
    Precision("bfloat16", "O2").prepare_model(model)
    named = [("w", model.w)]
    opt = ShardedAdamW(named, init_parallel(ParallelDims()), weight_decay=0.1)
    assert opt.master.dtype == paddle.float32 and opt.master.shape == [12]
    master = init.astype(np.float64)
    m = v = np.zeros_like(master)
    for t in range(1, 4):
        g = bf16_round(rng.standard_normal((4, 3)).astype(np.float32))
        model.w.grad = paddle.to_tensor(g).astype("bfloat16")
        opt.reduce_gradients()
        opt.step(0.01, grad_scale=0.5)
        ge = g * 0.5
        master = master * (1 - 0.01 * 0.1)
        m = 0.9 * m + 0.1 * ge
        v = 0.999 * v + 0.001 * ge * ge
        master = master - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    (start, end, _, _, got), = opt.state_pieces()["w"]
    assert (start, end) == (0, 12)
    np.testing.assert_allclose(got.reshape(4, 3), master, rtol=1e-5, atol=1e-6)
    # the bf16 parameter holds the rounded master value
    assert np.array_equal(model.w.astype("float32").numpy(), bf16_round(got.reshape(4, 3)))
    # state: two moments + master, fp32
    assert sum(int(t.numel()) * 4 for t in (opt.master, opt.exp_avg, opt.exp_avg_sq)) == 4 * 12 * 3
