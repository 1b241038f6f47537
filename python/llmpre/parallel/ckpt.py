"""Sharded checkpoints that load onto any layout.

A checkpoint holds, in ``checkpoint-<step>/``:

    model-tp{t}-pp{p}.safetensors        parameters of one (tp, pp) position (written once:
                                         by its dp 0, sharding 0 rank), tp-sliced; its
                                         metadata "llmpre_params" is the JSON of each
                                         parameter's global shape and split axis
    optim-tp{t}-pp{p}-sh{s}.safetensors  the optimizer elements sharding rank s owns, as flat
                                         ranges of each tp-sliced parameter:
                                         "<name>|<start>|<end>|exp_avg" (and exp_avg_sq; master
                                         only for low-precision parameters: an fp32 one is its
                                         own master weight)
    model-tp{t}-pp{p}-ep{j}.safetensors  expert parallelism (ep > 1): the experts data rank j
                                         (1 <= j < ep, the first ep group) holds; data rank 0's
                                         are in the model file above (its metadata as there)
    optim-tp{t}-pp{p}-ex{d}.safetensors  expert parallelism: the optimizer elements of data rank
                                         d's experts (named as in optim-*-sh*: any file of a
                                         position is read for any parameter)
    rng-rank{r}.pkl                      every rank's RNG states
    trainer_state.json                   step, optimizer scalars, ..., and "layout" (the dims)
    manifest.json                        size and sha256 of every file (written last)

A single process is the layout of one position. :class:`GlobalTensors` reads
any region of a parameter's global tensor, and any element range of the
optimizer state of a rank's slice of it, from just the parts of the files that
overlap it, so a rank resuming reads only what it keeps (never a whole tensor it
does not own): on the same layout bit-exactly, and on another layout (other tp,
pp, sharding stage or degree, dp) the same values. It also reads the earlier
forms: ``layout.json`` + ``params-tp{t}-pp{p}.json`` beside the same files, and
the former single-process ``model.safetensors`` + ``optimizer.safetensors``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os

import numpy as np
from safetensors import safe_open

from llmpre.parallel.tensor_parallel import TP_SPLIT

LAYOUT = "layout.json"            # earlier checkpoints: the layout in a file of its own
PARAMS_KEY = "llmpre_params"      # safetensors metadata of model-tp*-pp* files


def param_meta(p) -> dict:
    """Global shape and tp split of a (possibly sliced) parameter."""
    split = getattr(p, TP_SPLIT, None)
    shape = list(p.shape)
    if split is not None:
        axis, full = split
        shape[axis] = full
        return {"shape": shape, "split_axis": axis}
    return {"shape": shape, "split_axis": None}


def rank_files(env) -> dict:
    c = env.coords
    t, p, s = c["tp"], c["pp"], c["sharding"]
    return {"model": f"model-tp{t}-pp{p}.safetensors",
            "optim": f"optim-tp{t}-pp{p}-sh{s}.safetensors",
            "rng": f"rng-rank{env.rank}.pkl",
            "writes_model": c["dp"] == 0 and c["sharding"] == 0 and not c.get("sep") and not c.get("cp"),
            "writes_optim": c["dp"] == 0 and not c.get("sep") and not c.get("cp"),   # sep/cp: copies
            **_expert_files(env, t, p)}


def _expert_files(env, t: int, p: int) -> dict:
    """Expert parallelism: the model file of a first-ep-group member's experts (data rank 0's
    go into the model file) and the optimizer file of this rank's experts (written once per
    replica: by the first ep group, or by every rank when sharding splits the state)."""
    dims = env.dims
    if getattr(dims, "ep", 1) == 1:
        return {"expert_model": None, "expert_optim": None}
    d = dims.data_rank(env.rank)
    return {"expert_model": f"model-tp{t}-pp{p}-ep{d}.safetensors" if 0 < d < dims.ep else None,
            "expert_optim": (f"optim-tp{t}-pp{p}-ex{d}.safetensors" if dims.sharding > 1 or d < dims.ep
                             else None)}


class GlobalTensors:
    """Regions of the parameters of a checkpoint of any layout, and element ranges of
    their optimizer state, read from the parts of the files that hold them.

    A region is ``(start, stop)`` per axis of a parameter's global tensor; a rank's tp
    slice is the region :func:`tp_region` gives. :meth:`region` reads from each model
    file only its overlap with the region (safetensors ``get_slice``), and
    :meth:`optimizer_elements` reads, of the stored element ranges, only those that
    overlap the elements asked for. So a rank resuming on the layout it was saved on
    reads exactly its own slices, and on another layout the parts of the files that
    overlap its slices (see :meth:`optimizer_elements` for the rows read around them).
    Nothing read is kept: every call returns fresh numpy arrays. Only the file
    headers (tensor names and element ranges) are remembered.

    Files open on first use and stay open until :meth:`close` (or the end of a
    ``with`` block); a read after ``close`` opens them again.
    """

    def __init__(self, path: str):
        self.path = path
        self._stack = contextlib.ExitStack()
        self._open: dict = {}
        self._state_index: dict = {}    # (tp, pp) -> {name: {kind: [(start, end, file, key, shape)]}}
        self.layout = None              # None: the former single-process format
        self.params: dict = {}          # name -> {"shape", "split_axis", "stage"}
        try:
            self._read_layout()
        except BaseException:
            self.close()
            raise

    def _read_layout(self) -> None:
        path = self.path
        layout_path = os.path.join(path, LAYOUT)
        if os.path.exists(layout_path):
            with open(layout_path, encoding="utf-8") as fh:
                self.layout = json.load(fh)
        else:
            try:
                with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
                    self.layout = json.load(fh).get("layout")
            except (OSError, ValueError):
                self.layout = None
        if self.layout is None:
            return
        for fname in sorted(os.listdir(path)):
            stage, suffix = None, ""
            if fname.startswith("params-tp0-pp") and fname.endswith(".json"):
                stage = int(fname[len("params-tp0-pp"):-len(".json")])
                with open(os.path.join(path, fname), encoding="utf-8") as fh:
                    metas = json.load(fh)
            elif fname.startswith("model-tp0-pp") and fname.endswith(".safetensors"):
                stage, _, ep = fname[len("model-tp0-pp"):-len(".safetensors")].partition("-")
                stage, suffix = int(stage), (f"-{ep}" if ep else "")       # -ep{j}: experts of member j
                metas = json.loads((self._file(fname).metadata() or {}).get(PARAMS_KEY, "{}"))
            if stage is not None:
                for name, meta in metas.items():
                    if name not in self.params or stage < self.params[name]["stage"]:
                        self.params[name] = {**meta, "stage": stage, **({"suffix": suffix} if suffix else {})}

    # ---- files -------------------------------------------------------------------------
    def _file(self, name):
        f = self._open.get(name)
        if f is None:
            f = self._open[name] = self._stack.enter_context(
                safe_open(os.path.join(self.path, name), framework="np"))
        return f

    def close(self) -> None:
        """Close every open file."""
        self._open.clear()
        stack, self._stack = self._stack, contextlib.ExitStack()
        stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- what the checkpoint holds -------------------------------------------------------
    def names(self) -> list[str]:
        if self.layout is None:
            return list(self._file("model.safetensors").keys())
        return list(self.params)

    def meta(self, name: str) -> dict:
        if self.layout is None:
            shape = list(self._file("model.safetensors").get_slice(name).get_shape())
            return {"shape": shape, "split_axis": None}
        return self.params[name]

    def _holders(self, name: str) -> list[tuple]:
        """``(tp index, global region)`` of the model files holding parts of ``name``, tp
        order (of a parameter replicated over tp, only tp 0's copy); the former format's
        one file is tp index None."""
        meta = self.meta(name)
        whole = [(0, int(s)) for s in meta["shape"]]
        axis = meta["split_axis"]
        if self.layout is None:
            return [(None, whole)]
        if axis is None:
            return [(0, whole)]
        tp = self.layout["dims"]["tp"]
        size = whole[axis][1] // tp
        return [(t, whole[:axis] + [(t * size, (t + 1) * size)] + whole[axis + 1:]) for t in range(tp)]

    def _model_file(self, name: str, t) -> str:
        if t is None:
            return "model.safetensors"
        meta = self.params[name]
        return f"model-tp{t}-pp{meta['stage']}{meta.get('suffix', '')}.safetensors"

    # ---- parameters ----------------------------------------------------------------------
    def region(self, name: str, region) -> np.ndarray:
        """``region`` ((start, stop) per axis of the global tensor) of parameter ``name``,
        as stored (fp32); each model file holding part of it is read for its overlap only."""
        region = [(int(a), int(b)) for a, b in region]
        out = None
        for t, held in self._holders(name):
            part = _overlap(region, held)
            if part is None:
                continue
            index = tuple(slice(a - h, b - h) for (a, b), (h, _) in zip(part, held))
            value = self._file(self._model_file(name, t)).get_slice(name)[index]
            if part == region:
                return value
            if out is None:
                out = np.zeros([b - a for a, b in region], value.dtype)
            out[tuple(slice(a - r, b - r) for (a, b), (r, _) in zip(part, region))] = value
        if out is None:        # nothing to read (an empty region)
            return np.zeros([max(b - a, 0) for a, b in region], np.float32)
        return out

    def param(self, name: str) -> np.ndarray:
        """Parameter ``name``'s whole global tensor."""
        return self.region(name, [(0, int(s)) for s in self.meta(name)["shape"]])

    def param_closing(self, name: str) -> np.ndarray:
        """:meth:`param`, then every file closed: for a caller that reads one whole
        parameter at a time and has no end at which to close (``export-hf``, the final
        weights of a parallel run)."""
        try:
            return self.param(name)
        finally:
            self.close()

    def elements(self, name: str, region, start: int, end: int) -> np.ndarray:
        """Flat elements ``[start, end)`` of the tensor ``region`` of parameter ``name`` (a
        rank's tp slice, flattened as the rank's parameter): the rows holding them are read."""
        return _flat_elements(lambda rows: self.region(name, rows), region, start, end)

    # ---- optimizer state -----------------------------------------------------------------
    def _state_pieces(self, name: str, t) -> dict:
        """``{kind: [(start, end, file, key, shape)]}``: the stored parts of the optimizer
        state of the tp-``t`` slice of ``name``, as flat element ranges of that slice
        (``shape`` the stored tensor's shape: flat ranges, or the whole tensor in the
        former format). Built from the file headers, once per (tp, pp) position."""
        if t is None:
            f = self._file("optimizer.safetensors")
            keys = set(f.keys())
            numel = int(np.prod(self.meta(name)["shape"]))
            return {kind: [(0, numel, "optimizer.safetensors", f"{name}.{kind}", self.meta(name)["shape"])]
                    for kind in ("exp_avg", "exp_avg_sq", "master") if f"{name}.{kind}" in keys}
        position = (t, self.params[name]["stage"])
        index = self._state_index.get(position)
        if index is None:
            index = self._state_index[position] = {}
            prefix = f"optim-tp{position[0]}-pp{position[1]}-"       # -sh{s}, and -ex{d} under ep
            for fname in sorted(f for f in os.listdir(self.path) if f.startswith(prefix)
                                and f.endswith(".safetensors")):
                for key in self._file(fname).keys():
                    pname, start, end, kind = key.rsplit("|", 3)
                    start, end = int(start), int(end)
                    index.setdefault(pname, {}).setdefault(kind, []).append(
                        (start, end, fname, key, [end - start]))
            for kinds in index.values():
                for pieces in kinds.values():
                    pieces.sort()
        return index.get(name, {})

    def _stored(self, name: str, pieces: list, lo: int, hi: int) -> np.ndarray:
        """Flat elements ``[lo, hi)`` of a state tensor stored as ``pieces``; only the
        overlapping parts of each are read."""
        out, pos = None, lo
        for start, end, fname, key, shape in pieces:
            a, b = max(start, lo), min(end, hi)
            if a >= b:
                continue
            if a > pos:
                break      # a gap: reported below
            sl = self._file(fname).get_slice(key)
            if len(shape) == 1:
                value = sl[a - start:b - start]
            else:          # the former format: whole tensors; the rows holding [a, b)
                value = _flat_elements(lambda rows: sl[tuple(slice(x, y) for x, y in rows)],
                                       [(0, int(s)) for s in shape], a - start, b - start)
            if a == lo and b == hi:
                return value
            if out is None:
                out = np.zeros(hi - lo, np.float32)
            out[a - lo:b - lo] = value
            pos = max(pos, b)
        if pos < hi:
            raise ValueError(f"{self.path}: optimizer state of {name} is incomplete")
        return out if out is not None else np.zeros(0, np.float32)

    def optimizer_elements(self, name: str, region, start: int, end: int):
        """``(exp_avg, exp_avg_sq, master or None)``: flat elements ``[start, end)`` of the
        optimizer state of the tensor ``region`` of parameter ``name`` (a rank's tp slice,
        flattened as the rank's parameter); master is None where the checkpoint stores
        none (an fp32 parameter is its own master weight: read :meth:`elements`).

        Where a file holds exactly this slice (the same tp slicing) just the stored
        ranges overlapping ``[start, end)`` are read. Otherwise the rows of the slice
        holding them are assembled from each file's overlap with them, read a block of
        rows at a time: whole rows of the stored slice (its flat ranges hold nothing
        narrower), so a rank whose slice is narrower than the stored ones (a higher tp)
        reads the columns beside its own too, and keeps only its own."""
        region = [(int(a), int(b)) for a, b in region]
        holders = self._holders(name)
        same = [(t, held) for t, held in holders if held == region][:1]
        used = same or [(t, held) for t, held in holders if _overlap(region, held) is not None]
        states = [(t, held, self._state_pieces(name, t)) for t, held in used]
        kinds = ["exp_avg", "exp_avg_sq"]
        if states and all("master" in pieces for _, _, pieces in states):
            kinds.append("master")
        out = []
        for kind in kinds:
            if same:
                out.append(self._stored(name, states[0][2].get(kind, []), start, end))
            else:
                read = functools.partial(self._state_region, name, kind, states)
                out.append(_flat_elements(read, region, start, end))
        return out[0], out[1], (out[2] if len(out) > 2 else None)

    def _state_region(self, name: str, kind: str, states: list, region) -> np.ndarray:
        """``region`` (global coordinates) of the optimizer state ``kind`` of ``name``, from
        the stored slices it overlaps: whole rows of each, a block at a time (the former
        format's whole tensors: just the overlap)."""
        out = np.zeros([b - a for a, b in region], np.float32)
        for t, held, pieces in states:
            part = _overlap(region, held)
            if part is None:
                continue
            dst = tuple(slice(a - r, b - r) for (a, b), (r, _) in zip(part, region))
            if t is None:       # the former format stores whole tensors: read just the overlap
                if kind not in pieces:
                    raise ValueError(f"{self.path}: optimizer state of {name} is incomplete")
                _, _, fname, key, _ = pieces[kind][0]
                out[dst] = self._file(fname).get_slice(key)[tuple(slice(a, b) for a, b in part)]
                continue
            held_shape = [b - a for a, b in held]
            row = int(np.prod(held_shape[1:]))
            r0, r1 = part[0][0] - held[0][0], part[0][1] - held[0][0]
            step = max(1, BLOCK_ELEMENTS // max(row, 1))
            src = (slice(None),) + tuple(slice(a - h, b - h) for (a, b), (h, _) in zip(part[1:], held[1:]))
            at = held[0][0] - region[0][0]          # row x of the stored slice is row x + at of out
            for x in range(r0, r1, step):
                y = min(x + step, r1)
                rows = self._stored(name, pieces.get(kind, []), x * row, y * row)
                out[(slice(x + at, y + at),) + dst[1:]] = rows.reshape([y - x] + held_shape[1:])[src]
        return out


BLOCK_ELEMENTS = 1 << 22     # rows of another layout's optimizer state read at a time (16 MiB)


def _overlap(region, held):
    """The part of ``region`` inside ``held`` (both (start, stop) per axis), or None."""
    part = [(max(a, c), min(b, d)) for (a, b), (c, d) in zip(region, held)]
    return part if all(a < b for a, b in part) else None


def _flat_elements(read, region, start: int, end: int) -> np.ndarray:
    """Flat elements ``[start, end)`` of the tensor ``region`` (row-major), from ``read``
    of the rows holding them (a region whose first axis covers those rows)."""
    if end <= start:
        return np.zeros(0, np.float32)
    if not region:
        return read(region).reshape(-1)[start:end]
    shape = [b - a for a, b in region]
    row = int(np.prod(shape[1:]))
    r0, r1 = start // row, -(-end // row)
    first = region[0][0]
    value = read([(first + r0, first + r1)] + list(region[1:])).reshape(-1)
    return value[start - r0 * row:end - r0 * row]


def tp_region(p, tp_index: int) -> list[tuple[int, int]]:
    """The region of its global tensor that parameter ``p`` (this rank's tp slice, or a
    replicated parameter) holds: ``(start, stop)`` per axis."""
    region = [(0, int(s)) for s in p.shape]
    split = getattr(p, TP_SPLIT, None)
    if split is not None:
        axis = split[0]
        size = int(p.shape[axis])
        region[axis] = (tp_index * size, (tp_index + 1) * size)
    return region
