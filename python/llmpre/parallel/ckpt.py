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
    rng-rank{r}.pkl                      every rank's RNG states
    trainer_state.json                   step, optimizer scalars, ..., and "layout" (the dims)
    manifest.json                        size and sha256 of every file (written last)

A single process is the layout of one position. :class:`GlobalTensors`
reassembles any parameter's full tensor, and its optimizer state, so a run
resumes on the same layout bit-exactly and on another layout (other tp, pp,
sharding stage or degree, dp) from the same values. It also reads the earlier
forms: ``layout.json`` + ``params-tp{t}-pp{p}.json`` beside the same files, and
the former single-process ``model.safetensors`` + ``optimizer.safetensors``.
"""

from __future__ import annotations

import json
import os

import numpy as np

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
            "writes_model": c["dp"] == 0 and c["sharding"] == 0,
            "writes_optim": c["dp"] == 0}


class GlobalTensors:
    """Full (global) parameters and optimizer states of a checkpoint, any layout."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        self._open = {}
        self._safe_open = safe_open
        self.layout = None          # None: the former single-process format
        self.params: dict = {}      # name -> {"shape", "split_axis", "stage"}
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
            stage = None
            if fname.startswith("params-tp0-pp") and fname.endswith(".json"):
                stage = int(fname[len("params-tp0-pp"):-len(".json")])
                with open(os.path.join(path, fname), encoding="utf-8") as fh:
                    metas = json.load(fh)
            elif fname.startswith("model-tp0-pp") and fname.endswith(".safetensors"):
                stage = int(fname[len("model-tp0-pp"):-len(".safetensors")])
                metas = json.loads((self._file(fname).metadata() or {}).get(PARAMS_KEY, "{}"))
            if stage is not None:
                for name, meta in metas.items():
                    if name not in self.params or stage < self.params[name]["stage"]:
                        self.params[name] = {**meta, "stage": stage}

    def _file(self, name):
        if name not in self._open:
            self._open[name] = self._safe_open(os.path.join(self.path, name), framework="numpy")
        return self._open[name]

    def names(self) -> list[str]:
        if self.layout is None:
            return list(self._file("model.safetensors").keys())
        return list(self.params)

    def meta(self, name: str) -> dict:
        if self.layout is None:
            shape = list(self._file("model.safetensors").get_slice(name).get_shape())
            return {"shape": shape, "split_axis": None}
        return self.params[name]

    def _positions(self, name):
        """(tp index, pp index) of the files that hold slices of ``name``, tp order."""
        stage = self.params[name]["stage"]
        return [(t, stage) for t in range(self.layout["dims"]["tp"])]

    def param(self, name: str) -> np.ndarray:
        if self.layout is None:
            return self._file("model.safetensors").get_tensor(name)
        meta = self.meta(name)
        slices = [self._file(f"model-tp{t}-pp{p}.safetensors").get_tensor(name)
                  for t, p in self._positions(name)]
        if meta["split_axis"] is None:
            return slices[0]
        return np.concatenate(slices, axis=meta["split_axis"])

    def optimizer(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(exp_avg, exp_avg_sq, master or None) as full tensors."""
        if self.layout is None:
            f = self._file("optimizer.safetensors")
            keys = set(f.keys())
            master = f.get_tensor(f"{name}.master") if f"{name}.master" in keys else None
            return f.get_tensor(f"{name}.exp_avg"), f.get_tensor(f"{name}.exp_avg_sq"), master
        meta = self.meta(name)
        dims = self.layout["dims"]
        per_tp = []
        for t, p in self._positions(name):
            local_shape = list(meta["shape"])
            if meta["split_axis"] is not None:
                local_shape[meta["split_axis"]] //= dims["tp"]
            n = int(np.prod(local_shape))
            parts = {k: np.zeros(n, np.float32) for k in ("exp_avg", "exp_avg_sq", "master")}
            filled = np.zeros(n, bool)
            kinds = set()
            for s in range(dims["sharding"]):
                f = self._file(f"optim-tp{t}-pp{p}-sh{s}.safetensors")
                for key in f.keys():
                    pname, start, end, kind = key.rsplit("|", 3)
                    if pname != name:
                        continue
                    start, end = int(start), int(end)
                    parts[kind][start:end] = f.get_tensor(key)
                    filled[start:end] = True
                    kinds.add(kind)
            if not filled.all():
                raise ValueError(f"{self.path}: optimizer state of {name} is incomplete")
            per_tp.append({k: v.reshape(local_shape) for k, v in parts.items()
                           if k != "master" or "master" in kinds})
        axis = meta["split_axis"]
        join = (lambda xs: xs[0]) if axis is None else (lambda xs: np.concatenate(xs, axis=axis))
        # fp32 parameters are their own master weights: checkpoints store no copy
        master = join([d["master"] for d in per_tp]) if all("master" in d for d in per_tp) else None
        return join([d["exp_avg"] for d in per_tp]), join([d["exp_avg_sq"] for d in per_tp]), master


def local_slice(full: np.ndarray, meta_axis, tp_index: int, tp_size: int) -> np.ndarray:
    """This tp rank's slice of a full tensor split along ``meta_axis`` (or the whole)."""
    if meta_axis is None:
        return full
    return np.split(full, tp_size, axis=meta_axis)[tp_index]
