"""The ``llmpre`` command line.

Each command group lives in its own module; modules import Paddle only inside
the command that needs it, so ``llmpre --help`` and the data tools stay fast.
"""

from __future__ import annotations

import sys

import click

from llmpre import __version__
from llmpre.errors import USER_ERRORS


class _Main(click.Group):
    """Turns user errors into one clear line and exit code 2, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmpre")
def main():
    """llmpre: LLM pretraining on PaddlePaddle.

    \b
    llmpre train --model llama-tiny            train on the bundled corpus
    llmpre train pretrain_argument.json        PaddleNLP-style argument file
    llmpre data fingerprint PREFIX             hash exactly what training sees
    llmpre models                              list the model presets
    llmpre report RUN_DIR                      plots and a summary of a run
    llmpre plan --model llama2-7b --seq-length 4096 --micro-batch 1 --tp 2 --bf16
                                               memory per device of a layout
    """


def _register() -> None:
    from llmpre.cli import data_cmds, export_cmd, models_cmd, plan_cmd, report_cmd, train_cmd

    main.add_command(data_cmds.data)
    main.add_command(train_cmd.train)
    main.add_command(models_cmd.models)
    main.add_command(plan_cmd.plan)
    main.add_command(report_cmd.report)
    main.add_command(export_cmd.export_hf)


_register()
