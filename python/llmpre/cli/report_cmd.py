"""``llmpre report``: plots of a run."""

from __future__ import annotations

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", default=None,
              help="Where to write the PNGs and summary.txt (default: RUN_DIR/report).")
def report(run_dir, out_dir):
    """Plot a training run (finished or still running) from RUN_DIR/metrics.jsonl.

    Writes loss.png (train and eval loss against steps and tokens),
    learning_rate.png, throughput.png, memory.png (device memory in GB for a GPU
    run, process memory in MB for a CPU run) and summary.txt, and prints the
    summary.
    """
    from llmpre.report import write_report

    summary = write_report(run_dir, out_dir)
    for key, value in summary.items():
        click.echo(f"{key}: {value}")
