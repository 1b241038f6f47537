"""Checkpoints written by PaddleNLP's Trainer (``<output_dir>/checkpoint-N``), resumed by llmpre.

What PaddleNLP 2.8.1 writes into ``checkpoint-N`` (``Trainer._save_checkpoint``):

==========================================  ===============================================
``model_state.pdparams``                    a pickle: structured name (``llama.layers.0.
                                            self_attn.q_proj.weight``) -> numpy array, Paddle
                                            ``[in, out]`` layout, plus
                                            ``StructuredToParameterName@@``: structured name
                                            -> Paddle's automatic parameter name
                                            (``linear_0.w_0``)
``optimizer.pdopt``                         a pickle keyed by the automatic names:
                                            ``<auto>_moment1_0``, ``_moment2_0``,
                                            ``_beta1_pow_acc_0``, ``_beta2_pow_acc_0``;
                                            ``master_weights`` {auto: fp32} under O2;
                                            ``LR_Scheduler``
``model_state.tp00_pp00.pdparams``, ...     the same per tensor/pipeline rank (and
``optimizer.tp00_pp00_shard00.pdopt``       sharding rank) of a hybrid-parallel run
``model-0000k-of-0000n.safetensors``        unified checkpoint (``unified_checkpoint``): whole
+ ``model.safetensors.index.json``          tensors by structured name, Paddle layout
``optimizer-*.safetensors`` + index         ``<structured>/moment1_0``, ``/moment2_0``,
                                            ``/beta1_pow_acc_0``, ``/beta2_pow_acc_0``
``master_weights-*.safetensors`` + index    fp32 master weights by structured name (O2)
``scheduler.pdparams``, ``scaler.pdparams`` the LR scheduler (llmpre computes the rate from the
                                            step) and the fp16 loss scaler
``trainer_state.json``                      ``global_step``, ``log_history``
``training_args.bin``                       a pickle of PaddleNLP's TrainingArguments
``rng_state.pth`` / ``rng_state_<W>.pth``   RNG states; the name gives the world size W
==========================================  ===============================================

llmpre resumes a checkpoint that is one of: a single-process (or data-parallel) plain
checkpoint, or a unified checkpoint of any layout (its tensors are whole). The parameters,
the Adam moments (and master weights), the optimizer's step count (Paddle keeps
``beta1_pow_acc = beta1 ** (updates + 1)``), the loss scale and the global step are mapped;
the data position follows from the step (PaddleNLP consumed ``step x global batch``
samples, and llmpre's sample order is PaddleNLP's), which is why the global batch and the
seed must be those of the PaddleNLP run. Tensors map by PaddleNLP 2.8.1's names and layouts
of each family it has (:mod:`llmpre.models.paddlenlp_names`: Llama/Baichuan with or without
fused q/k/v and gate/up, QWen, GPT, Mixtral, ChatGLM2, Bloom, OPT); the optimizer state of a
fused tensor is split as its weights are. Other families map when PaddleNLP's names are
llmpre's behind one prefix. RNG states are not mapped (only GPT-family dropout draws while
training: its masks after the resume differ from PaddleNLP's).

:func:`convert` writes the mapped state as an llmpre checkpoint (:mod:`llmpre.parallel.ckpt`
format, one tensor at a time) into a directory of the caller's choosing, so any layout
resumes from it through the engine's one loader; anything unmappable is one
:class:`CheckpointError` saying what was found and how to continue from it.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from llmpre.train.checkpoint import MANIFEST, CheckpointError

_NAME = re.compile(r"^checkpoint-(\d+)$")
_HYBRID = re.compile(r"\.(tp\d+|pp\d+|shard\d+|moe\d+)")
_RNG = re.compile(r"^rng_state(?:_(\d+))?\.pth$")
_STRUCTURED = "StructuredToParameterName@@"
# files only PaddleNLP's Trainer writes into a checkpoint (llmpre's have a manifest)
_SIGNS = ("training_args.bin", "scheduler.pdparams", "optimizer.pdopt", "model_state.pdparams",
          "model.safetensors.index.json", "optimizer.safetensors.index.json")
# settings that shape the trajectory after the resume point: a change is reported, not refused
_COMPARED = ("learning_rate", "min_learning_rate", "warmup_steps", "decay_steps", "max_steps",
             "lr_scheduler_type", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
             "max_grad_norm", "bf16", "fp16", "fp16_opt_level")


@dataclass
class Found:
    """A PaddleNLP checkpoint directory and what it holds."""

    path: str
    step: int
    kind: str                          # "unified", "plain", "hybrid" or "incomplete"
    world_size: int | None = None
    training_args: dict = field(default_factory=dict)
    reason: str = ""                   # why it cannot be resumed ("" when it may be)

    def describe(self) -> str:
        what = {"unified": "a PaddleNLP unified checkpoint (safetensors)",
                "plain": "a PaddleNLP checkpoint (model_state.pdparams + optimizer.pdopt)",
                "hybrid": "a PaddleNLP hybrid-parallel checkpoint (per-rank .pdparams/.pdopt files)",
                "incomplete": "an incomplete PaddleNLP checkpoint"}[self.kind]
        world = f", {self.world_size} process(es)" if self.world_size else ""
        return f"{self.path}: {what} at global_step {self.step}{world}"


def is_paddlenlp_checkpoint(path: str) -> bool:
    """A ``checkpoint-N`` directory without llmpre's manifest holding files of PaddleNLP's Trainer."""
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, MANIFEST)):
        return False
    names = set(os.listdir(path))
    return bool(names & set(_SIGNS)) or any(_HYBRID.search(n) and n.endswith((".pdparams", ".pdopt"))
                                            for n in names)


def find(output_dir: str) -> list[Found]:
    """PaddleNLP checkpoints in ``output_dir``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _NAME.match(name)
        path = os.path.join(output_dir, name)
        if m and is_paddlenlp_checkpoint(path):
            found.append(examine(path))
    return sorted(found, key=lambda f: f.step)


