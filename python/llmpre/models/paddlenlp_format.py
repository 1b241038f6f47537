"""PaddleNLP checkpoint directories: recognising them, reading their tensors by region, and
writing them (``llmpre export-hf --style paddlenlp``).

PaddleNLP 2.8.1's ``save_pretrained`` writes ``config.json`` (its keys:
:mod:`llmpre.models.paddlenlp_names`) and the weights in one of two formats:

=====================================================  ===========================================
files                                                  content
=====================================================  ===========================================
``model.safetensors``, or ``model-0000i-of-0000n``     safetensors with metadata ``format: np``
``.safetensors`` + ``model.safetensors.index.json``    (HF's say ``pt``); bfloat16 is stored as
                                                       ``U16``, its bits
``model_state.pdparams``, or ``model_state-0000i-of``  a pickle of name -> array (``paddle.save``);
``-0000n.pdparams`` + ``model_state.pdparams.index``   bfloat16 as uint16
``.json``
=====================================================  ===========================================

A directory is PaddleNLP's when its safetensors say ``format: np`` (or, without metadata, its
tensor names carry a PaddleNLP prefix), or when it has only ``.pdparams`` weights.

Reading memory: safetensors are read by slices, so a rank of a parallel run reads only its
own regions. A ``.pdparams`` file has no table of offsets: it is loaded whole
(``paddle.load``) and a reader keeps at most two such files loaded at once, so a single
``model_state.pdparams`` costs the whole model in host memory (on every rank), and a sharded
one up to two shards (each read at most twice: once to check shapes, once for values).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import struct
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from llmpre.errors import ConfigError
from llmpre.models.config import ModelConfig
from llmpre.models.hf_stream import INDEX_NAME, WEIGHTS_NAME, index_shards, publish, shard_files, shards
from llmpre.models.paddlenlp_names import (FAMILIES, IGNORABLE, buffers, config_to_paddlenlp, fused_columns,
                                           layer_index, rules)

PDPARAMS_NAME = "model_state.pdparams"
PDPARAMS_INDEX_NAME = "model_state.pdparams.index.json"
FORMAT = "np"                          # the metadata PaddleNLP writes and requires
# written dtype -> (safetensors code, bytes per element), as PaddleNLP writes them
CODES = {"float32": ("F32", 4), "bfloat16": ("U16", 2), "float16": ("F16", 2), "float64": ("F64", 8)}
_PREFIXES = tuple(sorted({f[2] for f in FAMILIES.values()}))


def _index_files(path: Path, index: Path) -> List[Path]:
    return index_shards(path, index, "weights index", "copy the complete checkpoint")


def safetensors_files(path: Path) -> List[Path]:
    """The safetensors weights of directory ``path`` (the single file preferred), or []."""
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    return _index_files(path, path / INDEX_NAME) if (path / INDEX_NAME).is_file() else []


def pdparams_files(path: Path) -> List[Path]:
    """The ``.pdparams`` weights of directory ``path`` (the single file preferred), or []."""
    if (path / PDPARAMS_NAME).is_file():
        return [path / PDPARAMS_NAME]
    return _index_files(path, path / PDPARAMS_INDEX_NAME) if (path / PDPARAMS_INDEX_NAME).is_file() else []


def is_paddlenlp_dir(path) -> bool:
    """Whether directory ``path`` holds weights as PaddleNLP saves them (see the module doc)."""
    from safetensors import safe_open

    path = Path(path)
    files = safetensors_files(path)
    if files:
        try:
            with safe_open(str(files[0]), framework="np") as f:
                fmt = (f.metadata() or {}).get("format")
                keys = list(f.keys()) if fmt is None else []
        except Exception as e:     # not a safetensors file: one clear error
            raise ConfigError(f"{files[0]}: cannot read it as safetensors ({e})") from None
        return fmt == FORMAT or (fmt is None and any(k.startswith(_PREFIXES) for k in keys))
    return bool(pdparams_files(path))


def _as_float(a: np.ndarray) -> np.ndarray:
    """PaddleNLP's bfloat16 bits (uint16) as float32, exactly; other arrays unchanged."""
    return (a.astype(np.uint32) << 16).view(np.float32) if a.dtype == np.uint16 else a


