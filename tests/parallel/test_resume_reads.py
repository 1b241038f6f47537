"""Resuming from an llmpre checkpoint reads only what the rank keeps: its tp slices and the
optimizer elements it owns (counted at safetensors), on the layout the checkpoint was saved
on and on others, with every value equal to the single-process one, and no file left open.

Checkpoints of several ranks are written and loaded in one process (``detached_env``);
the multi-process runs of the same paths are tests/parallel/test_checkpoint_layouts.py."""

from __future__ import annotations

import functools
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from read_counting import ReadCounter  # noqa: E402
from safetensors import safe_open as real_safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from llmpre.models import build_model, get_config  # noqa: E402
from llmpre.models.hf_config import to_hf_dict  # noqa: E402
from llmpre.parallel import ckpt as pckpt  # noqa: E402
from llmpre.parallel.dims import ParallelDims  # noqa: E402
from llmpre.parallel.env import detached_env  # noqa: E402
from llmpre.parallel.optimizer import ShardedAdamW  # noqa: E402
from llmpre.parallel.tensor_parallel import TP_SPLIT  # noqa: E402
from llmpre.train import checkpoint as ckpt  # noqa: E402
from llmpre.train.engine import Engine  # noqa: E402
from llmpre.train.precision import Precision  # noqa: E402

CFG = get_config("llama-tiny").replace(num_hidden_layers=4, vocab_size=512, hidden_size=64,
                                       intermediate_size=192, num_attention_heads=8, num_key_value_heads=4)
ARGS = types.SimpleNamespace(adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.1)
SAVED, LOADED = 1, 2         # seeds: the loading engine starts from other values
STEP = 3


def moments(w: np.ndarray):
    """The optimizer state every test checkpoint holds: a function of each element's value,
    so any layout's slice of it is known from the single-process values."""
    return w * 0.5 + 0.25, w * w + 1.0


def engine(dims: ParallelDims, rank: int, seed: int, config=CFG) -> Engine:
    return Engine(paddle, build_model(config, seed=seed, lazy=True), Precision(), ARGS,
                  detached_env(dims, rank), None)


@functools.lru_cache(maxsize=None)
def values(config=CFG) -> dict:
    """Every parameter's single-process value (seed SAVED)."""
    return {n: p.numpy() for n, p in build_model(config, seed=SAVED).named_parameters()}


@pytest.fixture
def single():
    return values(CFG)


def save(path, dims: ParallelDims, config=CFG) -> str:
    """The checkpoint (with manifest) every rank of ``dims`` writes at step STEP."""
    writers = {}
    for rank in range(dims.world_size):
        e = engine(dims, rank, SAVED, config)
        opt = e.optimizer
        m, v = moments(opt.master.numpy())
        opt.exp_avg.set_value(m)
        opt.exp_avg_sq.set_value(v)
        opt.step_count = STEP
        state = {"global_step": STEP, "model_config": to_hf_dict(config)}
        for name, write in e.checkpoint_files(state).items():
            writers.setdefault(name, write)
    return ckpt.save_checkpoint(str(path), STEP, writers)


@pytest.fixture
def counting(monkeypatch):
    counter = ReadCounter()
    monkeypatch.setattr(pckpt, "safe_open", counter)
    return counter


@pytest.fixture
def no_publish(monkeypatch):
    """Sharded ranks write their parameters with an all-gather, which a detached rank cannot
    do: the tests read the optimizer state (from which the parameters are written)."""
    monkeypatch.setattr(ShardedAdamW, "publish", lambda self: None)


def local(p, full: np.ndarray, tp_index: int) -> np.ndarray:
    """This rank's tp slice of ``full`` (p's TP_SPLIT), or the whole."""
    split = getattr(p, TP_SPLIT, None)
    if split is None:
        return full
    size = int(p.shape[split[0]])
    return np.take(full, range(tp_index * size, (tp_index + 1) * size), axis=split[0])


def check_state(e: Engine, single: dict) -> int:
    """The rank's optimizer state equals the single-process values of its elements;
    returns how many elements it owns."""
    opt, owned = e.optimizer, 0
    got = [x.numpy() for x in (opt.master, opt.exp_avg, opt.exp_avg_sq)]
    for pc in opt.pieces:
        name, p = opt.params[pc.param]
        w = local(p, single[name], e.env.tp.index).reshape(-1)[pc.param_start:pc.param_end]
        span = slice(pc.local_start, pc.local_start + pc.param_end - pc.param_start)
        for g, want in zip(got, (w, *moments(w))):
            assert np.array_equal(g[span], want), name
        owned += pc.param_end - pc.param_start
    assert opt.step_count == STEP
    return owned


def tensor_bytes(path, prefix: str) -> int:
    """Bytes of the tensors of a checkpoint's files named ``prefix``*."""
    total = 0
    for fname in os.listdir(path):
        if fname.startswith(prefix):
            with real_safe_open(os.path.join(path, fname), framework="np") as f:
                total += sum(int(np.prod(f.get_slice(k).get_shape())) * 4 for k in f.keys())
    return total


def test_same_layout_tp2_each_rank_reads_its_own_slices(tmp_path, single, counting):
    dims = ParallelDims(tp=2)
    path = save(tmp_path, dims)
    model_total, optim_total = tensor_bytes(path, "model-"), tensor_bytes(path, "optim-")
    for rank in range(2):
        e = engine(dims, rank, LOADED)
        counting.reset()
        assert e.load(path)["global_step"] == STEP
        assert counting.open == 0, "a checkpoint file was left open"
        params = dict(e.model.named_parameters())
        for name, p in params.items():      # one shard: the parameters are the master weights
            assert np.array_equal(p.numpy(), local(p, single[name], rank)), name
        owned = check_state(e, single)
        kept = sum(int(np.prod(p.shape)) for p in params.values())
        assert owned == kept
        # its own slices and the replicated tensors, each once: the master weights (fp32
        # parameters store none) from the model files, the two moments from the optimizer's
        assert counting.read("model-") == 4 * kept
        assert counting.read("optim-") == 2 * 4 * kept
        # each file holds one slice and the replicated tensors: a rank reads half of them
        assert 2 * counting.read("model-") == model_total
        assert 2 * counting.read("optim-") == optim_total


def test_same_layout_sharding2_each_rank_reads_half_the_optimizer_state(tmp_path, single, counting,
                                                                      no_publish):
    dims = ParallelDims(sharding=2, sharding_stage=1)
    path = save(tmp_path, dims)
    model_total, optim_total = tensor_bytes(path, "model-"), tensor_bytes(path, "optim-")
    for rank in range(2):
        e = engine(dims, rank, LOADED)
        counting.reset()
        e.load(path)
        assert counting.open == 0
        owned = check_state(e, single)
        assert counting.read("optim-") == 2 * 4 * owned      # exactly its moments
        # its master weights from the model file: the rows holding them (at most one
        # partial row more at each end of each of its pieces)
        widest = max(int(np.prod(p.shape[1:])) for _, p in e.optimizer.params)
        assert 4 * owned <= counting.read("model-") <= 4 * (owned + 2 * widest * len(e.optimizer.pieces))
        assert 0.45 * optim_total < counting.read("optim-") < 0.55 * optim_total
        assert counting.read("model-") < 0.6 * model_total


CROSS = {
    "tp2 -> tp1": (ParallelDims(tp=2), ParallelDims(), CFG),
    "pp2 -> tp2": (ParallelDims(pp=2), ParallelDims(tp=2), CFG),
    "tp1 -> tp2 x sharding2": (ParallelDims(), ParallelDims(tp=2, sharding=2, sharding_stage=1), CFG),
    "tp2 x sharding2 -> pp2 x tp2": (ParallelDims(tp=2, sharding=2, sharding_stage=1), ParallelDims(tp=2, pp=2),
                                     CFG),
    "sharding2 stage1 -> tp2 x sharding2 stage3": (ParallelDims(sharding=2, sharding_stage=1),
                                                    ParallelDims(tp=2, sharding=2, sharding_stage=3), CFG),
    "tp2 -> tp4, 2 kv heads (k/v split, then replicated)": (ParallelDims(tp=2), ParallelDims(tp=4),
                                                            CFG.replace(num_key_value_heads=2)),
    "tied embedding, pp2 -> tp2 x pp2": (ParallelDims(pp=2), ParallelDims(tp=2, pp=2),
                                         CFG.replace(tie_word_embeddings=True)),
}


@pytest.mark.parametrize("name", list(CROSS))
def test_another_layout_gets_the_same_values(tmp_path, counting, no_publish, name):
    saved, loaded, config = CROSS[name]
    single = values(config)
    path = save(tmp_path, saved, config)
    for rank in range(loaded.world_size):
        e = engine(loaded, rank, LOADED, config)
        counting.reset()
        e.load(path)
        assert counting.open == 0
        owned = check_state(e, single)
        opt = e.optimizer
        if opt.aliased:
            for n, p in e.model.named_parameters():
                assert np.array_equal(p.numpy(), local(p, single[n], e.env.tp.index)), n
        if e.stage3:    # the decoder layers stay released: the load gathered none of them
            layers = [p for n, p in e.model.named_parameters() if n.startswith("layers.")]
            assert layers and not any(p._is_initialized() for p in layers)
        # the moments of its own elements, plus, where the saved slices are wider than
        # its own (a higher tp), the columns beside them: at most tp-fold
        grow = max(loaded.tp // saved.tp, 1)
        widest = max(int(np.prod(p.shape[1:])) for _, p in opt.params) * grow
        assert counting.read("optim-") <= 2 * 4 * grow * (owned + 2 * widest * len(opt.pieces)), name


def test_a_checkpoint_of_the_former_single_process_format(tmp_path, single, counting):
    """``model.safetensors`` + ``optimizer.safetensors`` of whole tensors: a tp rank reads
    its slice of each, not the whole."""
    model = {n: w for n, w in single.items()}
    optim = {}
    for n, w in single.items():
        optim[f"{n}.exp_avg"], optim[f"{n}.exp_avg_sq"] = moments(w)
    save_file(model, str(tmp_path / "model.safetensors"))
    save_file(optim, str(tmp_path / "optimizer.safetensors"))
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": STEP, "optimizer": {"step": STEP}}))
    e = engine(ParallelDims(tp=2), 1, LOADED)
    e.load(str(tmp_path))
    assert counting.open == 0
    kept = check_state(e, single)
    assert counting.read("model.") == 4 * kept
    assert counting.read("optimizer.") == 2 * 4 * kept


def test_damaged_state_is_refused_and_the_files_are_closed(tmp_path, counting, no_publish):
    path = save(tmp_path, ParallelDims(sharding=2, sharding_stage=1))
    # rank 1's file lost all its ranges but one element
    save_file({"norm.weight|0|1|exp_avg": np.zeros(1, np.float32)}, os.path.join(path, "optim-tp0-pp0-sh1.safetensors"))
    e = engine(ParallelDims(sharding=2, sharding_stage=1), 1, LOADED)
    with pytest.raises(ValueError, match="optimizer state of .* is incomplete"):
        e.load(path)
    assert counting.open == 0
    other = CFG.replace(intermediate_size=128)
    with pytest.raises(ckpt.CheckpointError, match=r"has shape \(64, 96\) here, the model needs \(64, 64\)"):
        engine(ParallelDims(tp=2), 0, LOADED, other).load(path)
    assert counting.open == 0


def test_final_weights_and_export_read_one_whole_parameter_and_close(tmp_path, single, counting):
    from llmpre.cli.export_cmd import llmpre_checkpoint_weights

    path = save(tmp_path, ParallelDims(tp=2, pp=2))
    shapes, tensor, dtype = engine(ParallelDims(tp=2, pp=2), 0, LOADED).final_weights(path)
    assert dtype == "float32" and shapes == {n: list(w.shape) for n, w in single.items()}
    _, shapes2, tensor2 = llmpre_checkpoint_weights(Path(path))
    assert shapes2 == shapes
    for read in (tensor, tensor2):
        for n, w in single.items():
            assert np.array_equal(read(n), w), n
            assert counting.open == 0, "a read left its files open"


def test_region_reads_only_the_overlap(tmp_path, single, counting):
    """A region across two tp files reads from each just its part."""
    path = save(tmp_path, ParallelDims(tp=2))
    name = "layers.0.mlp.down_proj.weight"      # row-parallel: [192, 64] split on axis 0
    with pckpt.GlobalTensors(path) as tensors:
        assert tensors.meta(name) == {"shape": [192, 64], "split_axis": 0, "stage": 0}
        got = tensors.region(name, [(90, 100), (8, 24)])
    assert np.array_equal(got, single[name][90:100, 8:24])
    assert counting.by_file() == {"model-tp0-pp0.safetensors": 6 * 16 * 4, "model-tp1-pp0.safetensors": 4 * 16 * 4}
    assert counting.open == 0
