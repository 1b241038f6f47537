"""``llmpre train``: pretrain a model from flags or a PaddleNLP argument file.

A parallel run is re-executed under ``paddle.distributed.launch``; this process
then holds the output directory's run lock for its workers (node 0 only) and
passes SIGTERM/SIGINT on to them (the launcher runs in a session of its own, so
a terminal's Ctrl-C reaches the workers once, through here). Workers stop after
their current step, save a checkpoint and exit 0; this process then reports the
stop and exits 128 + the signal number, as a single process does.
"""

from __future__ import annotations

import os
import re
import signal
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
        "  llmpre train --paddlenlp-defaults --max_steps 100   PaddleNLP's defaults, no file\n"
        "  llmpre train --model qwen-7b --tp 2 --sharding 4   8 processes on this machine\n"
        "  llmpre train ... --nproc-per-node 8 --master 10.0.0.1:8090 --nnodes 2 --rank 0\n\n"
        "Every key of PaddleNLP's run_pretrain JSON files is spelled the same here "
        "(as --key value, dashes or underscores); flags override the file. Without a "
        "file the [quickstart] values apply (one log line lists those that differ from "
        "PaddleNLP's defaults; --paddlenlp-defaults uses PaddleNLP's instead), with one "
        "PaddleNLP's defaults do. Keys that cannot change the result here are accepted "
        "with one notice line each; keys llmpre does not implement are refused with the "
        "reason, all of a file's in one error.\n\n"
        "Parallel runs: llmpre starts `python -m paddle.distributed.launch` itself when the "
        "run needs more than one process (--nproc-per-node; else on a GPU machine one per "
        "visible GPU, on a CPU machine tp x pp x sharding degree); across machines, run the same command on every node with "
        "--master HOST:PORT --nnodes K --rank R (R = this node's index). Worker logs go to "
        "<output_dir>/launch_logs/. Before starting them it checks the layout against the model "
        "and, on a CPU machine, the processes' memory against what is available (--force skips "
        "the memory check).\n\n"
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


def _pop_force(tokens: list[str]) -> tuple[list[str], bool]:
    """``--force`` (optionally ``--force true|false``): start a launch the memory check refuses."""
    out, force, i = [], False, 0
    while i < len(tokens):
        if tokens[i] in ("--force", "--force=true", "--force=false"):
            force = tokens[i] != "--force=false"
            if tokens[i] == "--force" and i + 1 < len(tokens) and tokens[i + 1].lower() in ("true", "false"):
                force = tokens[i + 1].lower() == "true"
                i += 1
        else:
            out.append(tokens[i])
        i += 1
    return out, force


def _processes_needed(args) -> int:
    from llmpre.parallel.dims import processes_needed

    return processes_needed(args)


def visible_gpus() -> int:
    """GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else the
    ``/dev/nvidia<N>`` device files (0 on a CPU machine)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len([n for n in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", n)])
    except OSError:
        return 0


def launch_width(launch: dict, args) -> tuple[int, str]:
    """Processes on this node and where the number comes from: ``--nproc-per-node``; on
    a GPU machine one per visible GPU (as ``paddle.distributed.launch`` starts for
    PaddleNLP; what tp x pp leaves goes to sharding or data parallelism); on a CPU
    machine the layout's tp x pp x sharding x sep x cp degree."""
    if launch.get("nproc_per_node"):
        return int(launch["nproc_per_node"]), "--nproc-per-node"
    gpus = visible_gpus()
    if gpus:
        return gpus, f"one process per visible GPU ({gpus})"
    return _processes_needed(args), "tp x pp x sharding x sep x cp degree (no GPU: one process per layout rank)"


def _launch(launch: dict, args, argv: list[str], nproc: int | None = None, source: str = "") -> int:
    """Re-run this command under paddle.distributed.launch; returns its exit code
    (128 + the signal number when it was stopped by a signal)."""
    nproc = nproc or int(launch.get("nproc_per_node") or _processes_needed(args))
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
    env["LLMPRE_WORLD_SOURCE"] = source or "--nproc-per-node"
    lock = None
    if str(launch.get("rank", "0")) == "0":   # node 0 holds the run's lock (global rank 0 is there)
        from llmpre.train.lock import RunLock

        lock = RunLock.acquire(args.output_dir)
        env.update(lock.env())
    try:
        return _supervise(subprocess.Popen(cmd, env=env, start_new_session=True), script)
    finally:
        if lock is not None:
            lock.release()


def _workers(launcher_pid: int, script: str) -> list[int]:
    """PIDs of the launcher's worker processes (children running ``script``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == launcher_pid and script.encode() in argv:
            pids.append(int(entry))
    return pids


def _supervise(proc: subprocess.Popen, script: str) -> int:
    """Wait for the launcher, forwarding SIGTERM/SIGINT to its workers directly (the
    launcher itself would kill them 30 s later)."""
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        targets = _workers(proc.pid, script)
        for pid in targets or [proc.pid]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        if len(received) == 1:
            print(f"llmpre: {signal.Signals(signum).name} passed to {len(targets)} worker(s); they "
                  "stop after the current step and save a checkpoint (send it again to abort)",
                  file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except InterruptedError:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received and code == 0:
        return 128 + received[0]
    return code


@click.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
    help=_help(),
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def train(argv):
    from llmpre.train.args import parse_arguments, parse_flag_list

    tokens = list(argv)
    tokens, force = _pop_force(tokens)
    launch, tokens = _split_launch(tokens)
    args_file = None
    if tokens and not tokens[0].startswith("--"):
        args_file = tokens[0]
        if not args_file.endswith(".json"):
            raise ConfigError(f"'{args_file}': the positional argument must be a .json argument "
                              "file; give other settings as --key value")
    args = parse_arguments(args_file, parse_flag_list(tokens[1:] if args_file else tokens))

    under_launcher = "PADDLE_TRAINER_ID" in os.environ
    if not under_launcher:   # hub names: found or downloaded once, here; workers inherit the result
        from llmpre.models.hub import resolve_run_names

        resolve_run_names(args)
    nproc, source = (1, "") if under_launcher else launch_width(launch, args)
    if not under_launcher and (launch or nproc > 1):
        from llmpre.cli.preflight import check_device_memory, check_host_memory, check_layout

        world = nproc * int(launch.get("nnodes") or 1)
        dims, config = check_layout(args, world)   # before any worker starts
        if not force:
            if visible_gpus():
                check_device_memory(args, dims, config)
            else:
                check_host_memory(args, dims, config, nproc)
        click.echo(f"llmpre: starting {nproc} processes on this node, world size {world} ({source}): "
                   f"{dims.describe()}", err=True)
        sys.exit(_launch(launch, args, tokens, nproc, source))

    from llmpre.train.trainer import TrainingStopped, run

    try:
        run(args)
    except TrainingStopped as e:
        click.echo(f"llmpre: {e}", err=True)
        # under the launcher a clean stop is a success for it; `llmpre train` reports the signal
        sys.exit(0 if under_launcher else 128 + e.signum)