class PaddleNLPReader:
    """Regions of the tensors of one PaddleNLP checkpoint (bfloat16 comes back as float32,
    exactly), counting the bytes read (safetensors: the regions; .pdparams: every whole-file
    load); ``names`` and ``shapes`` describe it."""

    def __init__(self, path):
        from safetensors import safe_open

        self.path = Path(path)
        self.kind = "safetensors" if safetensors_files(self.path) else "pdparams"
        files = safetensors_files(self.path) or pdparams_files(self.path)
        if not files:
            raise ConfigError(f"{self.path}: no PaddleNLP weights ({WEIGHTS_NAME}, {INDEX_NAME}, {PDPARAMS_NAME} "
                              f"or {PDPARAMS_INDEX_NAME})")
        self.where: Dict[str, Path] = {}
        self.shapes: Dict[str, List[int]] = {}
        self.bytes_read = 0
        self.checkpoint_bytes = sum(os.path.getsize(f) for f in files)
        self._stack = contextlib.ExitStack()
        self._open: dict = {}
        self._loaded: "collections.OrderedDict[Path, dict]" = collections.OrderedDict()
        for file in files:
            if self.kind == "safetensors":
                with safe_open(str(file), framework="np") as f:
                    if (f.metadata() or {}).get("format", FORMAT) != FORMAT:
                        raise ConfigError(f"{file}: safetensors format {f.metadata()['format']!r}, not PaddleNLP's "
                                          f"{FORMAT!r}; the shards of one checkpoint must come from one save")
                    for name in f.keys():
                        self.where[name], self.shapes[name] = file, list(f.get_slice(name).get_shape())
            else:
                for name, array in self._state(file).items():
                    self.where[name], self.shapes[name] = file, list(np.shape(array))

    @property
    def names(self) -> List[str]:
        return list(self.where)

    def _state(self, file: Path) -> dict:
        """The arrays of one .pdparams file, loaded whole; at most two files stay loaded."""
        state = self._loaded.get(file)
        if state is None:
            import paddle

            try:
                state = paddle.load(str(file), return_numpy=True)
            except Exception as e:
                raise ConfigError(f"{file}: cannot read it as a Paddle state dict ({type(e).__name__}: {e}); "
                                  "the file is damaged or not PaddleNLP's") from None
            if not isinstance(state, dict):
                raise ConfigError(f"{file}: holds a {type(state).__name__}, not a state dict of named arrays")
            while len(self._loaded) >= 2:
                self._loaded.popitem(last=False)
            self._loaded[file] = state
            self.bytes_read += os.path.getsize(file)          # a .pdparams is read whole
        self._loaded.move_to_end(file)
        return state

    def read(self, name: str, region: Sequence[Tuple[int, int]]):
        """``region`` ((start, stop) per axis) of tensor ``name`` as a Paddle tensor."""
        import paddle

        file = self.where[name]
        index = tuple(slice(a, b) for a, b in region)
        if self.kind == "safetensors":
            f = self._open.get(file)
            if f is None:
                from safetensors import safe_open

                f = self._open[file] = self._stack.enter_context(safe_open(str(file), framework="np"))
            part = f.get_slice(name)[index] if region else f.get_tensor(name)
        else:
            part = np.asarray(self._state(file)[name])[index]
        part = np.ascontiguousarray(part)
        if self.kind == "safetensors":
            self.bytes_read += part.nbytes
        return paddle.to_tensor(_as_float(part))

    def close(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._open.clear()
        self._loaded.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tensor_shapes(rule, ours: List[List[int]]) -> List[List[int]]:
    """The PaddleNLP tensor shapes a rule produces from llmpre parameter shapes."""
    if rule.kind == "copy":
        return [list(s) for s in ours]
    if rule.kind == "linear":
        return [list(ours[0])[::-1]]
    if len(ours[0]) == 1:                               # cols, grouped_cols: biases
        return [[sum(s[0] for s in ours)]]
    return [[ours[0][0], sum(s[1] for s in ours)]]


def check_checkpoint(model, path, deeper_ok: bool = False):
    """``(rules, reader)`` for the PaddleNLP checkpoint at ``path`` and ``model``, after
    checking every tensor's name and shape (safetensors: headers only): missing, unexpected
    and mis-shaped tensors are listed, with their files, in one ConfigError.
    ``deeper_ok``: layers past the model's depth are skipped (the first N layers are loaded)."""
    config = model.config
    reader = PaddleNLPReader(path)
    names = set(reader.names)
    fused_qkv = any(n.endswith("self_attn.qkv_proj.weight") for n in names)
    fused_ffn = any(n.endswith("mlp.gate_up_fused_proj.weight") for n in names)
    ruled = rules(config, fused_qkv=fused_qkv, fused_ffn=fused_ffn)
    params = dict(model.named_parameters())
    expected: Dict[str, List[int]] = {}
    for rule in ruled:
        for name, shape in zip(rule.hf, tensor_shapes(rule, [list(params[o].shape) for o in rule.ours])):
            expected[name] = [int(s) for s in shape]
    tied_copy = {"lm_head.weight"} if config.tie_word_embeddings else set()
    problems = []
    for name in sorted(names):
        if name not in expected:
            deeper = deeper_ok and (layer_index(name) or 0) >= config.num_hidden_layers
            if not (IGNORABLE.match(name) or name in tied_copy or deeper):
                problems.append(f"unexpected tensor {name} ({reader.where[name].name})")
        elif reader.shapes[name] != expected[name]:
            problems.append(f"shape mismatch {name} ({reader.where[name].name}): checkpoint {reader.shapes[name]}, "
                            f"config.json expects {expected[name]}")
    problems += [f"missing tensor {name}" for name in expected if name not in names]
    if problems:
        reader.close()
        raise ConfigError(f"{path}: PaddleNLP checkpoint does not match its config.json ({len(problems)} problem(s)): "
                          + "; ".join(problems))
    return ruled, reader


def _from_paddlenlp(rule, stored: list, shapes: List[List[int]], config: ModelConfig) -> list:
    """The rule's PaddleNLP tensors -> its llmpre parameter values (inverse of :func:`_to_paddlenlp`)."""
    import paddle

    if rule.kind == "copy":
        return stored
    if rule.kind == "linear":
        return [stored[0].transpose([1, 0])]
    widths = [s[-1] for s in shapes]
    offsets = np.cumsum([0] + widths).tolist()
    fused = stored[0]
    return [paddle.gather(fused, paddle.to_tensor(fused_columns(rule.kind, j, np.arange(w), offsets, config)),
                          axis=fused.ndim - 1) for j, w in enumerate(widths)]


def load_paddlenlp_weights(model, path) -> None:
    """Copy the PaddleNLP checkpoint at ``path`` into ``model`` (each value cast to its
    parameter's dtype), after checking it whole (:func:`check_checkpoint`). A rank of a
    parallel run reads its own regions instead (:func:`llmpre.models.hf_load.attach`)."""
    import paddle

    ruled, reader = check_checkpoint(model, path)
    params = dict(model.named_parameters())
    with reader, paddle.no_grad():
        for rule in ruled:
            stored = [reader.read(n, []) for n in rule.hf]
            shapes = [[int(s) for s in params[o].shape] for o in rule.ours]
            for name, value in zip(rule.ours, _from_paddlenlp(rule, stored, shapes, model.config)):
                params[name].set_value(value.astype(params[name].dtype))


# ---------------------------------------------------------------- writing
def _to_paddlenlp(rule, ours: list, config: ModelConfig) -> list:
    """llmpre parameter values (Paddle tensors) -> the rule's PaddleNLP tensors."""
    import paddle

    if rule.kind == "copy":
        return ours
    if rule.kind == "linear":
        return [ours[0].transpose([1, 0])]
    fused = paddle.concat(ours, axis=-1)
    if rule.kind == "cols":
        return [fused]
    widths = [int(t.shape[-1]) for t in ours]
    offsets = np.cumsum([0] + widths).tolist()
    cols = np.concatenate([fused_columns(rule.kind, j, np.arange(w), offsets, config) for j, w in enumerate(widths)])
    order = paddle.to_tensor(np.argsort(cols).astype(np.int64))   # fused column c <- concatenated column order[c]
    return [paddle.gather(fused, order, axis=fused.ndim - 1)]


def _header(entries, dtype: str, metadata: Dict[str, str]) -> bytes:
    """A safetensors header (size prefix included) for ``entries`` stored back to back."""
    head: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for name, shape, nbytes in entries:
        head[name] = {"dtype": CODES[dtype][0], "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def save_paddlenlp(config: ModelConfig, shapes: Dict[str, Sequence[int]], tensor: Callable, path,
                   dtype: str = "float32", max_shard_bytes: Optional[int] = None,
                   metadata: Optional[Dict[str, str]] = None) -> int:
    """Write ``path`` as PaddleNLP 2.8.1 saves ``config``'s model: its config.json and
    ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` + index past
    ``max_shard_bytes``) with PaddleNLP's names, ``[in, out]`` layouts, ``format: np``
    metadata and bfloat16 as ``U16``. ``tensor(name)`` gives one llmpre parameter at a time
    (numpy or Paddle); each file is written under a temporary name and renamed into place,
    config.json last; ChatGLM2 also gets the rotary buffer PaddleNLP saves
    (:func:`llmpre.models.paddlenlp_names.buffers`). Returns the bytes of weights written."""
    from llmpre.models.hf_stream import _as_tensor

    if dtype not in CODES:
        raise ConfigError(f"dtype={dtype!r}: use one of {', '.join(CODES)}")
    path = Path(path)
    pnlp_config = config_to_paddlenlp(config, dtype)    # validates before anything is written
    ruled = rules(config, write=True)
    size = CODES[dtype][1]
    entries = []
    for rule in ruled:
        for name, shape in zip(rule.hf, tensor_shapes(rule, [list(shapes[o]) for o in rule.ours])):
            entries.append((name, [int(s) for s in shape], int(np.prod(shape, dtype=np.int64)) * size))
    extra = buffers(config)
    entries += [(name, list(a.shape), a.size * size) for name, a in extra.items()]
    groups = shards(entries, max_shard_bytes)
    names, files, total = shard_files(groups, pnlp_config)
    meta = {**(metadata or {}), "format": FORMAT}

    def arrays():
        for rule in ruled:
            ours = [_as_tensor(tensor(o), dtype, o, shapes[o]) for o in rule.ours]
            out = _to_paddlenlp(rule, ours, config)
            del ours
            for name, t in zip(rule.hf, out):
                a = np.ascontiguousarray(t.contiguous().numpy())      # bfloat16 -> its uint16 bits
                yield name, (a.byteswap() if sys.byteorder == "big" else a)
        for name, value in extra.items():
            a = np.ascontiguousarray(_as_tensor(value, dtype, name, value.shape).numpy())
            yield name, (a.byteswap() if sys.byteorder == "big" else a)

    def write_shard(tmp, group):
        with open(tmp, "wb") as fh:
            fh.write(_header(group, dtype, meta))
            for want, shape, nbytes in group:
                got, a = next(stream)
                if got != want or list(a.shape) != shape or a.nbytes != nbytes:
                    raise ValueError(f"{tmp}: expected {want} {shape}, got {got} {list(a.shape)}")
                fh.write(a.reshape(-1).view(np.uint8))

    path.mkdir(parents=True, exist_ok=True)
    stream = arrays()
    try:
        publish(path, names, groups, files, write_shard)
    finally:
        stream.close()
    return total
