"""Parameter initialisation that any rank computes for its own slice, alone.

Every element of every parameter is a pure function of ``(seed, parameter name,
the element's flat index in the whole parameter)``, so a rank can produce the
rows or columns it owns without producing (or allocating) the rest, without
talking to its peers, and in any order, and the values are exactly those of a
single-process run with the same seed.

The scheme (counter-based, like Philox or SplitMix):

    key    = first 8 bytes of blake2b(f"{seed}/{name}"), little-endian uint64
    h(j)   = splitmix64(key + j * 0x9E3779B97F4A7C15)          (mod 2**64)
    pair k = i // 2:  u1 = ((h(2k) >> 11) + 1) / 2**53,  u2 = (h(2k+1) >> 11) / 2**53
    z_i    = sqrt(-2 ln u1) * (cos if i is even else sin)(2 pi u2)   (Box-Muller, float64)
    value  = float32(z_i * std), then the storage dtype

computed by ``llmpre._core.counter_normal`` (C++, threads; ``standard_normal`` below is the
same scheme in numpy, the reference the tests hold it to: equal up to the last bit of
libm's log/sin/cos).

What is drawn is PaddleNLP's scheme (:func:`llmpre.models.layers.init_weights`
names the rules): N(0, initializer_range) for linear and embedding weights and
MoE routers, that scaled by 1/sqrt(2 * layers) for the projections that write
into the residual stream, N(0, sqrt(2 / fan_in)) for convolutions (Paddle's own
default), zero biases, and every other parameter its own constant default
(norms at identity).

A model is built *deferred* (:func:`deferred`: Paddle's ``LazyGuard``, no
parameter memory), its parameters tagged with where their values come from
(:func:`plan`); ``value(p, region)`` then produces any contiguous region of a
parameter, and :func:`materialize` fills whatever is still unallocated. The
parallel layers (``llmpre.parallel``) call ``value`` for the slices they keep,
so no rank ever holds more than its own shard plus one parameter.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["Source", "deferred", "is_deferred", "plan", "value", "view", "storage_dtype", "generate", "initialize",
           "materialize",
           "standard_normal", "normal_region", "normal_region_reference", "is_lazy"]

ATTR = "_llmpre_init"
NORMAL_INIT = "normal_init"   # a layer class attribute: its parameters drawn N(0, initializer_range)
# projections that write into the residual stream: drawn with std / sqrt(2 * layers)
RESIDUAL_OUTPUTS = ("o_proj.weight", "down_proj.weight")
GAMMA = np.uint64(0x9E3779B97F4A7C15)
_STATE = {"deferred": 0}
GENERATE_CHUNK_BYTES = 64 * 2 ** 20   # a region larger than this is drawn in blocks of rows


@dataclass(frozen=True)
class Source:
    """Where a deferred parameter's values come from."""
    key: int           # counter key: hash of (seed, name)
    kind: str          # "normal" | "zeros" | "own" (its own constant default) | "read"
    std: float = 0.0
    dtype: str = "float32"
    read: Optional[Callable] = None   # "read": region -> array/tensor of it (a checkpoint loader)


