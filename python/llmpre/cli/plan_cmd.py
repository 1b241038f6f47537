"""``llmpre plan``: per-device memory of a training configuration, and what to
change when it does not fit."""

from __future__ import annotations

import json

import click

from llmpre.errors import ConfigError

_HELP = """Estimate per-device memory for training a model, and whether it fits.

\b
  llmpre plan --model llama2-7b --seq-length 4096 --micro-batch 2 --tp 2 \\
      --sharding 4 --stage 2 --bf16 --fp16-opt-level O2 --flash-attention
  llmpre plan pretrain_argument.json --gpus 8 --gpu-memory 80
  llmpre plan args.json --micro-batch 4 --recompute --gpu-memory 80

\b
Options (flags override an argument file; PaddleNLP spellings also work):
  --model NAME                 preset, HF repo id or HF directory
  --seq-length S               max_seq_length
  --micro-batch B              per_device_train_batch_size
  --gradient-accumulation-steps N   (micro-batches in flight with pp)
  --tp N --pp N --vpp N        tensor / pipeline / virtual pipeline degrees
  --pipeline-layers 3,4,...,3  layers of every pipeline chunk (forward order);
                               default: even, else floor/ceil shares
  --sharding N --stage K       sharding degree and stage 1/2/3
                               (--sharding stage2 = PaddleNLP's stage word)
  --dp N                       data-parallel degree
  --gpus N                     world size (resolves sharding_parallel_degree -1)
  --sequence-parallel
  --recompute [--recompute-granularity full|full_attn|core_attn]
  --no-recompute-layers 0,1,2
  --bf16 | --fp16  [--fp16-opt-level O1|O2] [--amp-master-grad]
  --flash-attention --fused-rms-norm --fused-rope
  --fuse-attention-qkv --fuse-attention-ffn
  --num-hidden-layers N        override the model's depth
  --gpu-memory GB              device memory in GiB: says whether it fits, and
                               the cheapest change that would make it fit
  --verbose                    phases and the per-layer tensor inventory
  --materialize [--rank R]     also build rank R's (default 0) real parameters,
                               gradient buffers and optimizer state with the
                               trainer's code (no other rank, no process groups)
                               and print the measured bytes, peak resident
                               memory and time next to the plan's figures
  --json                       machine-readable output

An argument file may hold any key `llmpre train` accepts; keys that do not
change memory are ignored, unknown keys are an error. The assumptions behind
every number are in docs/plan.md.
"""


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
               help=_HELP)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def plan(argv):
    from llmpre.plan import cheapest_fits, plan_memory, smallest_peak
    from llmpre.plan.args import parse_plan_arguments
    from llmpre.plan.report import render, to_dict
    from llmpre.train.args import parse_flag_list

    tokens = list(argv)
    args_file = None
    if tokens and not tokens[0].startswith("--"):
        args_file = tokens.pop(0)
        if not args_file.endswith(".json"):
            raise ConfigError(f"'{args_file}': the positional argument must be a .json argument file; "
                              "give other settings as --key value")
    flags = parse_flag_list(tokens)
    verbose = str(flags.pop("verbose", "false")).lower() in ("true", "1", "yes")
    materialize = str(flags.pop("materialize", "false")).lower() in ("true", "1", "yes")
    rank = flags.pop("rank", None)
    if rank is not None and not materialize:
        raise ConfigError("--rank names the rank to build with --materialize; add --materialize")
    try:
        rank = int(rank or 0)
    except ValueError:
        raise ConfigError(f"--rank {rank!r}: must be an integer") from None
    settings, options = parse_plan_arguments(args_file, flags)
    memory = plan_memory(settings)
    gpu = options["gpu_memory"]
    suggestions, smallest = None, None
    if gpu is not None and not memory.fits(gpu * 2 ** 30):
        suggestions = cheapest_fits(settings, gpu * 2 ** 30)
        if not suggestions:
            smallest = smallest_peak(settings)
    if options["json"]:
        click.echo(json.dumps(to_dict(memory, gpu, suggestions), indent=2))
    else:
        click.echo(render(memory, gpu, suggestions, smallest, verbose=verbose))
    if materialize:
        from llmpre.plan.materialize import materialize as build_rank, render_materialized
        from llmpre.runtime import configure_threads

        configure_threads(None)
        m = build_rank(settings, rank)
        if options["json"]:
            click.echo(json.dumps({"materialized": m.__dict__}, indent=2, default=str))
        else:
            click.echo("")
            click.echo(render_materialized(m))
