"""Hub names (``"meta-llama/Llama-2-7b"``) resolved to local directories, as PaddleNLP's and
transformers' ``from_pretrained`` do: from the caches on this machine, else downloaded.

    path = resolve("Qwen/Qwen2-0.5B", "weights")     # config.json + safetensors
    path = resolve("meta-llama/Llama-2-7b", "tokenizer")

A name that is not a path on disk is looked for, in this order:

1. the Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HUGGINGFACE_HUB_CACHE``, else
   ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``);
   a repo is ``models--<org>--<name>/``, whose ``refs/main`` names the snapshot
   ``snapshots/<commit>/`` (a snapshot holding the files is taken when there is no ref);
2. PaddleNLP's caches: ``$PPNLP_HOME/models/<org>/<name>/`` (default ``~/.paddlenlp``: what
   PaddleNLP downloads from its own servers, community models included), the same hub
   layout as 1. under ``$HUGGINGFACE_HUB_CACHE`` or ``$PPNLP_HOME/models`` (its
   ``from_hf_hub`` downloads), and AI Studio's ``models--<org>--<name>/`` (``refs/master``)
   under ``$AISTUDIO_HUB_CACHE``, else ``$AISTUDIO_HOME/aistudio``, else
   ``$XDG_CACHE_HOME/paddle/aistudio``;
3. a download with ``huggingface_hub.snapshot_download`` from ``$HF_ENDPOINT`` (default
   huggingface.co) into the cache of 1., of just the files needed — unless
   ``HF_HUB_OFFLINE=1``, the name is bare (no ``org/``: only the caches are searched), or this
   is a worker of a parallel launch.

Otherwise one ConfigError lists every place searched (and what was found there, if it was
not enough) and how to provide the files. What "enough" means depends on the use:
``config`` needs config.json; ``weights`` config.json and the weights (safetensors, single
or sharded with their index, or PaddleNLP's ``model_state.pdparams``); ``tokenizer`` a
tokenizer.json.

A run resolves its names once, before any worker starts (:func:`resolve_run_names`, called
by ``llmpre train``): the results are kept in the environment variable ``LLMPRE_HUB_PATHS``,
which the workers inherit and read instead of searching (or downloading) again.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from llmpre.errors import ConfigError
from llmpre.models.presets import close_names, is_known_name

__all__ = ["ENV", "NEEDS", "is_hub_name", "resolve", "model_source", "tokenizer_source",
           "resolve_run_names", "search_places"]

ENV = "LLMPRE_HUB_PATHS"            # {"<need>:<name>": directory} resolved by the launcher
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "model_state.pdparams",
            "model_state.pdparams.index.json")
_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model", "qwen.tiktoken"]
# what each use needs, and the files a download fetches for it
NEEDS = {
    "config": ["config.json"],
    "weights": ["config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "model-*-of-*.safetensors"],
    "tokenizer": _TOKENIZER_FILES,
}


def is_hub_name(name: str) -> bool:
    """``org/name`` or a bare ``name`` spelled as a hub repository id (not ``./x``, ``~/x``,
    an absolute path, nor anything with more than one ``/``)."""
    name = str(name)
    return bool(_REPO.match(name)) and "--" not in name and ".." not in name and not name.endswith(".json")


def _env_path(var: str) -> Optional[Path]:
    value = os.environ.get(var)
    return Path(os.path.expanduser(os.path.expandvars(value))) if value else None


def hf_hub_cache() -> Path:
    """Hugging Face's hub cache directory, as huggingface_hub computes it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if _env_path(var):
            return _env_path(var)
    home = _env_path("HF_HOME") or (_env_path("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return home / "hub"


def _ppnlp_models() -> Path:
    return (_env_path("PPNLP_HOME") or Path.home() / ".paddlenlp") / "models"


def _aistudio_cache() -> Path:
    if _env_path("AISTUDIO_HUB_CACHE"):
        return _env_path("AISTUDIO_HUB_CACHE")
    home = _env_path("AISTUDIO_HOME") or (_env_path("XDG_CACHE_HOME") or Path.home() / ".cache") / "paddle"
    return home / "aistudio"


def search_places(name: str) -> List[Tuple[str, Path, str]]:
    """``(label, directory, ref)`` of every cache place for ``name``, in search order; ``ref`` is
    the hub layout's branch file (``main``, ``master``), or "" for a flat directory."""
    folder = "models--" + name.replace("/", "--")
    places = [("Hugging Face cache", hf_hub_cache() / folder, "main"),
              ("PaddleNLP model cache", _ppnlp_models() / name, "")]
    pnlp_hf = (_env_path("HUGGINGFACE_HUB_CACHE") or _ppnlp_models()) / folder
    if pnlp_hf != places[0][1]:
        places.append(("PaddleNLP's Hugging Face cache", pnlp_hf, "main"))
    places.append(("AI Studio cache", _aistudio_cache() / folder, "master"))
    return places


def _missing(directory: Path, need: str) -> List[str]:
    """What ``directory`` lacks for ``need`` ([] when it has it all)."""
    if not directory.is_dir():
        return ["the directory"]
    if need == "tokenizer":
        return [] if (directory / "tokenizer.json").is_file() else ["tokenizer.json"]
    missing = [] if (directory / "config.json").is_file() else ["config.json"]
    if need == "weights":
        present = [f for f in _WEIGHTS if (directory / f).is_file()]
        if not present:
            missing.append("the weights (model.safetensors or model.safetensors.index.json + shards, or "
                           "model_state.pdparams)")
        for index in (f for f in present if f.endswith(".index.json")):
            try:
                shards = set(json.loads((directory / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                missing.append(f"a readable {index}")
                continue
            missing += sorted(s for s in shards if not (directory / s).is_file())
    return missing


def _snapshots(repo: Path, ref: str) -> List[Path]:
    """The snapshot the ref names, then the others, newest first."""
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return []
    named = []
    try:
        commit = (repo / "refs" / ref).read_text().strip()
        if commit and (snaps / commit).is_dir():
            named = [snaps / commit]
    except OSError:
        pass
    others = sorted((p for p in snaps.iterdir() if p.is_dir() and p not in named),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    return named + others


def _search(name: str, need: str) -> Tuple[Optional[Path], List[str]]:
    """The first cached directory holding what ``need`` needs, and a line per place searched."""
    lines = []
    for label, place, ref in search_places(name):
        candidates = _snapshots(place, ref) if ref else [place]
        if not place.exists():
            lines.append(f"{label} {place}: absent")
            continue
        if not candidates:
            lines.append(f"{label} {place}: no snapshot")
            continue
        for candidate in candidates:
            missing = _missing(candidate, need)
            if not missing:
                return candidate, lines
        lines.append(f"{label} {candidates[0]}: no {', '.join(_missing(candidates[0], need))}")
    return None, lines


def _resolved_env() -> Dict[str, str]:
    try:
        value = json.loads(os.environ.get(ENV, "{}"))
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _download(name: str, need: str) -> Tuple[Optional[Path], str]:
    """``(snapshot directory or None, what happened)``: ``name``'s files for ``need`` fetched
    into the Hugging Face cache."""
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    if _offline():
        return None, "download from the hub: not tried (HF_HUB_OFFLINE is set)"
    if "PADDLE_TRAINER_ID" in os.environ:
        return None, ("download from the hub: not tried in a worker of a parallel launch (`llmpre train` "
                      "resolves names before it starts the workers)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None, "download from the hub: not possible (huggingface_hub is not installed: pip install huggingface_hub)"
    try:
        path = snapshot_download(name, allow_patterns=NEEDS[need], cache_dir=str(hf_hub_cache()),
                                 endpoint=endpoint)
    except Exception as e:  # network, authentication, unknown repository: all reported the same way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, f"download from {endpoint}: failed ({type(e).__name__}: {first})"
    missing = _missing(Path(path), need)
    if missing:
        return None, f"download from {endpoint} into {path}: the repository has no {', '.join(missing)}"
    return Path(path), f"downloaded from {endpoint}"


def _how_to_provide(name: str, need: str) -> str:
    files = " ".join(f"'{f}'" if "*" in f else f for f in NEEDS[need])
    return (f"download them on a machine with access (`huggingface-cli download {name} --include {files}`, "
            f"into the same cache, or with --local-dir DIR and pass DIR instead of the name), or give "
            f"the path of a local directory holding them")


def resolve(name: str, need: str, download: Optional[bool] = None) -> Path:
    """The local directory holding what ``need`` (``config``, ``weights``, ``tokenizer``) needs
    for hub name ``name``: a directory the launcher resolved (``LLMPRE_HUB_PATHS``), a cache,
    or a download (``download`` None: only for ``org/name``). ConfigError when none has it."""
    if need not in NEEDS:
        raise ValueError(f"need must be one of {', '.join(NEEDS)}")
    known = _resolved_env().get(f"{need}:{name}")
    if known and not _missing(Path(known), need):
        return Path(known)
    found, lines = _search(name, need)
    if found is not None:
        return found
    if download is None:
        download = "/" in name
    if download:
        found, line = _download(name, need)
        if found is not None:
            return found
        lines.append(line)
    else:
        lines.append("download from the hub: not tried for a bare name (no org/)")
    what = {"config": "its config.json", "weights": "its config.json and weights",
            "tokenizer": "its tokenizer.json"}[need]
    close = [] if need == "tokenizer" else [c for c in close_names(name) if c.lower() != name.lower()]
    hint = f"\nIf a preset was meant: did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"'{name}' is not a directory here and {what} could not be found. Searched:\n  "
                      + "\n  ".join(lines) + f"\nTo provide them: {_how_to_provide(name, need)}" + hint)


def _on_disk(name: str) -> bool:
    return os.path.exists(os.path.expanduser(str(name)))


def model_source(name: str, weights: bool) -> str:
    """What a run loads its model from: ``name`` itself when it is on disk, or a preset
    (llmpre's own config table) when only the config is needed; otherwise the local directory
    of hub name ``name`` (:func:`resolve`). Anything else is returned as it is, for the
    loader's own error."""
    name = str(name)
    if _on_disk(name) or not is_hub_name(name) or (not weights and is_known_name(name)):
        return name
    if not weights and "/" not in name:    # a bare name that is no preset: only the caches
        found, _ = _search(name, "config")
        return str(found) if found is not None else name
    return str(resolve(name, "weights" if weights else "config"))


def tokenizer_source(name: Optional[str]) -> Optional[str]:
    """A tokenizer path or directory on disk as it is; a hub name's local directory."""
    if name is None or _on_disk(name) or not is_hub_name(name):
        return name
    return str(resolve(str(name), "tokenizer"))


def resolve_run_names(args) -> Dict[str, str]:
    """Resolve (and download) a run's hub names once, before its workers start, and record them
    in ``LLMPRE_HUB_PATHS`` for the workers; returns ``{name: directory}`` of those resolved."""
    resolved = _resolved_env()
    out = {}
    model = str(args.model_name_or_path)
    source = model_source(model, bool(args.continue_training))
    if source != model:
        resolved[f"{'weights' if args.continue_training else 'config'}:{model}"] = out[model] = source
    tok = args.tokenizer_name_or_path
    source = tokenizer_source(tok)
    if source != tok:
        resolved[f"tokenizer:{tok}"] = out[str(tok)] = source
    if out:
        os.environ[ENV] = json.dumps(resolved)
    return out
