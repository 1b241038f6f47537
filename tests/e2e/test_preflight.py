"""Before a parallel launch starts any worker, `llmpre train` checks the layout against
the model and the processes' memory against this machine (issue: the design card's own
`--model qwen-7b --tp 2 --sharding 4` started 8 workers that the OOM killer took)."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from llmpre.cli import main, preflight
from llmpre.errors import ConfigError
from llmpre.train.args import parse_arguments

GIB = 2 ** 30


def args_of(out, **kw):
    return parse_arguments(None, {"output_dir": str(out), **{k: str(v) for k, v in kw.items()}})


def test_the_design_cards_example_is_refused_with_both_figures(tmp_path):
    args = args_of(tmp_path / "run", model="qwen-7b", tensor_parallel_degree=2, sharding_parallel_degree=4,
                   sharding="stage1")
    dims, config = preflight.check_layout(args, 8)
    assert (dims.tp, dims.sharding, dims.dp) == (2, 4, 1)
    with pytest.raises(ConfigError) as e:
        preflight.check_host_memory(args, dims, config, 8, available=24 * GIB)
    msg = str(e.value)
    build, planned = preflight.process_bytes(args, dims, config)
    assert build == 0 and 8 * planned > 24 * GIB   # each process builds only its shard, which is too much
    assert f"8 processes x {planned / GIB:.1f} GiB" in msg and "24.0 GiB are available" in msg, msg
    assert "whole fp32 model" not in msg
    assert "fewer processes" not in msg and "more memory" in msg and "--force" in msg and "\n" not in msg


def test_a_launch_that_fits_passes(tmp_path):
    args = args_of(tmp_path / "run", model="llama-tiny", tensor_parallel_degree=2)
    dims, config = preflight.check_layout(args, 2)
    preflight.check_host_memory(args, dims, config, 2, available=8 * GIB)   # no error
    build, planned = preflight.process_bytes(args, dims, config)
    assert build == 0 and planned > 0


def test_continue_training_costs_what_a_run_from_scratch_costs(tmp_path):
    """Each process reads only its own slices of an HF checkpoint (llmpre.models.hf_load):
    no whole-model load, so the same layout needs the planner's peak and nothing more."""
    from llmpre.models import build_model, save_pretrained

    src = tmp_path / "hf"
    save_pretrained(build_model("llama-tiny", seed=0), src)
    args = args_of(tmp_path / "run", model_name_or_path=str(src), continue_training="true",
                   tensor_parallel_degree=2)
    dims, config = preflight.check_layout(args, 2)
    build, planned = preflight.process_bytes(args, dims, config)
    scratch = args_of(tmp_path / "scratch", model_name_or_path=str(src), tensor_parallel_degree=2)
    assert build == 0 and planned == preflight.process_bytes(scratch, *preflight.check_layout(scratch, 2))[1] > 0
    preflight.check_host_memory(args, dims, config, 2, available=int(2.2 * planned))   # no error
    with pytest.raises(ConfigError) as e:
        preflight.check_host_memory(args, dims, config, 2, available=int(1.5 * planned))
    assert f"2 processes x {planned / GIB:.1f} GiB" in str(e.value) and "whole" not in str(e.value)


def run_cli(*argv):
    return CliRunner().invoke(main, ["train", *argv], catch_exceptions=False)


def test_impossible_layout_is_one_error_from_the_parent(tmp_path):
    out = tmp_path / "run"
    r = run_cli("--model", "llama-tiny", "--tp", "3", "--output_dir", str(out), "--max_steps", "1")
    assert r.exit_code == 2
    assert "attention heads do not divide over tp 3" in r.output and "Traceback" not in r.output
    assert not (out / "launch_logs").exists()             # no worker was started


