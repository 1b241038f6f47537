"""Shard-local loading of HF checkpoints: each parameter of a deferred model reads only
the regions asked of it.

:func:`attach` checks the checkpoint against the model from the file headers alone
(:func:`llmpre.models.hf.check_checkpoint`: every missing, unexpected or mis-shaped tensor
in one ConfigError, before any data is read), then gives every parameter a ``"read"``
:class:`llmpre.models.init.Source`. ``parallelize`` drops the other pipeline stages'
layers and asks each kept weight for this rank's tensor-parallel slice, so a rank reads
its own slices of the checkpoint and nothing else (safetensors ``get_slice``), each cast
to the Source dtype slice by slice.

A region of an llmpre parameter (``(start, stop)`` per axis; a weight is ``[in, out]``,
``[(a0, b0), (a1, b1)]``, a bias ``[(a, b)]``) is read from the HF tensor(s) of its rule
(:mod:`llmpre.models.hf_names`), part ``j`` of the rule's parameters, ``off_j`` the summed
output widths of the parts before it:

=============  ========================================================================
kind           what is read
=============  ========================================================================
``copy``       the same region
``linear``     HF ``[a1:b1, a0:b0]`` (``[out, in]``), transposed
``rows``       rows ``off_j + a1 .. off_j + b1`` (biases ``off_j + a ..``) of the fused
               ``[out, in]`` tensor, transposed
``cols``       GPT-2's fused ``Conv1D`` ``[in, out]``: HF ``[a0:b0, off_j + a1 : off_j + b1]``
``heads3``     Bloom: output feature ``h*d + i`` of part ``j`` is HF row ``h*3d + j*d + i``,
               one read per head
``yuan_qk``    output feature ``h*d + i`` of part ``j`` is row ``h*2d + j*d + i`` of
               ``q_proj`` and ``k_proj`` stacked, one read per head
=============  ========================================================================

PaddleNLP checkpoints (:mod:`llmpre.models.paddlenlp_format`) are read the same way with
their own names and reader; their fused tensors are ``[in, out]``: ``cols`` as above, and
``grouped_cols``, whose output feature of part ``j`` sits in the column
:func:`llmpre.models.paddlenlp_names.fused_columns` gives (runs of consecutive columns, one
read each). A ``.pdparams`` file cannot be read by slices: it is loaded whole.

Every value equals the same element of :func:`llmpre.models.hf.from_pretrained`'s model
(a copy, a transpose or a dtype cast of the same bits).

``open_pretrained(path, config=...)`` may build a model with fewer layers than the
checkpoint (``num_hidden_layers`` with ``continue_training``): layers ``0..N-1`` are read
and the deeper ones skipped, as PaddleNLP does.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from safetensors import safe_open

from llmpre.errors import ConfigError
from llmpre.models import init
from llmpre.models.config import ModelConfig
from llmpre.models.hf import CONFIG_NAME, WEIGHTS_NAME, build, check_checkpoint, is_paddlenlp, load_hf_config
from llmpre.models.hf_names import Rule, hf_shapes
from llmpre.models.paddlenlp_names import fused_columns

__all__ = ["CheckpointReader", "attach", "open_pretrained"]


class CheckpointReader:
    """Regions of the tensors of one HF checkpoint, counting the bytes read.

    Files are opened on first use and stay open until :meth:`close` (a read after
    ``close`` opens them again)."""

    def __init__(self, path, where: Dict[str, Path]):
        self.path = Path(path)
        self.where = where                  # HF tensor name -> its file
        self.bytes_read = 0
        self.checkpoint_bytes = sum(os.path.getsize(f) for f in set(where.values()))
        self._stack = contextlib.ExitStack()
        self._files: dict = {}

    def read(self, name: str, region: Sequence[Tuple[int, int]]) -> paddle.Tensor:
        """``region`` ((start, stop) per axis) of HF tensor ``name``, in its stored dtype."""
        file = self.where[name]
        f = self._files.get(file)
        if f is None:
            f = self._files[file] = self._stack.enter_context(safe_open(str(file), framework="paddle"))
        view = f.get_slice(name)[tuple(slice(a, b) for a, b in region)] if region else f.get_tensor(name)
        # safetensors 0.8's Paddle tensors point into the file's mmap, and two of them alive
        # from the same tensor abort the process when freed ("The deleter of the pointer is
        # not found"): copy into Paddle's own memory and drop the view before the next read.
        t = view.clone()
        del view
        self.bytes_read += int(t.numel()) * t.element_size()
        return t

    def close(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._files.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _output_rows(rule: Rule, j: int, start: int, stop: int, offsets: List[int], config) -> np.ndarray:
    """Rows of the rule's HF tensors (stacked on axis 0) holding output features
    ``start..stop`` of its part ``j``."""
    c = np.arange(start, stop, dtype=np.int64)
    if rule.kind == "rows":
        return offsets[j] + c
    if rule.kind in ("cols", "grouped_cols"):
        return fused_columns(rule.kind, j, c, offsets, config)
    d = config.head_dim
    h, i = np.divmod(c, d)
    if rule.kind == "heads3":
        return h * 3 * d + j * d + i
    if rule.kind == "yuan_qk":
        return h * 2 * d + j * d + i
    raise ValueError(f"unknown layout kind {rule.kind!r}")


def _runs(rows: np.ndarray, bounds: np.ndarray):
    """``rows`` (global, over tensors whose first rows are ``bounds``) as
    ``(tensor, start, stop)`` runs of consecutive rows of one tensor."""
    t = np.searchsorted(bounds, rows, side="right") - 1
    local = rows - bounds[t]
    breaks = np.flatnonzero((np.diff(local) != 1) | (np.diff(t) != 0)) + 1
    for seg in np.split(np.arange(rows.size), breaks):
        yield int(t[seg[0]]), int(local[seg[0]]), int(local[seg[-1]]) + 1


def _read(ckpt: CheckpointReader, rule: Rule, j: int, shapes: List[List[int]], config,
          region: Sequence[Tuple[int, int]]) -> paddle.Tensor:
    """Region of part ``j`` of ``rule`` (see the module doc for each kind)."""
    region = [(int(a), int(b)) for a, b in region]
    if any(b <= a for a, b in region):
        return paddle.zeros([max(b - a, 0) for a, b in region], dtype="float32")
    k = rule.kind
    if k == "copy":
        return ckpt.read(rule.hf[j], region)
    if k == "linear":                                    # HF [out, in]
        return ckpt.read(rule.hf[j], region[::-1]).transpose([1, 0])
    offsets = np.cumsum([0] + [s[-1] for s in shapes]).tolist()
    if k in ("cols", "grouped_cols") and len(region) == 2:   # fused [in, out] (GPT-2 Conv1D, PaddleNLP)
        (a0, b0), (a1, b1) = region
        cols = _output_rows(rule, j, a1, b1, offsets, config)
        pieces = [ckpt.read(rule.hf[0], [(a0, b0), (c0, c1)]) for _, c0, c1 in _runs(cols, np.zeros(1, np.int64))]
        return pieces[0] if len(pieces) == 1 else paddle.concat(pieces, axis=1)
    # rows, heads3, yuan_qk (and a fused bias): output features are HF rows
    rows = _output_rows(rule, j, *region[-1], offsets, config)
    bounds = np.zeros(1, np.int64) if len(rule.hf) == 1 else np.cumsum([0] + [s[0] for s in hf_shapes(rule, shapes)])
    pieces = [ckpt.read(rule.hf[t], [(r0, r1)] + region[:-1]) for t, r0, r1 in _runs(rows, bounds)]
    out = pieces[0] if len(pieces) == 1 else paddle.concat(pieces, axis=0)
    return out.transpose([1, 0]) if len(region) == 2 else out


def attach(model, path, dtype: str = "float32", deeper_ok: bool = False):
    """Check the HF or PaddleNLP checkpoint at ``path`` against the deferred ``model``, then
    make every parameter read its regions from it (cast to ``dtype``). Returns the reader
    (:class:`CheckpointReader` or :class:`llmpre.models.paddlenlp_format.PaddleNLPReader`):
    close it once the model is materialised. ``deeper_ok``: the checkpoint may have more
    layers than the model (its first ones are read)."""
    if is_paddlenlp(path):
        from llmpre.models.paddlenlp_format import check_checkpoint as check_paddlenlp

        rules, ckpt = check_paddlenlp(model, path, deeper_ok)
    else:
        rules, where = check_checkpoint(model, path, deeper_ok)
        ckpt = CheckpointReader(path, where)
    config = model.config
    params = dict(model.named_parameters())
    ruled = {name for rule in rules for name in rule.ours}
    if any(name not in ruled for name in params):    # as hf.finish: the scheme's values, a fresh seed
        init.plan(model, config, int(paddle.randint(0, 2 ** 31 - 1, [1]).item()), dtype)
    for rule in rules:
        shapes = [[int(s) for s in params[o].shape] for o in rule.ours]
        for j, name in enumerate(rule.ours):
            read = functools.partial(_read, ckpt, rule, j, shapes, config)
            setattr(params[name], init.ATTR, init.Source(0, "read", dtype=init.stored_dtype(name, dtype), read=read))
    return ckpt


def open_pretrained(path, dtype: str = "float32", ops=None, config: Optional[ModelConfig] = None):
    """``(model, reader)``: the model of ``path/config.json`` (or ``config``) built deferred, each
    parameter reading only the regions asked of it from ``path``'s weights, in ``dtype``
    (:func:`llmpre.models.init.materialize` or ``parallelize`` fills it; then close the reader).

    ``config`` may differ from the checkpoint's only in having fewer layers: its
    ``num_hidden_layers`` first layers are read, the others skipped; more layers than the
    checkpoint has is a ConfigError."""
    if not Path(path).is_dir():
        raise ConfigError(f"{path}: not a directory; continue_training needs a checkpoint directory "
                          f"holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    saved = load_hf_config(path)
    config = saved if config is None else config
    if config.num_hidden_layers > saved.num_hidden_layers:
        raise ConfigError(f"num_hidden_layers={config.num_hidden_layers}: the checkpoint {path} has only "
                          f"{saved.num_hidden_layers} layers; continue_training can load its first N layers "
                          f"(N <= {saved.num_hidden_layers}), not add new ones")
    if config != saved.replace(num_hidden_layers=config.num_hidden_layers):
        raise ConfigError(f"open_pretrained({path}): the model config differs from the checkpoint's in more than "
                          "num_hidden_layers")
    model = build(config, ops=ops)
    return model, attach(model, path, dtype, deeper_ok=config.num_hidden_layers < saved.num_hidden_layers)
