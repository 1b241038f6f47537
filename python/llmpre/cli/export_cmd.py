"""``llmpre export-hf``: write a model as an HF checkpoint directory."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import click

from llmpre.errors import ConfigError
from llmpre.models.hf_stream import parse_size

__all__ = ["export_hf", "llmpre_checkpoint_weights", "parse_size", "verify_for_export"]


# Optimizer state of a single-process checkpoint and of a sharded one (llmpre.parallel.ckpt).
_OPTIMIZER_FILE = re.compile(r"optimizer\.safetensors|optim-tp\d+-pp\d+-sh\d+\.safetensors")


def verify_for_export(path: Path) -> list[str]:
    """Check a training checkpoint's manifest for export: every file but the optimizer
    state must be present with its recorded size and sha256 (else CheckpointError, as
    for resuming); the optimizer files are not needed, so their problems are returned
    ("optimizer.safetensors missing") instead of refusing the checkpoint."""
    from llmpre.train.checkpoint import FORMAT, MANIFEST, CheckpointError, verify_checkpoint, verify_file

    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"] if manifest.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        files = None
    if not isinstance(files, dict):
        verify_checkpoint(str(path))  # no, unreadable or foreign manifest: its own message
        raise CheckpointError(f"{path / MANIFEST}: no file list; the checkpoint is damaged")
    optimizer = []
    for name, meta in files.items():
        fpath = path / name
        if _OPTIMIZER_FILE.fullmatch(name):
            if not fpath.is_file():
                optimizer.append(f"{name} missing")
            elif fpath.stat().st_size != meta.get("bytes"):
                optimizer.append(f"{name} truncated or changed")
            continue
        verify_file(str(fpath), meta, then="export another one")
    return optimizer


def llmpre_checkpoint_weights(path: Path):
    """``(config, shapes, tensor)`` of a training checkpoint (``checkpoint-N/`` of a
    single-process run, or the sharded checkpoint of any parallel layout): its model config,
    every parameter's global shape, and ``tensor(name)``, which reads one parameter whole
    (reassembled from its slices) as numpy and closes the files again, so a writer holds
    one at a time and no file stays open. Checks the manifest first (the optimizer state
    may be missing: a warning says so) and that the weights match the model_config."""
    from llmpre.models.hf import build
    from llmpre.models.hf_config import from_hf_dict
    from llmpre.parallel.ckpt import GlobalTensors

    optimizer = verify_for_export(path)
    if optimizer:
        click.echo(f"warning: {path}: optimizer state {', '.join(optimizer)}; the weights verify and "
                   "are exported, but this checkpoint cannot resume training", err=True)
    state = json.loads((path / "trainer_state.json").read_text())
    if "model_config" not in state:
        raise ConfigError(f"{path / 'trainer_state.json'}: no model_config; not an llmpre checkpoint")
    config = from_hf_dict(state["model_config"])
    model = build(config)    # no parameter memory: the shapes only
    shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    del model
    with GlobalTensors(str(path)) as tensors:
        names = set(tensors.names())
        problems = [f"missing tensor {n}" for n in shapes if n not in names]
        problems += [f"unexpected tensor {n}" for n in names if n not in shapes]
        problems += [f"shape mismatch {n}: checkpoint {tensors.meta(n)['shape']}, model {shapes[n]}"
                     for n in names & set(shapes) if list(tensors.meta(n)["shape"]) != shapes[n]]
    if problems:
        raise ConfigError(f"{path}: weights do not match the checkpoint's model_config: " + "; ".join(problems))
    return config, shapes, tensors.param_closing      # each read closes the files it opened


@click.command("export-hf")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--style", type=click.Choice(["v4", "v5", "paddlenlp"]), default="v4", show_default=True,
              help="v4: HF layout, config keys rope_theta/rope_scaling/torch_dtype (transformers 4 and 5); "
                   "v5: HF layout, rope_parameters/dtype; paddlenlp: what PaddleNLP 2.8.1 saves (its config.json, "
                   "tensor names and [in, out] layouts, safetensors format np), for its "
                   "AutoModelForCausalLM.from_pretrained.")
@click.option("--max-shard-size", default=None,
              help="Split the weights into model-0000i-of-0000n.safetensors shards of at most this size "
                   "(e.g. 5GB) with a model.safetensors.index.json; default: one file.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Dtype of the written weights.")
def export_hf(source, out_dir, style, max_shard_size, dtype):
    """Export SOURCE as an HF checkpoint in OUT_DIR (config.json + safetensors, the layout
    and tensor names transformers loads for the model's family), or as PaddleNLP saves it
    (--style paddlenlp).

    \b
    SOURCE is a training checkpoint (OUTPUT_DIR/checkpoint-N), an HF checkpoint directory
    or a PaddleNLP one (to convert it, re-shard it, change its dtype or its config keys).
    """
    from llmpre.models import from_pretrained, save_pretrained
    from llmpre.models.hf_stream import save_streamed
    from llmpre.models.paddlenlp_format import save_paddlenlp

    src = Path(source)
    max_bytes = parse_size(max_shard_size) if max_shard_size else None
    if Path(out_dir).resolve() == src.resolve():
        raise ConfigError(f"{out_dir}: choose an output directory other than SOURCE")
    # a finished run's output_dir also holds a trainer_state.json (PaddleNLP's, beside config.json)
    if (src / "trainer_state.json").is_file() and not (src / "config.json").is_file():
        # one parameter at a time: no process holds the whole model
        config, shapes, tensor = llmpre_checkpoint_weights(src)
        if style == "paddlenlp":
            save_paddlenlp(config, shapes, tensor, out_dir, dtype=dtype, max_shard_bytes=max_bytes)
        else:
            save_streamed(config, shapes, tensor, out_dir, dtype=dtype, style=style, max_shard_bytes=max_bytes)
    elif (src / "config.json").is_file():
        model = from_pretrained(src, dtype=dtype)
        config, shapes = model.config, {n: list(p.shape) for n, p in model.named_parameters()}
        if style == "paddlenlp":
            save_paddlenlp(config, shapes, dict(model.named_parameters()).get, out_dir, dtype=dtype,
                           max_shard_bytes=max_bytes)
        else:
            save_pretrained(model, out_dir, style=style, max_shard_bytes=max_bytes)
    else:
        raise ConfigError(f"{src}: neither a training checkpoint (trainer_state.json) nor an HF checkpoint "
                          "(config.json); pass OUTPUT_DIR/checkpoint-N or an HF model directory")
    n = sum(math.prod(s) for s in shapes.values())
    click.echo(f"wrote {out_dir}: {config.model_type}, {n:,} parameters, {dtype}, "
               + ("PaddleNLP layout" if style == "paddlenlp" else f"config keys {style}"))