def test_memory_refusal_starts_no_worker_and_force_skips_the_check(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(preflight, "available_host_memory", lambda: 1 << 20)   # a 1 MiB machine
    r = run_cli("--model", "llama-tiny", "--tp", "2", "--output_dir", str(out), "--max_steps", "1")
    assert r.exit_code == 2 and "GiB of host memory" in r.output and "--force" in r.output
    assert "fewer processes" not in r.output
    assert not (out / "launch_logs").exists()
    launched = []
    from llmpre.cli import train_cmd

    monkeypatch.setattr(train_cmd, "_launch", lambda launch, args, tokens, nproc=None, source="": launched.append(tokens) or 0)
    r = run_cli("--model", "llama-tiny", "--tp", "2", "--output_dir", str(out), "--max_steps", "1", "--force")
    assert r.exit_code == 0 and launched and "--force" not in launched[0]


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="MemAvailable comes from /proc/meminfo (Linux)")
def test_available_memory_is_read():
    assert preflight.available_host_memory() > 0


def test_the_refusal_says_how_many_processes_fit(tmp_path):
    args = args_of(tmp_path / "run", model="llama-tiny", tensor_parallel_degree=2)
    dims, config = preflight.check_layout(args, 2)
    per_process = max(preflight.process_bytes(args, dims, config))
    with pytest.raises(ConfigError, match=r"fewer processes on this machine \(at most 1 fit"):
        preflight.check_host_memory(args, dims, config, 2, available=int(1.5 * per_process))


def test_gpu_machine_starts_one_process_per_visible_gpu(tmp_path, monkeypatch):
    """As `paddle.distributed.launch --gpus ...` does for PaddleNLP: PaddleNLP's tp2 x
    sharding file on 8 GPUs trains with 8 processes, sharding taking what tp leaves."""
    from llmpre.cli import train_cmd

    launched = []
    monkeypatch.setattr(train_cmd, "visible_gpus", lambda: 8)
    monkeypatch.setattr(train_cmd, "_launch",
                        lambda launch, args, tokens, nproc=None, source="": launched.append((nproc, source)) or 0)
    r = run_cli("--model", "llama-tiny", "--tp", "2", "--sharding", "stage1", "--output_dir",
                str(tmp_path / "run"), "--max_steps", "1")
    assert r.exit_code == 0, r.output
    assert launched == [(8, "one process per visible GPU (8)")]
    assert "starting 8 processes on this node, world size 8" in r.output
    assert "dp 1 x sharding 4 (stage 1) x tp 2 x pp 1" in r.output
    launched.clear()
    r = run_cli("--model", "llama-tiny", "--tp", "2", "--output_dir", str(tmp_path / "run2"), "--max_steps", "1")
    assert launched == [(8, "one process per visible GPU (8)")] and "dp 4 x sharding 1" in r.output


def test_visible_gpus_reads_cuda_visible_devices(monkeypatch):
    from llmpre.cli.train_cmd import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")
    assert visible_gpus() == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == 0


def test_gpu_plan_that_does_not_fit_is_refused_with_the_planners_fixes(tmp_path, monkeypatch):
    from llmpre.cli import train_cmd

    args = args_of(tmp_path / "run", model="llama2-7b", max_seq_length=4096, per_device_train_batch_size=2,
                   tensor_parallel_degree=2, bf16="true")
    dims, config = preflight.check_layout(args, 2)
    with pytest.raises(ConfigError) as e:
        preflight.check_device_memory(args, dims, config, device_bytes=24 * GIB)
    msg = str(e.value)
    assert "GiB per GPU but the GPUs have 24.0 GiB" in msg and "--force" in msg, msg
    assert "Cheapest changes that fit: --" in msg or "None of the planner's changes makes it fit" in msg
    preflight.check_device_memory(args, dims, config, device_bytes=10_000 * GIB)   # fits: no error
    # the CLI on a (pretend) 2-GPU machine with 24 GiB each stops before any worker starts
    monkeypatch.setattr(train_cmd, "visible_gpus", lambda: 2)
    monkeypatch.setattr(preflight, "gpu_memory_bytes", lambda: 24 * GIB)
    launched = []
    monkeypatch.setattr(train_cmd, "_launch", lambda *a, **k: launched.append(a) or 0)
    r = run_cli("--model", "llama2-7b", "--max_seq_length", "4096", "--per_device_train_batch_size", "2",
                "--tp", "2", "--bf16", "true", "--output_dir", str(tmp_path / "run"), "--max_steps", "1")
    assert r.exit_code == 2 and "GiB per GPU" in r.output and not launched
