"""``llmpre train``: pretrain a model from flags or a PaddleNLP argument file."""

from __future__ import annotations

import click

from llmpre.errors import ConfigError


def _help() -> str:
    from llmpre.train.args import argument_help

    return (
        "Pretrain a model on a tokenized corpus.\n\n"
        "\b\n"
        "  llmpre train --model llama-tiny                 bundled corpus, quickstart values\n"
        "  llmpre train pretrain_argument.json             PaddleNLP argument file\n"
        "  llmpre train args.json --max_steps 50 --learning-rate 1e-3\n\n"
        "Every key of PaddleNLP's run_pretrain JSON files is spelled the same here "
        "(as --key value, dashes or underscores); flags override the file. Without a "
        "file the [quickstart] values apply, with one PaddleNLP's defaults do. Keys "
        "llmpre does not implement are refused by name.\n\n"
        "Accepted keys:\n\n\b\n" + argument_help()
    )


@click.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
    help=_help(),
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def train(argv):
    from llmpre.train.args import parse_arguments, parse_flag_list

    tokens = list(argv)
    args_file = None
    if tokens and not tokens[0].startswith("--"):
        args_file = tokens.pop(0)
        if not args_file.endswith(".json"):
            raise ConfigError(f"'{args_file}': the positional argument must be a .json argument "
                              "file; give other settings as --key value")
    args = parse_arguments(args_file, parse_flag_list(tokens))

    from llmpre.train.trainer import run

    run(args)
