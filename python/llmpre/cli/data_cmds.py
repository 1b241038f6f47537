"""``llmpre data ...``: make, combine, check and fingerprint tokenized corpora.

Exit codes: 0 success; 1 ``verify`` found problems; 2 a usage or data error
(a one-line message says what to change).
"""

from __future__ import annotations

import json
import os
import sys

import click

from llmpre.errors import ConfigError


@click.group()
def data():
    """Tokenized corpora (.bin/.idx or legacy _ids.npy/_idx.npz): preprocess,
    merge, inspect, verify, fingerprint."""


def _parse_counts(text: str) -> list[int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise ConfigError(f"--num-samples '{text}': write three integers like 20000,200,50") from None
    if len(parts) != 3 or any(p < 0 for p in parts):
        raise ConfigError(f"--num-samples '{text}': need three non-negative counts (train,valid,test)")
    return parts


@data.command()
@click.option("--input", "input_path", required=True,
              help="A .jsonl or .jsonl.zst file, or a directory walked for them (sorted by path).")
@click.option("--tokenizer", required=True,
              help="A tokenizer.json, or a local directory holding one (HF `tokenizers`).")
@click.option("--output-prefix", required=True, help="Writes PREFIX.bin and PREFIX.idx.")
@click.option("--json-key", default="text", show_default=True, help="Key of the text in each line.")
@click.option("--append-eos", is_flag=True, help="Append the EOS id to each document's last item.")
@click.option("--eos-token", default=None,
              help="EOS token (string or integer id); default: tokenizer_config.json's eos_token, "
                   "else the first of </s>, <|endoftext|>, <|end_of_text|>, <eos>, <|im_end|>.")
@click.option("--workers", type=int, default=1, show_default=True, help="Tokenizer processes.")
@click.option("--max-doc-num", type=int, default=None, help="Stop after this many documents.")
@click.option("--split-sentences", is_flag=True,
              help="One item per sentence (a rule-based English splitter, not nltk's punkt).")
@click.option("--max-repeated-len", type=int, default=100, show_default=True,
              help="Collapse a character repeated more than this many times to one "
                   "(PaddleNLP's rule; 0 turns it off).")
@click.option("--strict", is_flag=True, help="Stop at the first bad line (file:line in the error).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def preprocess(input_path, tokenizer, output_prefix, json_key, append_eos, eos_token, workers,
               max_doc_num, split_sentences, max_repeated_len, strict, quiet):
    """Tokenize JSON lines into a PaddleNLP-compatible corpus.

    Each line is one document: {"text": "..."}. The output is byte-compatible
    with PaddleNLP's create_pretraining_data.py (uint16 tokens below 65535 ids,
    else int32; one item per document, or per sentence with --split-sentences).
    Bad lines (invalid JSON, missing key, empty text) are skipped and counted.

    \b
      llmpre data preprocess --input corpus/ --tokenizer tok/ \\
          --output-prefix data/corpus --append-eos --workers 8
    """
    from llmpre.data.preprocess import preprocess as run

    stats = run(input_path, tokenizer, output_prefix, json_key=json_key, append_eos=append_eos,
                eos_token=eos_token, workers=workers, max_doc_num=max_doc_num,
                split=split_sentences, strict=strict, max_repeated_len=max_repeated_len,
                progress=not quiet)
    click.echo(stats.summary())
    if stats.eos_id is not None:
        click.echo(f"appended EOS id {stats.eos_id} to every document")
    click.echo(f"wrote {output_prefix}.bin and {output_prefix}.idx")


@data.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output-prefix", required=True, help="Writes PREFIX.bin and PREFIX.idx.")
def merge(inputs, output_prefix):
    """Concatenate corpora (PaddleNLP's merge semantics; dtypes must match).

    INPUTS are corpus prefixes or directories (every corpus in a directory,
    sorted by name), merged in the order given.
    """
    from llmpre.data.sources import parse_data_spec
    from llmpre.data.tools import merge as run

    prefixes = []
    for item in inputs:
        if os.path.isdir(item):
            prefixes.extend(parse_data_spec(item, what=item).prefixes)
        else:
            prefixes.append(item)
    result = run(prefixes, output_prefix)
    click.echo(f"merged {result['inputs']} corpora: {result['documents']} documents, "
               f"{result['items']} items, {result['tokens']} {result['dtype']} tokens "
               f"-> {output_prefix}.bin/.idx")


@data.command()
@click.argument("prefix")
@click.option("--tokenizer", default=None, help="Decode the shown documents with this tokenizer.")
@click.option("--show", type=int, default=0, show_default=True, help="Documents to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(prefix, tokenizer, show, as_json):
    """Documents, items, tokens, dtype, length percentiles and largest id of PREFIX."""
    from llmpre.data.tools import inspect as run

    r = run(prefix, tokenizer=tokenizer, show=show)
    if as_json:
        click.echo(json.dumps(r, indent=2, ensure_ascii=False))
        return
    click.echo(f"{r['prefix']} ({r['format']}, {r['dtype']})")
    click.echo(f"  documents {r['documents']:,}  items {r['items']:,}  tokens {r['tokens']:,}  "
               f"max token id {r['max_token_id']}")
    for key, label in (("doc_tokens", "tokens per document"), ("item_tokens", "tokens per item")):
        if r[key]:
            pct = "  ".join(f"{k} {v}" for k, v in r[key].items())
            click.echo(f"  {label}: {pct}")
    for doc in r["shown"]:
        click.echo(f"--- document {doc['document']} ({doc['items']} items, {doc['tokens']} tokens)")
        click.echo(doc["text"] if "text" in doc else f"{doc['ids']}{' ...' if doc['tokens'] > 64 else ''}")


@data.command()
@click.argument("prefix")
@click.option("--vocab-size", type=int, default=None,
              help="Also check that every token id is below this vocabulary size.")
def verify(prefix, vocab_size):
    """Check PREFIX's files and list every problem found.

    Checks the .idx header (magic, version, dtype code, length), sizes,
    pointers against sizes and item size, the .bin length, doc_idx (starts at
    0, never decreases, ends at the item count); the legacy layout likewise.
    Exit code 0 when consistent, 1 when problems were found, 2 when PREFIX
    names no corpus.
    """
    from llmpre.data.tools import verify as run

    problems, facts = run(prefix, vocab_size=vocab_size)
    for p in problems:
        click.echo(f"PROBLEM: {p}")
    if problems:
        click.echo(f"{prefix}: {len(problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo(f"OK: {prefix}: " + ", ".join(f"{k} {v}" for k, v in facts.items()))


@data.command()
@click.argument("data_spec", metavar="DATA")
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
def fingerprint(data_spec, split, seq_length, seed, num_samples, data_cache, no_cache):
    """Print a JSON fingerprint of the samples PaddleNLP's datasets draw from DATA.

    DATA is a corpus prefix, a directory of corpora (several: equal weights),
    or a weighted blend "0.3 PREFIX_A 0.7 PREFIX_B" (PaddleNLP's input_dir).
    For each split present (train, valid, test) the object holds: num_epochs,
    len (samples in the dataset), sha256_all (sha256 of all samples in dataset
    order, each seq_length+1 little-endian int64 tokens) and sha256_requested
    (the same over the first num_samples samples); separate_last_epoch for one
    corpus; weights, datasets and samples_per_dataset for a blend.

    Two pipelines that print the same object feed a model the same tokens in
    the same order. Example:

    \b
      llmpre data fingerprint data/corpus --split 949,50,1 \\
          --seq-length 128 --seed 1234 --num-samples 20000,200,50
    """
    from llmpre.data.fingerprint import fingerprint as fp

    result = fp(data_spec, split, seq_length, seed, _parse_counts(num_samples),
                data_cache=data_cache, use_cache=not no_cache)
    click.echo(json.dumps(result, indent=2))
