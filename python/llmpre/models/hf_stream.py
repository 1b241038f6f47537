"""HF checkpoints written one tensor at a time: ``config.json`` + safetensors files from a
function that returns one llmpre parameter (global, whole) at a time.

    save_streamed(config, shapes, tensor, "out/", dtype="bfloat16", max_shard_bytes=5 * 10**9)

``shapes`` maps every llmpre parameter name to its global shape; ``tensor(name)`` returns
that parameter's values (a numpy array or a Paddle tensor). Names, layouts and shapes come
from :mod:`llmpre.models.hf_names`, one :class:`~llmpre.models.hf_names.Rule` at a time, so
at most one rule's tensors (e.g. a fused q/k/v) are in memory at once, whatever the model's
size: a 70B model is written by a process that never holds it.

The safetensors format (github.com/huggingface/safetensors, "Format") is written here
directly, because ``safetensors.save_file`` needs every tensor of a file in memory:

    8 bytes        N, the header size (unsigned little-endian)
    N bytes        JSON: {"__metadata__": {str: str}, name: {"dtype", "shape",
                   "data_offsets": [begin, end]}, ...}, padded with spaces to a multiple of 8
    the rest       each tensor's little-endian bytes, row-major, at its data_offsets
                   (relative to the end of the header), with no gaps

Shapes and dtypes are known from the config, so each header is written before its data.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from llmpre.errors import ConfigError
from llmpre.models.config import ModelConfig
from llmpre.models.hf_config import to_hf_dict

if TYPE_CHECKING:
    from llmpre.models.hf_names import Rule

# Paddle (through llmpre.models.hf_names) is imported on first use: the CLI imports this
# module at start-up for parse_size.

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"      # transformers' default for save_pretrained
# written dtype -> (safetensors dtype code, bytes per element)
CODES = {"float32": ("F32", 4), "bfloat16": ("BF16", 2), "float16": ("F16", 2), "float64": ("F64", 8)}
PathLike = Union[str, os.PathLike]
Entry = Tuple[str, List[int], int]     # (HF tensor name, shape, bytes)

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def index_shards(path: Path, index: Path, what: str, fix: str) -> List[Path]:
    """The shard files an index (``{"weight_map": {tensor: file}}``) in directory ``path`` lists,
    each once, sorted; one ConfigError for an unreadable index (``what`` names its kind) or
    missing shards (``fix`` says what to do)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{index}: not a {what} with a 'weight_map' ({e})") from None
    files = [path / f for f in sorted(set(weight_map.values()))]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise ConfigError(f"{index} lists shard(s) that are missing: {', '.join(absent)}; {fix}")
    return files


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConfigError(f"--max-shard-size {text!r}: give a size such as 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def fault_delay() -> None:
    """Test hook: ``LLMPRE_FAULT_FINAL_SAVE_DELAY=<seconds>`` sleeps after each weights
    file of a save, so a test can kill the process in the middle of one."""
    delay = float(os.environ.get("LLMPRE_FAULT_FINAL_SAVE_DELAY", "0") or 0)
    if delay > 0:
        import time

        time.sleep(delay)


def plan(config: ModelConfig, shapes: Dict[str, Sequence[int]], dtype: str) -> Tuple[List[Rule], List[Entry]]:
    """The rules of ``config``'s checkpoint and every HF tensor they write, in order, with its
    shape and size in ``dtype``; ConfigError when ``shapes`` lacks a parameter they need."""
    from llmpre.models.hf_names import checkpoint_rules, hf_shapes

    if dtype not in CODES:
        raise ConfigError(f"dtype={dtype!r}: use one of {', '.join(CODES)}")
    rules = checkpoint_rules(config)
    missing = sorted({o for rule in rules for o in rule.ours if o not in shapes})
    if missing:
        raise ConfigError(f"no values for parameter(s) {', '.join(missing[:6])}"
                          + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
                          + f" of this {config.model_type} model")
    size = CODES[dtype][1]
    entries = []
    for rule in rules:
        for name, shape in zip(rule.hf, hf_shapes(rule, [list(shapes[o]) for o in rule.ours])):
            entries.append((name, [int(s) for s in shape], int(np.prod(shape, dtype=np.int64)) * size))
    return rules, entries


def shards(entries: List[Entry], max_bytes: Optional[int]) -> List[List[Entry]]:
    """Consecutive groups of at most ``max_bytes`` each (a larger tensor alone); one group
    when ``max_bytes`` is None or 0."""
    if not max_bytes:
        return [list(entries)]
    groups, current, size = [], [], 0
    for entry in entries:
        if current and size + entry[2] > max_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry[2]
    return groups + [current]


def header(entries: List[Entry], dtype: str, metadata: Dict[str, str]) -> bytes:
    """A safetensors header (size prefix included) for ``entries`` stored back to back."""
    bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise ValueError(f"safetensors metadata must map str to str: {bad}")
    head: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for name, shape, nbytes in entries:
        head[name] = {"dtype": CODES[dtype][0], "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)          # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def write_safetensors(path: PathLike, entries: List[Entry], dtype: str, arrays: Iterator[Tuple[str, np.ndarray]],
                      metadata: Dict[str, str]) -> None:
    """Write one safetensors file holding ``entries``: the header, then the arrays that
    ``arrays`` yields, which must come in the entries' order with their shapes."""
    with open(path, "wb") as fh:
        fh.write(header(entries, dtype, metadata))
        for name, shape, nbytes in entries:
            got, array = next(arrays)
            if got != name or list(array.shape) != shape or array.nbytes != nbytes:
                raise ValueError(f"{path}: expected {name} {shape} ({nbytes} bytes), got {got} "
                                 f"{list(array.shape)} ({array.nbytes} bytes)")
            fh.write(array.reshape(-1).view(np.uint8))
            del array


def _as_tensor(value, dtype: str, name: str, shape: Sequence[int]):
    """``value`` (numpy array or Paddle tensor) as a CPU Paddle tensor of ``dtype``."""
    import paddle

    if isinstance(value, np.ndarray):
        t = paddle.from_dlpack(value)     # no copy: the array lives as long as the tensor
    else:
        t = value.detach()
        if not t.place.is_cpu_place():
            t = t.cpu()
    if list(t.shape) != list(shape):
        raise ConfigError(f"parameter {name} has shape {list(t.shape)}; the model needs {list(shape)}")
    return t if str(t.dtype).replace("paddle.", "") == dtype else t.astype(dtype)


def _rule_arrays(rule: Rule, tensor: Callable, shapes, dtype: str, config: ModelConfig) -> List[np.ndarray]:
    """The rule's HF tensors as numpy arrays of their bytes (bf16 as uint16)."""
    from llmpre.models.hf_names import to_hf

    ours = [_as_tensor(tensor(o), dtype, o, shapes[o]) for o in rule.ours]
    hf = to_hf(rule, ours, config)
    del ours            # each input is now held only by the output that may alias it
    out = []
    while hf:
        a = np.ascontiguousarray(hf.pop(0).contiguous().numpy())
        out.append(a.byteswap() if sys.byteorder == "big" else a)
    return out


def hf_arrays(config: ModelConfig, rules: List[Rule], shapes, tensor: Callable,
              dtype: str) -> Iterator[Tuple[str, np.ndarray]]:
    """(HF name, array) of every tensor of the checkpoint, in rule order, converting one rule
    at a time (its parameters are fetched with ``tensor`` only when it is reached)."""
    for rule in rules:
        arrays = _rule_arrays(rule, tensor, shapes, dtype, config)
        for i, name in enumerate(rule.hf):
            item, arrays[i] = arrays[i], None     # the file writer is the only holder
            yield name, item
            del item


def shard_files(groups: List[List[Entry]], config_dict: dict) -> Tuple[List[str], Dict[str, str], int]:
    """The weights file names of ``groups`` (one ``model.safetensors``, else
    ``model-0000i-of-0000n.safetensors``), the text files beside them (config.json, and the
    index when sharded) and the total bytes."""
    names = [WEIGHTS_NAME] if len(groups) == 1 else [
        f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    files = {CONFIG_NAME: json.dumps(config_dict, indent=2, sort_keys=True) + "\n"}
    total = sum(e[2] for group in groups for e in group)
    if len(groups) > 1:
        weight_map = {e[0]: name for name, group in zip(names, groups) for e in group}
        files[INDEX_NAME] = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    return names, files, total


def publish(path: Path, names: List[str], groups: List[List[Entry]], files: Dict[str, str],
            write_shard: Callable[[Path, List[Entry]], None]) -> None:
    """Write a checkpoint directory without a reader ever seeing half of it: each weights
    shard (``write_shard(tmp, group)``), then the text files, go to temporary names in
    ``path``; then all are renamed into place, weights first and config last, and the shards
    of a previous save with another sharding are removed. On an error the temporaries go."""
    temps = []
    try:
        for name, group in zip(names, groups):
            tmp = path / f".{name}.tmp{os.getpid()}"
            temps.append((tmp, path / name))
            write_shard(tmp, group)
            fault_delay()
        for name in sorted(files, key=lambda n: n == CONFIG_NAME):   # index before config
            tmp = path / f".{name}.tmp{os.getpid()}"
            temps.append((tmp, path / name))
            tmp.write_text(files[name])
        stale = [WEIGHTS_NAME, INDEX_NAME] + [p.name for p in path.glob("model-*-of-*.safetensors")]
        for tmp, final in temps:
            os.replace(tmp, final)
        for old in stale:  # a previous save with another sharding
            if (path / old).exists() and old not in names and old not in files:
                (path / old).unlink()
    finally:
        for tmp, _ in temps:
            if tmp.exists():
                tmp.unlink()


def save_streamed(config: ModelConfig, shapes: Dict[str, Sequence[int]], tensor: Callable, path: PathLike,
                  dtype: str = "float32", style: str = "v4", max_shard_bytes: Optional[int] = None,
                  metadata: Optional[Dict[str, str]] = None) -> int:
    """Write ``path/config.json`` and the weights in HF layout from ``tensor(name)``, one rule's
    parameters at a time: ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` +
    ``model.safetensors.index.json`` when the weights exceed ``max_shard_bytes``. Returns the
    bytes of weights written.

    Every tensor is written as ``dtype`` (cast as Paddle casts), which config.json names.
    Each file is written to a temporary name in ``path`` and renamed into place, weights
    first and config last, so a reader never sees a half-written checkpoint; the files of a
    previous save with another sharding are removed after. ``style`` picks the config keys
    (see :func:`llmpre.models.hf_config.to_hf_dict`); ``metadata`` (strings) is stored in
    every weights file.
    """
    path = Path(path)
    hf_config = to_hf_dict(config, style=style)   # validates before anything is written
    hf_config["dtype" if style == "v5" else "torch_dtype"] = dtype
    rules, entries = plan(config, shapes, dtype)
    groups = shards(entries, max_shard_bytes)
    names, files, total = shard_files(groups, hf_config)
    path.mkdir(parents=True, exist_ok=True)
    meta = {**(metadata or {}), "format": "pt"}     # transformers needs format=pt
    arrays = hf_arrays(config, rules, shapes, tensor, dtype)
    try:
        publish(path, names, groups, files, lambda tmp, group: write_safetensors(tmp, group, dtype, arrays, meta))
    finally:
        arrays.close()
    return total