def examine(path: str) -> Found:
    """What the PaddleNLP checkpoint at ``path`` holds (nothing large is read)."""
    names = set(os.listdir(path))
    m = _NAME.match(os.path.basename(os.path.normpath(path)))
    step = int(m.group(1)) if m else None
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
            step = int(json.load(fh)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    world = None
    for n in names:
        r = _RNG.match(n)
        if r:
            world = int(r.group(1) or 1)
    found = Found(os.path.normpath(path), step if step is not None else -1, "incomplete", world,
                  _training_args(os.path.join(path, "training_args.bin")))
    hybrid = sorted(n for n in names if _HYBRID.search(n) and n.endswith((".pdparams", ".pdopt")))
    if hybrid:
        found.kind = "hybrid"
        found.reason = (f"its parameters and optimizer state are split into per-rank files ({', '.join(hybrid[:3])}"
                        f"{', ...' if len(hybrid) > 3 else ''}) by PaddleNLP's tensor/pipeline/sharding layout; "
                        "llmpre resumes single-process checkpoints and unified checkpoints (PaddleNLP's "
                        "unified_checkpoint true), whose tensors are whole")
    elif {"model.safetensors.index.json", "model.safetensors", "optimizer.safetensors.index.json",
          "optimizer.safetensors", "master_weights.safetensors.index.json"} & names:
        found.kind = "unified"
        if not ({"optimizer.safetensors.index.json", "optimizer.safetensors"} & names):
            found.kind, found.reason = "incomplete", "it has model weights but no optimizer state (optimizer.safetensors)"
    elif "model_state.pdparams" in names or "optimizer.pdopt" in names:
        found.kind = "plain"
        missing = [n for n in ("model_state.pdparams", "optimizer.pdopt") if n not in names]
        if missing:
            found.kind, found.reason = "incomplete", f"{' and '.join(missing)} missing"
    else:
        found.reason = "it holds neither model weights nor optimizer state"
    if step is None and not found.reason:
        found.kind, found.reason = "incomplete", "no trainer_state.json and no step in its name"
    return found


def unmappable(found: Found, reason: str | None = None) -> CheckpointError:
    """The one error for a PaddleNLP checkpoint llmpre cannot resume: what was found, and how
    to continue from it."""
    weights = (f"start from its weights with a fresh optimizer at step 0 (continue_training true, "
               f"model_name_or_path {found.path}, another output_dir)")
    if found.kind == "incomplete":
        ways = ("remove it (or move it away) to resume from the newest complete checkpoint, or name "
                "one with resume_from_checkpoint")
    elif found.kind == "hybrid":
        ways = ("resume it with PaddleNLP (with unified_checkpoint true its next checkpoints are ones "
                "llmpre resumes)")
    else:
        ways = f"resume it with PaddleNLP; or {weights}"
    return CheckpointError(
        f"{found.describe()}; llmpre cannot resume from it: {reason or found.reason}. Nothing was trained. "
        f"To continue: {ways}; or set overwrite_output_dir true to delete the checkpoints here and start "
        "from scratch")


# ---- reading ---------------------------------------------------------------------------
class _Unpickler(pickle.Unpickler):
    """numpy arrays, dicts and plain values only: a checkpoint is data, never code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it holds a {module}.{name} object, not just arrays")


def _load_pickle(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = _Unpickler(fh).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError, ImportError) as e:
        raise CheckpointError(f"{path}: cannot be read as a PaddleNLP state dict ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a PaddleNLP state dict (a {type(data).__name__})")
    return data


class _Record:
    """Stands in for any class of a pickled TrainingArguments: keeps the fields."""

    def __init__(self, *args, **kwargs):
        self.value = args[0] if args else None

    def __setstate__(self, state):
        self.__dict__["state"] = state


class _ArgsUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("copyreg", "_reconstructor"):
            return lambda cls, base, state: cls()
        return type(name, (_Record,), {})


def _training_args(path: str) -> dict:
    """The fields of PaddleNLP's pickled TrainingArguments (enums as their values); {} when
    absent or unreadable. Read without PaddleNLP: every class becomes a plain record."""
    try:
        with open(path, "rb") as fh:
            obj = _ArgsUnpickler(fh).load()
    except Exception:   # absent or foreign: the checks that need it are skipped, and said so
        return {}
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return {}
    return {k: (v.value if isinstance(v, _Record) else v) for k, v in state.items()}


# PaddleNLP writes bfloat16 as U16 (its bits; "format: np" safetensors), others as BF16
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16, "U16": np.uint16}


class _Safetensors:
    """One safetensors file read with numpy, bf16 included (as float32)."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                self.header = json.loads(fh.read(n))
            self.offset = 8 + n
            size = os.path.getsize(path)
        except (OSError, struct.error, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        self.header.pop("__metadata__", None)
        end = max((v["data_offsets"][1] for v in self.header.values()), default=0)
        if self.offset + end > size:
            raise CheckpointError(f"{path}: truncated ({size} bytes, its header needs {self.offset + end})")

    def shape(self, key: str) -> list[int]:
        return [int(s) for s in self.header[key]["shape"]]

    def read(self, key: str) -> np.ndarray:
        meta = self.header[key]
        dtype = _ST_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.path}: {key} has dtype {meta['dtype']}, not a floating point one")
        a, b = meta["data_offsets"]
        raw = np.fromfile(self.path, dtype=np.uint8, count=b - a, offset=self.offset + a)
        return _float32(raw.view(dtype).reshape(meta["shape"]))


def _float32(value: np.ndarray) -> np.ndarray:
    """fp32 values of a stored tensor; bfloat16 (its uint16 bits: numpy has no bfloat16)
    widened exactly."""
    if value.dtype == np.uint16:
        return (value.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(value, dtype=np.float32)


class _Tensors:
    """The tensors of one safetensors group (an index + shards, or one file) by name."""

    def __init__(self, path: str, stem: str):
        index = os.path.join(path, f"{stem}.safetensors.index.json")
        single = os.path.join(path, f"{stem}.safetensors")
        self.files: dict = {}
        self.where: dict = {}
        self.meta: dict = {}
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as fh:
                    data = json.load(fh)
                weight_map = data["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
            self.meta = {k: v for k, v in data.items() if k != "weight_map"}
            for name, file in weight_map.items():
                self.where[name] = self._file(os.path.join(path, file))
        elif os.path.isfile(single):
            f = self._file(single)
            for name in f.header:
                self.where[name] = f

    def _file(self, path: str) -> _Safetensors:
        if path not in self.files:
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: missing (listed in the checkpoint's index)")
            self.files[path] = _Safetensors(path)
        return self.files[path]

    def __contains__(self, name):
        return name in self.where

    def shape(self, name: str) -> list[int]:
        return self.where[name].shape(name)

    def read(self, name: str) -> np.ndarray:
        return self.where[name].read(name)


class _Unified:
    """A unified checkpoint: tensors by structured name."""

    def __init__(self, path: str):
        self.model = _Tensors(path, "model")
        self.optim = _Tensors(path, "optimizer")
        self.master = _Tensors(path, "master_weights")
        if not self.model.where and not self.master.where:
            raise CheckpointError(f"{path}: no model weights (model.safetensors or master_weights.safetensors)")

    def shapes(self) -> dict:
        source = self.model if self.model.where else self.master
        return {n: source.shape(n) for n in source.where}

    def weights(self, name: str) -> np.ndarray:
        """fp32 values: the master weights when stored (exact), else the model's."""
        return self.master.read(name) if name in self.master else self.model.read(name)

    def has(self, name: str, kind: str) -> bool:
        return f"{name}/{kind}_0" in self.optim

    def state_shape(self, name: str, kind: str) -> list[int]:
        return self.optim.shape(f"{name}/{kind}_0")

    def state(self, name: str, kind: str):
        key = f"{name}/{kind}_0"
        return self.optim.read(key) if key in self.optim else None


class _Plain:
    """model_state.pdparams + optimizer.pdopt: the optimizer's keys are Paddle's automatic
    parameter names, which the weights file maps to structured names."""

    def __init__(self, path: str):
        self.weights_file = os.path.join(path, "model_state.pdparams")
        self.params = _load_pickle(self.weights_file)
        self.auto = self.params.pop(_STRUCTURED, None)
        optim_file = os.path.join(path, "optimizer.pdopt")
        self.optim = _load_pickle(optim_file)
        self.optim.pop(_STRUCTURED, None)
        self.optim.pop("LR_Scheduler", None)
        self.master = self.optim.pop("master_weights", None) or {}
        if not isinstance(self.auto, dict):
            raise CheckpointError(f"{self.weights_file}: no {_STRUCTURED} table, so the optimizer state "
                                  "(keyed by Paddle's parameter names) cannot be matched to the parameters")
        self.params = {k: v for k, v in self.params.items() if isinstance(v, np.ndarray)}

    def shapes(self) -> dict:
        return {n: list(v.shape) for n, v in self.params.items()}

    def weights(self, name: str) -> np.ndarray:
        auto = self.auto.get(name)
        if auto in self.master:
            return _float32(self.master[auto])
        return _float32(self.params[name])

    def has(self, name: str, kind: str) -> bool:
        return f"{self.auto.get(name)}_{kind}_0" in self.optim

    def state_shape(self, name: str, kind: str) -> list[int]:
        return list(np.shape(self.optim[f"{self.auto.get(name)}_{kind}_0"]))

    def state(self, name: str, kind: str):
        value = self.optim.get(f"{self.auto.get(name)}_{kind}_0")
        return None if value is None else _float32(value)


# ---- mapping ----------------------------------------------------------------------------
def tensor_rules(config, theirs: dict, ours: dict) -> tuple[list, list[str]]:
    """``(rules, problems)``: how PaddleNLP's tensors (``theirs``: name -> shape) hold llmpre's
    parameters (``ours``: name -> global shape). A family PaddleNLP 2.8.1 has uses its tensor
    names and layouts (:func:`llmpre.models.paddlenlp_names.rules`: fused q/k/v and gate/up,
    transposed heads); any other uses llmpre's names behind one prefix (``qwen2.``, ...).
    Every parameter needs its tensors with the shapes the rule gives, and every tensor a
    parameter (buffers PaddleNLP saves and a tied head's copy aside)."""
    from llmpre.models.hf_names import Rule
    from llmpre.models.paddlenlp_format import tensor_shapes
    from llmpre.models.paddlenlp_names import FAMILIES, IGNORABLE, rules

    if config.model_type in FAMILIES:
        ruled = rules(config, fused_qkv=any(n.endswith("self_attn.qkv_proj.weight") for n in theirs),
                      fused_ffn=any(n.endswith("mlp.gate_up_fused_proj.weight") for n in theirs))
    else:
        prefixes = {n.split(".", 1)[0] for n in theirs if "." in n and not n.startswith("lm_head.")}
        prefix = next(iter(prefixes)) + "." if len(prefixes) == 1 else ""
        ruled = [Rule((name if name.startswith("lm_head.") else prefix + name,), (name,), "copy") for name in ours]
    expected, problems = {}, []
    for rule in ruled:
        for name, shape in zip(rule.hf, tensor_shapes(rule, [list(ours[o]) for o in rule.ours])):
            expected[name] = [int(x) for x in shape]
    for name, shape in expected.items():
        if name not in theirs:
            problems.append(f"no tensor {name}")
        elif list(theirs[name]) != shape:
            problems.append(f"{name} has shape {list(theirs[name])}, this run's model needs {shape}")
    covered = {o for rule in ruled for o in rule.ours}
    problems += [f"no tensor holds {name}" for name in ours if name not in covered]
    tied_copy = {"lm_head.weight"} if config.tie_word_embeddings else set()
    problems += [f"unexpected tensor {n}" for n in sorted(theirs)
                 if n not in expected and not IGNORABLE.match(n) and n not in tied_copy]
    return ruled, problems


def _to_ours(rule, stored: list, shapes: list, config) -> list:
    """The llmpre parameters (or their elementwise optimizer state) a rule's PaddleNLP tensors
    hold: the same values, transposed (``linear``) or split by output columns."""
    from llmpre.models.paddlenlp_names import fused_columns

    if rule.kind == "copy":
        return stored
    if rule.kind == "linear":
        return [stored[0].T]
    widths = [s[-1] for s in shapes]
    offsets = np.cumsum([0] + widths).tolist()
    return [np.take(stored[0], fused_columns(rule.kind, j, np.arange(w), offsets, config), axis=-1)
            for j, w in enumerate(widths)]


def _updates(b1pow: np.ndarray, beta1: float) -> int:
    """Adam updates done, from Paddle's ``beta1_pow_acc`` (= beta1 ** (updates + 1))."""
    value = float(np.asarray(b1pow).reshape(-1)[0])
    if not 0.0 < value < 1.0 or not 0.0 < beta1 < 1.0:
        return -1
    return int(round(math.log(value) / math.log(beta1))) - 1


def check_run(found: Found, args, data_parallel_size: int) -> list[str]:
    """Refuse a run whose data stream differs from the PaddleNLP run's (global batch, seed,
    sequence length) or that has nothing left to train; returns the other settings that
    changed (for the caller to report)."""
    ta = found.training_args
    if found.step >= args.max_steps:
        raise unmappable(found, f"it is at global_step {found.step} and this run's max_steps is "
                                f"{args.max_steps}, so there is nothing left to train (raise max_steps)")
    problems = []
    if ta:
        tp, pp, sep = (max(int(ta.get(k) or 1), 1) for k in
                       ("tensor_parallel_degree", "pipeline_parallel_degree", "sep_parallel_degree"))
        world = found.world_size or 1
        data_world = max(world // (tp * pp * sep), 1)
        theirs = int(ta["per_device_train_batch_size"]) * int(ta["gradient_accumulation_steps"]) * data_world
        ours = args.per_device_train_batch_size * args.gradient_accumulation_steps * data_parallel_size
        if theirs != ours:
            problems.append(
                f"its global batch is {theirs} samples (per_device_train_batch_size "
                f"{ta['per_device_train_batch_size']} x gradient_accumulation_steps "
                f"{ta['gradient_accumulation_steps']} x {data_world} data-parallel process(es)) and this "
                f"run's is {ours}, so step {found.step} would continue at another sample than PaddleNLP's")
        if "seed" in ta and int(ta["seed"]) != int(args.seed):
            problems.append(f"it was trained with seed {ta['seed']} and this run has seed {args.seed}, "
                            "which orders the samples differently")
    seq = _checkpoint_config(found.path).get("seq_length")
    if isinstance(seq, int) and seq != args.max_seq_length:
        problems.append(f"it was trained with max_seq_length {seq} and this run has {args.max_seq_length}")
    if problems:
        raise unmappable(found, "; ".join(problems) + " (use the PaddleNLP run's values)")
    changed = []
    for key in _COMPARED:
        if key in ta and hasattr(args, key):
            a, b = ta[key], getattr(args, key)
            if key == "decay_steps" and a is None:
                a = ta.get("max_steps")
            if key == "decay_steps" and b is None:
                b = args.max_steps
            if a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and
                               math.isclose(float(a), float(b), rel_tol=1e-12)):
                changed.append(f"{key} {a!r} -> {b!r}")
    return changed


def _checkpoint_config(path: str) -> dict:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def convert(found: Found, config, params: dict, trainable: set, dest: str, state: dict, beta1: float) -> dict:
    """Write the PaddleNLP checkpoint ``found`` into ``dest`` as an llmpre checkpoint of one
    position (``model-tp0-pp0.safetensors``, ``optim-tp0-pp0-sh0.safetensors``,
    ``trainer_state.json``), one tensor at a time; returns the state written.

    ``config`` is this run's model config and ``params`` maps its parameter names to their
    global shapes;
    ``trainable`` names those the optimizer updates; ``state`` is the trainer's state to
    record (its step and optimizer entries are set here); ``beta1`` is the Adam beta1
    PaddleNLP used. Raises :func:`unmappable`'s error when anything does not map."""
    from llmpre.models.hf_stream import write_safetensors
    from llmpre.parallel.ckpt import PARAMS_KEY

    if found.reason:
        raise unmappable(found)
    try:
        source = _Unified(found.path) if found.kind == "unified" else _Plain(found.path)
    except CheckpointError as e:
        raise unmappable(found, str(e)) from None
    rules, problems = tensor_rules(config, source.shapes(), params)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise unmappable(found, f"its tensors do not match this run's model ({shown})")
    trained = [r for r in rules if any(o in trainable for o in r.ours)]
    missing = [n for r in trained for n in r.hf if not (source.has(n, "moment1") and source.has(n, "moment2"))]
    if missing:
        raise unmappable(found, f"no Adam moments for {', '.join(missing[:4])}"
                                f"{' and more' if len(missing) > 4 else ''}")
    shapes = source.shapes()
    split = [f"{n} ({kind} {source.state_shape(n, kind)}, weight {shapes[n]})" for r in trained for n in r.hf
             for kind in ("moment1", "moment2") if source.state_shape(n, kind) != list(shapes[n])]
    if split:
        raise unmappable(found, f"its optimizer state is not whole for {', '.join(split[:3])}"
                                f"{' and more' if len(split) > 3 else ''} (split by a sharded optimizer)")
    counts = {_updates(source.state(n, "beta1_pow_acc"), beta1)
              for r in trained for n in r.hf if source.has(n, "beta1_pow_acc")}
    if len(counts) != 1 or min(counts) < 0 or min(counts) > found.step:
        raise unmappable(found, f"its optimizer's beta1_pow_acc values give no single update count "
                                f"(found {sorted(counts)} with beta1 {beta1})")
    updates = counts.pop()

    def numel(name):
        return int(np.prod(params[name], dtype=np.int64))

    def converted(rule_list, read, kinds):
        """(key, fp32 array) of every part of every rule, one rule's tensors at a time."""
        for rule in rule_list:
            for kind, theirs in kinds:
                values = _to_ours(rule, [read(n, theirs) for n in rule.hf], [params[o] for o in rule.ours], config)
                for o, v in zip(rule.ours, values):
                    if kind is None:
                        yield o, np.ascontiguousarray(v, dtype=np.float32)
                    elif o in trainable:
                        yield f"{o}|0|{numel(o)}|{kind}", np.ascontiguousarray(v, dtype=np.float32).reshape(-1)

    model_entries = [(o, [int(x) for x in params[o]], 4 * numel(o)) for r in rules for o in r.ours]
    meta = {PARAMS_KEY: json.dumps({n: {"shape": [int(x) for x in shape], "split_axis": None}
                                    for n, shape in params.items()})}
    write_safetensors(os.path.join(dest, "model-tp0-pp0.safetensors"), model_entries, "float32",
                      converted(rules, lambda n, _: source.weights(n), [(None, None)]), meta)
    kinds = [("exp_avg", "moment1"), ("exp_avg_sq", "moment2")]
    optim_entries = [(f"{o}|0|{numel(o)}|{kind}", [numel(o)], 4 * numel(o))
                     for r in trained for kind, _ in kinds for o in r.ours if o in trainable]
    write_safetensors(os.path.join(dest, "optim-tp0-pp0-sh0.safetensors"), optim_entries, "float32",
                      converted(trained, source.state, kinds), {})
    scaler = _scaler(found.path)
    state = {**state, "global_step": found.step, "skipped_steps": 0,
             "loss_scaler": {**state.get("loss_scaler", {}), **scaler},
             "optimizer": {"step": updates},
             "layout": {"format": "llmpre-sharded-1",
                        "dims": {"dp": 1, "sharding": 1, "stage": 1, "tp": 1, "pp": 1, "vpp": 1}},
             "imported_from": found.path}
    tmp = os.path.join(dest, "trainer_state.json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1)
    os.replace(tmp, os.path.join(dest, "trainer_state.json"))
    return state


def _scaler(path: str) -> dict:
    """The fp16 loss scale of PaddleNLP's GradScaler state (``scaler.pdparams``), if any."""
    file = os.path.join(path, "scaler.pdparams")
    if not os.path.isfile(file):
        return {}
    try:
        value = _load_pickle(file).get("scale")
        return {"scale": float(np.asarray(value).reshape(-1)[0])}
    except (CheckpointError, TypeError, ValueError, IndexError):
        return {}


def _model_params(config) -> tuple[dict, set]:
    """Global shapes of ``config``'s parameters in model order, and the trainable ones (the
    model is built deferred: nothing is allocated)."""
    from llmpre.models.hf import build

    model = build(config)
    params = {n: [int(s) for s in p.shape] for n, p in model.named_parameters()}
    return params, {n for n, p in model.named_parameters() if not p.stop_gradient}


_CONFIG_IGNORED = ("bos_token_id", "eos_token_id", "initializer_range", "max_position_embeddings")


def _config_differences(found: Found, config) -> list[str] | None:
    """The model settings in which the checkpoint's config.json differs from this run's model;
    None when config.json cannot be read as a model config."""
    import dataclasses

    from llmpre.models.hf import load_hf_config

    try:
        theirs = load_hf_config(found.path)
    except Exception:   # llmpre cannot read it: the tensor shapes are still checked one by one
        return None
    return [f"{f.name} {getattr(theirs, f.name)!r} (this run: {getattr(config, f.name)!r})"
            for f in dataclasses.fields(config) if f.name not in _CONFIG_IGNORED
            and getattr(theirs, f.name) != getattr(config, f.name)]


def prepare(found: Found, args, config, data_parallel_size: int, state: dict, log) -> str:
    """Check that ``found`` can be resumed by this run and convert it into a temporary llmpre
    checkpoint in ``args.output_dir`` (named like a save in progress, so a crashed start leaves
    nothing a later start keeps); returns its path. The caller removes it once every rank has
    loaded it. ``log(message)`` reports changed settings."""
    import shutil

    from llmpre.train.checkpoint import temp_dir

    if found.reason:
        raise unmappable(found)
    diffs = _config_differences(found, config)
    if diffs:
        raise unmappable(found, "its config.json describes another model: " + "; ".join(diffs[:6]))
    if diffs is None:
        log(f"{found.path}/config.json is not a model config llmpre reads; its tensors are checked one by one")
    changed = check_run(found, args, data_parallel_size)
    if changed:
        log(f"continuing the PaddleNLP run with changed settings: {'; '.join(changed)}")
    beta1 = float(found.training_args.get("adam_beta1", args.adam_beta1))
    params, trainable = _model_params(config)
    dest = temp_dir(args.output_dir, found.step)
    try:
        convert(found, config, params, trainable, dest, state, beta1)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest
