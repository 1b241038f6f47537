"""Expert parallelism (expert_parallel_degree) trains exactly like one process: five
dropless steps on gloo give the single-process losses (relative 1e-5) and parameters
(layout_runner.assert_same_weights) for tiny Mixtral, Qwen2-MoE (shared expert, a dense
first layer) and DeepSeek-V3 (MLA, sigmoid routing with groups, one multi-token-prediction
depth; the fixtures' configs, Mixtral's and Qwen2-MoE's auxiliary losses off, which are not
additive over data ranks in any layout; DeepSeek-V3's sequence-wise one at 0.001, a mean over
sequences, which is, and its correction bias at 10x the default rate, as
tests/models/test_dsv3_recipe.py trains it),
each expert held by one rank of its ep group, alone and with sharding (stages 2 and 3),
tensor (+ sequence) and pipeline parallelism (these where the model family declares them). Checkpoints move between ep layouts.
Bad layouts fail before any worker starts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layout_runner import (assert_same_losses, assert_same_weights, copy_checkpoint, losses, max_loss_deviation, record,
                           shared_run, train, weights)
from llmpre.data.default import default_tokenizer_path
from llmpre.errors import ConfigError
from llmpre.parallel.dims import ParallelDims

HF = Path(__file__).resolve().parent.parent / "fixtures" / "hf"
AUX_KEYS = ("router_aux_loss_coef", "aux_loss_alpha")
FLAGS = ["--num_hidden_layers", "2", "--tokenizer_name_or_path", default_tokenizer_path()]
# DeepSeek-V3's correction bias moves at 10x the default rate (0.001) per step, so by the later
# steps it changes which experts tokens go to: every layout must apply the same update (the MTP
# block's router too; the reference checks that it moved). This is where ep2 with MTP at that
# rate is checked (test_dsv3_recipe.py checks recompute with it).
MODEL_FLAGS = {"deepseek_v3": ["--moe_bias_update_rate", "0.01"]}

SAVE_2 = ["--save_steps", "2", "--save_total_limit", "3"]
LAYOUTS = [
    # name, model, processes, data ranks, flags
    # test_resume_across_expert_layouts starts from this run's checkpoint-2 (kept: 2, 4 and the final 5)
    ("mixtral-ep2", "mixtral", 2, 2, ["--ep", "2", *SAVE_2]),
    ("qwen2moe-ep2", "qwen2_moe", 2, 2, ["--ep", "2"]),
    ("deepseekv3-ep2", "deepseek_v3", 2, 2, ["--ep", "2"]),
    # ep groups are the sharding pairs; each expert's state is sharded over its dp pair
    ("mixtral-ep2xsharding2", "mixtral", 4, 4, ["--ep", "2", "--sharding", "stage2",
                                                "--sharding_parallel_degree", "2"]),
    # stage 3: a decoder layer's unit gathers and releases its dense and its expert bucket
    ("mixtral-ep2xsharding2-stage3", "mixtral", 4, 4, ["--ep", "2", "--sharding", "stage3",
                                                       "--sharding_parallel_degree", "2"]),
    # the local experts split over tp (parallel.expert_tp); rows exchanged per tp index
    ("mixtral-ep2xtp2", "mixtral", 4, 2, ["--ep", "2", "--tp", "2"]),
    ("qwen2moe-ep2xtp2sp", "qwen2_moe", 4, 2, ["--ep", "2", "--tp", "2", "--sp", "true"]),
    ("deepseekv3-ep2xtp2", "deepseek_v3", 4, 2, ["--ep", "2", "--tp", "2"]),   # MLA, the MTP depth's experts too
    ("mixtral-ep2xpp2", "mixtral", 4, 2, ["--ep", "2", "--pp", "2"]),
]
def _model_dir(root: Path, name: str) -> str:
    path = root / name
    if not path.exists():
        config = json.loads((HF / name / "config.json").read_text())
        config.update({k: 0.0 for k in AUX_KEYS if k in config})
        if name == "deepseek_v3":       # sequence-wise: a mean over sequences, additive over data ranks
            config["aux_loss_alpha"] = 0.001
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))
    return str(path)


def _flags(root, model, flags) -> list:
    return ["--model", _model_dir(root, model), *FLAGS, *MODEL_FLAGS.get(model, []), *flags]


def _train(out, nproc, model, flags, root, data_ranks, **kw):
    return train(out, nproc, *_flags(root, model, flags), data_ranks=data_ranks, **kw)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    done = {}

    def get(model):
        if model not in done:
            out = tmp_path_factory.mktemp(f"single-{model}")
            _train(out, 1, model, [], root, 1)
            done[model] = (losses(out), weights(out))
            if model == "deepseek_v3":    # the fixture's MTP depth (layer 2, DeepSeek's name) is trained
                assert "model.layers.2.eh_proj.weight" in done[model][1], "the MTP depth was not trained and saved"
                assert np.abs(done[model][1]["model.layers.2.mlp.gate.e_score_correction_bias"]).max() > 0, \
                    "the MTP router's correction bias did not move"
        return done[model]
    get.root = root
    return get


@pytest.mark.parametrize("name,model,nproc,data_ranks,flags", LAYOUTS, ids=[l[0] for l in LAYOUTS])
def test_expert_parallel_matches_one_process(tmp_path_factory, references, name, model, nproc, data_ranks, flags):
    ref_losses, ref_weights = references(model)
    run = shared_run(tmp_path_factory, nproc, *_flags(references.root, model, flags), data_ranks=data_ranks)
    got = losses(run)
    assert_same_losses(got, ref_losses)
    assert_same_weights(weights(run), ref_weights)
    # each member of the first ep group wrote its own experts; the optimizer state of every expert
    ckpt = run / "checkpoint-5"
    assert len(list(ckpt.glob("model-tp*-pp*-ep1.safetensors"))) == nproc // data_ranks
    assert len(list(ckpt.glob("optim-tp*-pp*-ex*.safetensors"))) == nproc
    record(name, run, nproc, loss_deviation=max_loss_deviation(got, ref_losses))


def test_resume_across_expert_layouts(tmp_path, tmp_path_factory, references):
    """ep2 for two steps, every expert on each rank (ep1) for two more, ep2 again for the last:
    two data ranks throughout (a resumed run keeps its per-device batch). Each resume reads the
    other layout's checkpoint; together they give the uninterrupted single-process run. The
    first two steps are mixtral-ep2's (layout_runner.shared_run), saved at step 2."""
    ref_losses, ref_weights = references("mixtral")
    first = shared_run(tmp_path_factory, 2, *_flags(references.root, "mixtral", ["--ep", "2", *SAVE_2]), data_ranks=2)
    copy_checkpoint(first, 2, tmp_path)
    done = 2
    for flags, steps in (([], 4), (["--ep", "2"], 5)):
        run = _train(tmp_path, 2, "mixtral", [*flags, "--save_steps", "2"], references.root, 2, steps=steps)
        assert f"at global_step {done}" in run.output, run.output[-2000:]   # resumed, not restarted
        done = steps
        shutil.rmtree(tmp_path / "launch_logs", ignore_errors=True)
    assert_same_losses(losses(tmp_path), ref_losses)
    assert_same_weights(weights(tmp_path), ref_weights)


def test_ep_groups_are_consecutive_data_ranks():
    dims = ParallelDims(dp=2, sharding=2, ep=2)
    assert dims.group_ranks("ep") == [[0, 1], [2, 3]]
    assert dims.group_ranks("expert_data") == [[0, 2], [1, 3]]
    assert [dims.ep_rank(r) for r in range(4)] == [0, 1, 0, 1]
    # with pp the data ranks of one stage are every other rank (PaddleNLP's order dp, pp, ...)
    dims = ParallelDims(dp=4, pp=2, ep=2)
    assert dims.group_ranks("ep") == [[0, 2], [4, 6], [1, 3], [5, 7]]
    assert dims.group_ranks("expert_data") == [[0, 4], [2, 6], [1, 5], [3, 7]]


def test_paddlenlp_use_expert_parallel_means_ep_equal_to_dp(tmp_path):
    from llmpre.parallel.dims import dims_from_args
    from llmpre.train.args import parse_arguments

    args = parse_arguments(None, {"use_expert_parallel": True, "sharding": "stage1", "sharding_parallel_degree": 2,
                                  "output_dir": str(tmp_path)})
    assert dims_from_args(args, 8).ep == 4                       # dp 4 x sharding 2
    args = parse_arguments(None, {"use_expert_parallel": True, "expert_parallel_degree": 2,
                                  "output_dir": str(tmp_path)})
    assert dims_from_args(args, 8).ep == 2                       # the degree, when given, wins


def test_ep_refused_with_what_it_does_not_combine_with():
    with pytest.raises(ConfigError, match="not yet combined with sep / context parallelism"):
        ParallelDims(dp=2, cp=2, ep=2).validate(4)


@pytest.mark.parametrize("model,nproc,flags,message", [
    ("mixtral", 2, ["--ep", "3"], "expert_parallel_degree 3 draws its ranks from the data ranks (dp 2 x "
     "sharding 1 = 2), and 3 does not divide 2"),
    ("mixtral", 3, ["--ep", "3"], "expert_parallel_degree 3 does not divide the 4 experts"),
    ("llama-tiny", 2, ["--ep", "2"], "expert_parallel_degree 2 is set for a dense model (llama"),
], ids=["data-ranks", "experts", "dense"])
def test_bad_layouts_fail_before_workers_start(tmp_path, model, nproc, flags, message):
    model = model if model == "llama-tiny" else _model_dir(tmp_path, model)
    proc = subprocess.run([sys.executable, "-m", "llmpre.cli", "train", "--model", model, *FLAGS, "--max_steps", "1",
                           "--output_dir", str(tmp_path / "out"), "--nproc-per-node", str(nproc), *flags],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    assert not (tmp_path / "out" / "launch_logs").exists()      # no worker was started
