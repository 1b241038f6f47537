"""``llmpre data ...``: tools for tokenized corpora."""

from __future__ import annotations

import json

import click

from llmpre.errors import ConfigError


@click.group()
def data():
    """Inspect and fingerprint tokenized corpora (.bin/.idx or _ids.npy/_idx.npz)."""


def _parse_counts(text: str) -> list[int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise ConfigError(f"--num-samples '{text}': write three integers like 20000,200,50") from None
    if len(parts) != 3 or any(p < 0 for p in parts):
        raise ConfigError(f"--num-samples '{text}': need three non-negative counts (train,valid,test)")
    return parts


@data.command()
@click.argument("prefix")
@click.option("--split", default="949,50,1", show_default=True,
              help="train,valid,test proportions over the corpus items (PaddleNLP's `split`).")
@click.option("--seq-length", type=int, default=1024, show_default=True,
              help="Sequence length; every sample has seq_length+1 tokens.")
@click.option("--seed", type=int, default=42, show_default=True,
              help="Sampling seed (PaddleNLP's `seed`).")
@click.option("--num-samples", default="20000,200,50", show_default=True,
              help="Samples requested per split, as train,valid,test.")
@click.option("--data-cache", default=None,
              help="Extra index-cache directory (PaddleNLP's `data_cache`), searched after "
                   "<data dir>/index-cache/ and written to when given.")
@click.option("--no-cache", is_flag=True, help="Build the index in memory; read and write no cache.")
def fingerprint(prefix, split, seq_length, seed, num_samples, data_cache, no_cache):
    """Print a JSON fingerprint of the samples PaddleNLP's GPTDataset draws from PREFIX.

    For each split present (train, valid, test) the object holds: num_epochs,
    separate_last_epoch, len (samples in the dataset), sha256_all (sha256 of
    all samples in dataset order, each seq_length+1 little-endian int64 tokens)
    and sha256_requested (the same over the first num_samples samples).

    Two pipelines that print the same object feed a model the same tokens in
    the same order. Example:

    \b
      llmpre data fingerprint data/corpus --split 949,50,1 \\
          --seq-length 128 --seed 1234 --num-samples 20000,200,50
    """
    from llmpre.data.fingerprint import fingerprint as fp

    result = fp(prefix, split, seq_length, seed, _parse_counts(num_samples),
                data_cache=data_cache, use_cache=not no_cache)
    click.echo(json.dumps(result, indent=2))
