"""``llmpre export-hf``: write a model as an HF checkpoint directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from llmpre.errors import ConfigError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConfigError(f"--max-shard-size {text!r}: give a size such as 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


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


def load_llmpre_checkpoint(path: Path, dtype: str):
    """A model from a training checkpoint (``checkpoint-N/`` of a single-process run,
    or the sharded checkpoint of any parallel layout, reassembled), after checking
    its manifest (the optimizer state may be missing: a warning says so)."""
    import paddle

    from llmpre.models.hf_config import from_hf_dict
    from llmpre.models.hf import build, finish
    from llmpre.parallel.ckpt import GlobalTensors

    optimizer = verify_for_export(path)
    if optimizer:
        click.echo(f"warning: {path}: optimizer state {', '.join(optimizer)}; the weights verify and "
                   "are exported, but this checkpoint cannot resume training", err=True)
    state = json.loads((path / "trainer_state.json").read_text())
    if "model_config" not in state:
        raise ConfigError(f"{path / 'trainer_state.json'}: no model_config; not an llmpre checkpoint")
    model = build(from_hf_dict(state["model_config"]), ops=None, deferred=True)
    params = dict(model.named_parameters())
    tensors = GlobalTensors(str(path))
    names = set(tensors.names())
    problems = [f"missing tensor {n}" for n in params if n not in names]
    problems += [f"unexpected tensor {n}" for n in names if n not in params]
    problems += [f"shape mismatch {n}: checkpoint {tensors.meta(n)['shape']}, model {params[n].shape}"
                 for n in names & set(params) if list(tensors.meta(n)["shape"]) != list(params[n].shape)]
    if problems:
        raise ConfigError(f"{path}: weights do not match the checkpoint's model_config: " + "; ".join(problems))
    with paddle.no_grad():
        for n, p in params.items():
            p.set_value(paddle.to_tensor(tensors.param(n)).astype(p.dtype))
    return finish(model, dtype)


@click.command("export-hf")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--style", type=click.Choice(["v4", "v5"]), default="v4", show_default=True,
              help="config.json keys: v4 (rope_theta/rope_scaling/torch_dtype, read by transformers 4 and 5) "
                   "or v5 (rope_parameters/dtype).")
@click.option("--max-shard-size", default=None,
              help="Split the weights into model-0000i-of-0000n.safetensors shards of at most this size "
                   "(e.g. 5GB) with a model.safetensors.index.json; default: one file.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Dtype of the written weights.")
def export_hf(source, out_dir, style, max_shard_size, dtype):
    """Export SOURCE as an HF checkpoint in OUT_DIR (config.json + safetensors, the layout
    and tensor names transformers / PaddleNLP load for the model's family).

    \b
    SOURCE is a training checkpoint (OUTPUT_DIR/checkpoint-N) or an HF checkpoint
    directory (to re-shard it, change its dtype or its config key style).
    """
    from llmpre.models import from_pretrained, save_pretrained

    src = Path(source)
    if (src / "trainer_state.json").is_file():
        model = load_llmpre_checkpoint(src, dtype)
    elif (src / "config.json").is_file():
        model = from_pretrained(src, dtype=dtype)
    else:
        raise ConfigError(f"{src}: neither a training checkpoint (trainer_state.json) nor an HF checkpoint "
                          "(config.json); pass OUTPUT_DIR/checkpoint-N or an HF model directory")
    if Path(out_dir).resolve() == src.resolve():
        raise ConfigError(f"{out_dir}: choose an output directory other than SOURCE")
    save_pretrained(model, out_dir, style=style,
                    max_shard_bytes=parse_size(max_shard_size) if max_shard_size else None)
    n = sum(int(p.numel()) for p in model.parameters())
    click.echo(f"wrote {out_dir}: {model.config.model_type}, {n:,} parameters, {dtype}, config keys {style}")
