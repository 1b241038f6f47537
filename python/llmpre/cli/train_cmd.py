"""``llmpre train``: pretrain a model from flags or a PaddleNLP argument file."""

from __future__ import annotations

import os
import subprocess
import sys

import click

from llmpre.errors import ConfigError

LAUNCH_FLAGS = ("nproc_per_node", "master", "nnodes", "rank")


def _help() -> str:
    from llmpre.train.args import argument_help

    return (
        "Pretrain a model on a tokenized corpus.\n\n"
        "\b\n"
        "  llmpre train --model llama-tiny                 bundled corpus, quickstart values\n"
        "  llmpre train pretrain_argument.json             PaddleNLP argument file\n"
        "  llmpre train args.json --max_steps 50 --learning-rate 1e-3\n"
        "  llmpre train --model qwen-7b --tp 2 --sharding 4   8 processes on this machine\n"
        "  llmpre train ... --nproc-per-node 8 --master 10.0.0.1:8090 --nnodes 2 --rank 0\n\n"
        "Every key of PaddleNLP's run_pretrain JSON files is spelled the same here "
        "(as --key value, dashes or underscores); flags override the file. Without a "
        "file the [quickstart] values apply, with one PaddleNLP's defaults do. Keys "
        "llmpre does not implement are refused by name.\n\n"
        "Parallel runs: llmpre starts `python -m paddle.distributed.launch` itself when the "
        "layout needs more than one process (tp x pp x sharding degree, or "
        "--nproc-per-node); across machines, run the same command on every node with "
        "--master HOST:PORT --nnodes K --rank R (R = this node's index). Worker logs go to "
        "<output_dir>/launch_logs/.\n\n"
        "Accepted keys:\n\n\b\n" + argument_help()
    )


def _split_launch(tokens: list[str]) -> tuple[dict, list[str]]:
    """Pull the launcher's flags out of the training flags."""
    launch, rest, i = {}, [], 0
    while i < len(tokens):
        key = tokens[i][2:].replace("-", "_") if tokens[i].startswith("--") else None
        name = key.split("=", 1)[0] if key else None
        if name in LAUNCH_FLAGS:
            if "=" in key:
                launch[name] = key.split("=", 1)[1]
                i += 1
            elif i + 1 < len(tokens):
                launch[name] = tokens[i + 1]
                i += 2
            else:
                raise ConfigError(f"--{name} needs a value")
        else:
            rest.append(tokens[i])
            i += 1
    return launch, rest


def _processes_needed(args) -> int:
    degree = max(1, args.tensor_parallel_degree) * max(1, args.pipeline_parallel_degree)
    return degree * max(1, args.sharding_parallel_degree)


def _launch(launch: dict, args, argv: list[str]) -> int:
    """Re-run this command under paddle.distributed.launch; returns its exit code."""
    nproc = int(launch.get("nproc_per_node") or _processes_needed(args))
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
           "--log_dir", os.path.join(args.output_dir, "launch_logs")]
    if "master" in launch:
        cmd += ["--master", launch["master"]]
    if "nnodes" in launch:
        cmd += ["--nnodes", str(launch["nnodes"])]
    if "rank" in launch:
        cmd += ["--rank", str(launch["rank"])]
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")
    cmd += [script, "train", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)


@click.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
    help=_help(),
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def train(argv):
    from llmpre.train.args import parse_arguments, parse_flag_list

    tokens = list(argv)
    launch, tokens = _split_launch(tokens)
    args_file = None
    if tokens and not tokens[0].startswith("--"):
        args_file = tokens[0]
        if not args_file.endswith(".json"):
            raise ConfigError(f"'{args_file}': the positional argument must be a .json argument "
                              "file; give other settings as --key value")
    args = parse_arguments(args_file, parse_flag_list(tokens[1:] if args_file else tokens))

    under_launcher = "PADDLE_TRAINER_ID" in os.environ
    if not under_launcher and (launch or _processes_needed(args) > 1):
        sys.exit(_launch(launch, args, tokens))

    from llmpre.train.trainer import run

    run(args)
