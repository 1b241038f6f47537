"""Finding and registering llmpre's Paddle custom-op library.

The package's CMake build compiles every op in ``paddle_ops/`` into one shared
library, installed as ``llmpre/ops/_paddle_ops<ext>`` (a file Python can also
import, for its build information). :func:`load` registers its ops with
Paddle once per process (``load_op_meta_info_and_register_op``); the op names
are then callable through ``paddle._C_ops._run_custom_op``. Nothing is
compiled at run time.

When the library is missing (the build could not import Paddle), was built
against another Paddle, or fails to load, :func:`load` does not raise: the
returned :class:`Library` says why, and the fused functions and
:func:`llmpre.ops.select_ops` report that reason.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings
from dataclasses import dataclass, field
from typing import Optional

MODULE = "llmpre.ops._paddle_ops"

# The ops this package calls, and the signature (inputs, attributes, outputs)
# each wrapper in llmpre.ops.fused passes; a registered op with another
# signature is treated as missing rather than called wrongly.
SIGNATURES = {
    "llmpre_rms_norm": (["X", "Weight"], ["epsilon"], ["Y", "InvRms"]),
    "llmpre_rotary": (["X", "Cos", "Sin", "PositionIds@OPTIONAL"], ["interleaved"], ["Out"]),
    "llmpre_swiglu": (["Gate", "Up"], [], ["Out"]),
    "llmpre_cross_entropy": (["Logits", "Labels"], ["ignore_index"], ["Loss", "Stats"]),
    "llmpre_flash_attention": (["q", "k", "v", "alibi_slopes@OPTIONAL"], ["causal", "window", "scale", "kernel"],
                               ["out", "lse"]),
    "llmpre_flash_attention_block": (["q", "k", "v", "alibi_slopes@OPTIONAL"],
                                     ["causal", "window", "scale", "q_offset"], ["out", "lse"]),
    "llmpre_flash_attention_block_bwd": (["q", "k", "v", "alibi_slopes@OPTIONAL", "out", "lse", "dout"],
                                         ["causal", "window", "scale", "q_offset"], ["dq", "dk", "dv"]),
    "llmpre_grouped_mlp": (["X", "Offsets", "WGate@VECTOR", "WUp@VECTOR", "WDown@VECTOR", "Index@OPTIONAL"], [],
                           ["Out", "Gate", "Up"]),
    "llmpre_moe_combine": (["Y", "Pos", "Weights"], [], ["Out"]),
    "llmpre_adamw_": (["Param", "Grad", "Moment1", "Moment2"],
                      ["grad_scale", "beta1", "beta2", "one_minus_beta1", "one_minus_beta2", "decay", "inv_bias2",
                       "eps", "step_size", "decayed_runs"], ["ParamOut", "Moment1Out", "Moment2Out"]),
}

REBUILD = ("reinstall llmpre with paddlepaddle importable by the build "
           "(`pip install --no-build-isolation llmpre`, or tools/dev_install.sh in a checkout)")


@dataclass(frozen=True)
class Library:
    """What :func:`load` found: the library path, the ops it registered, and why
    any op is unavailable."""

    path: Optional[str] = None
    ops: frozenset = frozenset()            # registered op names with the expected signature
    error: Optional[str] = None             # why the whole library is unusable
    op_errors: dict = field(default_factory=dict)  # op name -> why that op is unusable
    paddle_version: str = ""                # the Paddle the library was built against
    cuda_ops: tuple = ()                    # ops with a CUDA path in this build
    cpu_isa: str = ""                       # "avx2" or "baseline"

    def has(self, op: str) -> bool:
        return op in self.ops

    def why_missing(self, op: str) -> str:
        if self.error:
            return self.error
        if op in self.op_errors:
            return self.op_errors[op]
        return f"the op library {self.path} has no `{op}` ({REBUILD})"


def _paddle_minor(version: str) -> tuple:
    return tuple(version.split(".")[:2])


@functools.lru_cache(maxsize=None)
def load() -> Library:
    """Register the op library with Paddle (once) and describe what is usable."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or spec.origin is None:
        return Library(error="llmpre was built without its Paddle ops (Paddle was not importable when "
                             f"the package was compiled); {REBUILD}")
    from llmpre.runtime import import_paddle

    paddle = import_paddle()
    try:
        module = importlib.import_module(MODULE)
    except ImportError as e:
        return Library(path=spec.origin, error=f"cannot load {spec.origin}: {e}; {REBUILD}")
    built, running = module.PADDLE_VERSION, paddle.__version__
    if _paddle_minor(built) != _paddle_minor(running):
        return Library(path=spec.origin, paddle_version=built,
                       error=f"llmpre's ops were built against Paddle {built} but Paddle {running} is "
                             f"running; {REBUILD}")
    with warnings.catch_warnings():  # this import warns about ccache, irrelevant here
        warnings.simplefilter("ignore")
        from paddle.utils.cpp_extension.extension_utils import (load_op_meta_info_and_register_op,
                                                                parse_op_info)

    try:
        names = load_op_meta_info_and_register_op(spec.origin)
    except Exception as e:  # Paddle raises several types here; all mean "unusable"
        return Library(path=spec.origin, paddle_version=built,
                       error=f"Paddle could not register the ops in {spec.origin}: {e}")
    ok, op_errors = set(), {}
    for name in names:
        want = SIGNATURES.get(name)
        if want is None:
            continue
        got = tuple(list(part) for part in parse_op_info(name))
        if got == want:
            ok.add(name)
        else:
            op_errors[name] = (f"`{name}` in {spec.origin} has inputs/attributes/outputs {got}, but "
                               f"llmpre.ops calls it as {want}; rebuild so the op and its wrapper agree")
    return Library(path=spec.origin, ops=frozenset(ok), op_errors=op_errors, paddle_version=built,
                   cuda_ops=tuple(module.CUDA_OPS), cpu_isa=module.cpu_isa())