def param_key(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{int(seed)}/{name}".encode(), digest_size=8).digest(), "little")


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = z.copy()
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def standard_normal(key: int, flat_index: np.ndarray) -> np.ndarray:
    """N(0, 1) draws (float64) of elements ``flat_index`` under ``key`` (see the module doc);
    numpy, the reference of ``llmpre._core.counter_normal``."""
    i = np.asarray(flat_index, dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = np.uint64(key) + ((i >> np.uint64(1)) * np.uint64(2)) * GAMMA
        h1 = _splitmix(base)
        h2 = _splitmix(base + GAMMA)
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 2 ** 53)
    u2 = (h2 >> np.uint64(11)).astype(np.float64) * (1.0 / 2 ** 53)
    r, t = np.sqrt(-2.0 * np.log(u1)), 2.0 * math.pi * u2
    return np.where((i & np.uint64(1)) == 0, r * np.cos(t), r * np.sin(t))


def normal_region_reference(key: int, shape: Sequence[int], region: Sequence[tuple], std: float) -> np.ndarray:
    """``normal_region`` in numpy, element by element from :func:`standard_normal`."""
    shape = [int(s) for s in shape]
    region = [(int(a), int(b)) for a, b in region]
    grids = np.meshgrid(*[np.arange(a, b, dtype=np.int64) for a, b in region], indexing="ij")
    flat = np.ravel_multi_index(grids, shape) if shape else np.zeros((), np.int64)
    return (standard_normal(key, flat.reshape(-1)) * std).astype(np.float32).reshape(
        [b - a for a, b in region])


def normal_region(key: int, shape: Sequence[int], region: Sequence[tuple], std: float) -> np.ndarray:
    """float32 values of ``region`` ((start, stop) per axis) of a ``shape`` parameter."""
    from llmpre._core import counter_normal

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    return counter_normal(int(key), [int(s) for s in shape], [(int(a), int(b)) for a, b in region],
                          float(std), threads)


# ----------------------------------------------------------------------------- building
def is_deferred() -> bool:
    """True while :func:`deferred` builds a model (layers then skip their own init)."""
    return _STATE["deferred"] > 0


@contextlib.contextmanager
def deferred():
    """Build layers with unallocated parameters (Paddle's ``LazyGuard``)."""
    import paddle

    _STATE["deferred"] += 1
    try:
        with paddle.LazyGuard():
            yield
    finally:
        _STATE["deferred"] -= 1


def is_lazy(p) -> bool:
    return not p._is_initialized()


def rules(model, config) -> dict:
    """``{parameter name: (kind, std)}`` by PaddleNLP's scheme (see the module doc)."""
    import paddle.nn as nn

    std = config.initializer_range
    scale = 1.0 / math.sqrt(2 * config.num_hidden_layers)
    out: dict = {}
    for prefix, layer in model.named_sublayers(include_self=True):
        pre = f"{prefix}." if prefix else ""
        # llmpre's own layers name their N(0, initializer_range) weights (``NORMAL_INIT``)
        own = [a for a in getattr(layer, NORMAL_INIT, ()) if getattr(layer, a, None) is not None]
        for attr in own:
            out[pre + attr] = ("normal", std)
        if isinstance(layer, (nn.Linear, nn.Embedding)):
            out[pre + "weight"] = ("normal", std)
            if getattr(layer, "bias", None) is not None:
                out[pre + "bias"] = ("zeros", 0.0)
        elif isinstance(layer, (nn.Conv1D, nn.Conv2D, nn.Conv3D)):
            fan_in = int(np.prod(layer._kernel_size)) * int(layer._in_channels)
            out[pre + "weight"] = ("normal", (2.0 / fan_in) ** 0.5)
            if getattr(layer, "bias", None) is not None:
                out[pre + "bias"] = ("zeros", 0.0)
    for name, _ in model.named_parameters():
        if name.endswith("gate.weight") and "lf_gate" not in name:
            out[name] = ("normal", std)                              # MoE router
        elif name.endswith("e_score_correction_bias"):
            out[name] = ("zeros", 0.0)
        if name.endswith(RESIDUAL_OUTPUTS) and out.get(name, ("",))[0] == "normal":
            out[name] = ("normal", out[name][1] * scale)
        out.setdefault(name, ("own", 0.0))
    # a family with a published scheme of its own (GLM-130B's DeepNorm) names its exceptions
    overrides = getattr(model, "init_overrides", None)
    if overrides is not None:
        out.update(overrides())
    return out


def plan(model, config, seed: int, dtype: str = "float32") -> None:
    """Tag every parameter of a (deferred) model with its :class:`Source`."""
    for name, p in model.named_parameters():
        kind, std = rules_cache(model, config)[name]
        setattr(p, ATTR, Source(param_key(seed, name), kind, std, stored_dtype(name, dtype)))


# Kept in fp32 whatever the model's dtype: DeepSeek-V3's routing bias moves by steps of ~1e-3
# after each step (llmpre.train.balance), below bf16's resolution once |b| >= 0.5.
FP32_PARAMS = ("e_score_correction_bias",)


def stored_dtype(name: str, dtype: str) -> str:
    """The dtype parameter ``name`` is stored in when the model is built in ``dtype``."""
    return "float32" if name.endswith(FP32_PARAMS) else dtype


def rules_cache(model, config) -> dict:
    cached = getattr(model, "_llmpre_init_rules", None)
    if cached is None:
        cached = rules(model, config)
        object.__setattr__(model, "_llmpre_init_rules", cached)
    return cached


def value(p, region: Optional[Sequence[tuple]] = None, dtype: Optional[str] = None):
    """A new tensor with ``region`` ((start, stop) per axis; None: all) of parameter ``p``:
    sliced from its data when it has any, else computed from its :class:`Source`."""
    import paddle

    shape = [int(s) for s in p.shape]
    whole = [(0, s) for s in shape]
    region = whole if region is None else [(int(a), int(b)) for a, b in region]
    src: Optional[Source] = getattr(p, ATTR, None)
    if not is_lazy(p):
        t = p if region == whole else p[tuple(slice(a, b) for a, b in region)]
        t = t.detach().clone()          # its own memory, never a view of the parameter
        return t.astype(dtype) if dtype is not None and str(t.dtype).split(".")[-1] != dtype else t
    return generate(p, region, dtype)


def view(p, region: Sequence[tuple]):
    """``region`` of ``p`` as a deferred parameter of its own (nothing computed until it is
    materialised or read) when ``p`` is deferred; else a tensor holding that region."""
    if not is_lazy(p):
        return value(p, region)
    import paddle

    src: Optional[Source] = getattr(p, ATTR, None)
    if src is None:
        raise RuntimeError(f"parameter {p.name} has no data and no initialisation source")
    origin = [int(a) for a, _ in region]

    def read(sub):
        return value(p, [(o + a, o + b) for o, (a, b) in zip(origin, sub)])

    with paddle.LazyGuard():
        q = paddle.create_parameter([int(b) - int(a) for a, b in region], "float32",
                                    default_initializer=paddle.nn.initializer.Constant(0.0))
    setattr(q, ATTR, Source(src.key, "read", 0.0, src.dtype, read))
    return q


def storage_dtype(p) -> str:
    """The dtype ``p`` holds or, deferred, will hold."""
    src = getattr(p, ATTR, None)
    if is_lazy(p) and src is not None:
        return src.dtype
    return str(p.dtype).split(".")[-1]


def generate(p, region: Optional[Sequence[tuple]] = None, dtype: Optional[str] = None):
    """``region`` of parameter ``p`` computed from its :class:`Source` (whatever it holds now)."""
    import paddle

    shape = [int(s) for s in p.shape]
    whole = [(0, s) for s in shape]
    region = whole if region is None else [(int(a), int(b)) for a, b in region]
    src: Optional[Source] = getattr(p, ATTR, None)
    if src is None:
        raise RuntimeError(f"parameter {p.name} {shape} has no data and no initialisation source "
                           "(build the model with llmpre.models.build_model)")
    target = dtype or src.dtype
    if src.kind == "read":              # a loader reads just this region from its file
        t = src.read(region)
        t = t if isinstance(t, paddle.Tensor) else paddle.to_tensor(np.ascontiguousarray(t))
        if list(t.shape) != [b - a for a, b in region]:
            raise RuntimeError(f"parameter {p.name}: the loader returned {list(t.shape)} for region {region}")
        if str(t.dtype).split(".")[-1] != "float32" and target != str(t.dtype).split(".")[-1]:
            t = t.astype("float32")
    elif src.kind == "normal":
        rows = region[0][1] - region[0][0]
        row_bytes = 4 * math.prod(b - a for a, b in region[1:])
        if rows > 1 and rows * row_bytes > GENERATE_CHUNK_BYTES:   # in row blocks: no whole fp32 copy
            t = paddle.empty([b - a for a, b in region], dtype=target)
            step = max(1, GENERATE_CHUNK_BYTES // row_bytes)
            for r in range(0, rows, step):
                block = [(region[0][0] + r, region[0][0] + min(r + step, rows))] + region[1:]
                t[r:r + step] = paddle.to_tensor(normal_region(src.key, shape, block, src.std)).astype(target)
            return t
        t = paddle.to_tensor(normal_region(src.key, shape, region, src.std))
    elif src.kind == "zeros":
        t = paddle.zeros([b - a for a, b in region], dtype="float32")
    else:                                 # its own default: a constant (norms); no RNG is drawn
        t = paddle.full([b - a for a, b in region], _own_constant(p), dtype="float32")
    return t if str(t.dtype).split(".")[-1] == target else t.astype(target)


def _own_constant(p) -> float:
    """The fill value of a deferred parameter whose default initialiser is a constant."""
    init = getattr(getattr(getattr(p, "_init_func", None), "func", None), "__self__", None)
    if init is not None and init.__class__.__name__ in ("Constant", "ConstantInitializer"):
        return float(init._value)
    raise RuntimeError(f"parameter {p.name}: no llmpre initialisation rule, and its own default "
                       f"initialiser ({type(init).__name__}) is not a constant (a random default would "
                       "depend on the order parameters are built in); add a rule to "
                       "llmpre.models.init.rules")


def initialize(model, config, seed: Optional[int] = None) -> None:
    """Overwrite an eagerly built model's parameters with the scheme's values (``seed``:
    None draws one from Paddle's generator, so ``paddle.seed`` decides); parameters whose
    rule is their own default keep the value they were built with."""
    import paddle

    if seed is None:
        seed = int(paddle.randint(0, 2 ** 31 - 1, [1]).item())
    plan(model, config, seed, "float32")
    with paddle.no_grad():
        for _, p in model.named_parameters():
            if getattr(p, ATTR).kind != "own":
                p.set_value(generate(p).astype(p.dtype))


def materialize(model, only: Optional[Callable] = None) -> int:
    """Give every still-unallocated parameter (whose name ``only`` accepts, if given) its
    values, in its Source's dtype; returns how many."""
    import paddle

    n = 0
    with paddle.no_grad():
        for name, p in model.named_parameters():
            if is_lazy(p) and (only is None or only(name)):
                value(p).contiguous()._share_buffer_to(p)
                n += 1
    return n
