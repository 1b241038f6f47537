"""Hub names resolve from the local Hugging Face and PaddleNLP caches, else are downloaded
(here from a loopback stand-in for the hub's endpoints, through ``HF_ENDPOINT``), else are one
error naming every place searched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from llmpre.errors import ConfigError
from llmpre.models import hub

ASSET = Path(__file__).resolve().parents[1] / "assets" / "paddlenlp_checkpoint"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ENV_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "PPNLP_HOME",
            "AISTUDIO_HUB_CACHE", "AISTUDIO_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
            "PADDLE_TRAINER_ID", hub.ENV)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Every cache location under tmp_path/home (nothing of this machine's is seen), offline
    unless a test serves a hub."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "home"


def hf_snapshot(cache: Path, repo: str, files: dict, ref: str = "main", commit: str = COMMIT) -> Path:
    """A hub-layout cache entry: refs/<ref> -> snapshots/<commit>/ holding ``files``."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    if ref:
        (folder / "refs").mkdir()
        (folder / "refs" / ref).write_text(commit)
    return snap


WEIGHTS = {"config.json": b"{}", "model.safetensors": b"x"}


def test_hub_name_shapes():
    for name in ("meta-llama/Llama-2-7b", "qwen/qwen-7b", "gpt2", "Qwen/Qwen2.5-0.5B"):
        assert hub.is_hub_name(name), name
    for name in ("./model", "/abs/model", "~/model", "a/b/c", "org/x--y", "../up", "args.json", "", "a b"):
        assert not hub.is_hub_name(name), name


@pytest.mark.parametrize("where", ["HF_HOME", "HF_HUB_CACHE", "default"])
def test_hf_cache(home, monkeypatch, where):
    cache = {"HF_HOME": home / "hfhome" / "hub", "HF_HUB_CACHE": home / "elsewhere",
             "default": home / ".cache" / "huggingface" / "hub"}[where]
    if where == "HF_HOME":
        monkeypatch.setenv("HF_HOME", str(home / "hfhome"))
    elif where == "HF_HUB_CACHE":
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snap = hf_snapshot(cache, "acme/tiny", WEIGHTS)
    assert hub.resolve("acme/tiny", "weights") == snap
    assert hub.resolve("acme/tiny", "config") == snap


def test_hf_cache_follows_refs_main_and_needs_the_whole_checkpoint(home):
    cache = home / ".cache" / "huggingface" / "hub"
    old = hf_snapshot(cache, "acme/tiny", WEIGHTS, commit="a" * 40)
    index = {"weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}
    new = hf_snapshot(cache, "acme/tiny2", {"config.json": b"{}",
                                            "model.safetensors.index.json": json.dumps(index).encode(),
                                            "model-00001-of-00002.safetensors": b"x"})
    assert hub.resolve("acme/tiny", "weights") == old          # refs/main
    with pytest.raises(ConfigError, match=r"no model-00002-of-00002.safetensors"):
        hub.resolve("acme/tiny2", "weights")                     # a shard is missing
    assert hub.resolve("acme/tiny2", "config") == new            # the config alone is there


def test_paddlenlp_caches(home, monkeypatch):
    monkeypatch.setenv("PPNLP_HOME", str(home / "pnlp"))
    flat = home / "pnlp" / "models" / "qwen" / "qwen-7b"      # PaddleNLP's own download layout
    flat.mkdir(parents=True)
    (flat / "config.json").write_text("{}")
    (flat / "model_state.pdparams").write_bytes(b"x")
    assert hub.resolve("qwen/qwen-7b", "weights") == flat
    # from_hf_hub downloads: the hub layout under PPNLP_HOME/models
    snap = hf_snapshot(home / "pnlp" / "models", "acme/hf-via-paddlenlp", WEIGHTS)
    assert hub.resolve("acme/hf-via-paddlenlp", "weights") == snap
    # AI Studio: refs/master
    monkeypatch.setenv("AISTUDIO_HUB_CACHE", str(home / "ais"))
    snap = hf_snapshot(home / "ais", "acme/studio", WEIGHTS, ref="master")
    assert hub.resolve("acme/studio", "weights") == snap
    # a bare name PaddleNLP downloaded
    bare = home / "pnlp" / "models" / "gpt2-medium-en"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    assert hub.resolve("gpt2-medium-en", "config") == bare


def test_the_error_lists_every_place_and_the_way_to_provide_the_files(home, monkeypatch):
    monkeypatch.setenv("PPNLP_HOME", str(home / "pnlp"))
    tok = home / "pnlp" / "models" / "meta-llama" / "Llama-2-7b"
    tok.mkdir(parents=True)
    (tok / "tokenizer.model").write_bytes(b"sentencepiece")      # PaddleNLP's Llama tokenizer: no tokenizer.json
    with pytest.raises(ConfigError) as e:
        hub.resolve("meta-llama/Llama-2-7b", "tokenizer")
    msg = str(e.value)
    cache = home / ".cache" / "huggingface" / "hub" / "models--meta-llama--Llama-2-7b"
    assert msg.startswith("'meta-llama/Llama-2-7b' is not a directory here and its tokenizer.json could not be found.")
    assert f"Hugging Face cache {cache}: absent" in msg
    assert f"PaddleNLP model cache {tok}: no tokenizer.json" in msg
    assert f"PaddleNLP's Hugging Face cache {home / 'pnlp' / 'models' / 'models--meta-llama--Llama-2-7b'}: absent" in msg
    assert f"AI Studio cache {home / '.cache' / 'paddle' / 'aistudio' / 'models--meta-llama--Llama-2-7b'}: absent" in msg
    assert "download from the hub: not tried (HF_HUB_OFFLINE is set)" in msg
    assert "huggingface-cli download meta-llama/Llama-2-7b --include tokenizer.json" in msg


class FakeHub:
    """The hub endpoints huggingface_hub 2.4's snapshot_download calls, on loopback:
    ``GET /api/models/<repo>/revision/<rev>`` (the commit), ``GET /api/models/<repo>/tree/<commit>``
    (the file list), ``HEAD`` and ``GET /<repo>/resolve/<commit>/<file>`` (X-Repo-Commit, ETag,
    Content-Length, then the bytes). Unknown repositories answer 404 RepoNotFound."""

    def __init__(self, repos: dict):
        self.repos, self.requests = repos, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                fake.answer(self, head=True)

            def do_GET(self):
                fake.answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def send(h, code: int, body: bytes, headers: dict, head: bool):
        h.send_response(code)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def answer(self, h, head: bool):
        path = unquote(urlparse(h.path).path)
        self.requests.append(f"{h.command} {path}")
        for repo, files in self.repos.items():
            if path in (f"/api/models/{repo}/revision/main", f"/api/models/{repo}/revision/{COMMIT}"):
                body = json.dumps({"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]})
                return self.send(h, 200, body.encode(), {"Content-Type": "application/json"}, head)
            if path == f"/api/models/{repo}/tree/{COMMIT}":
                body = json.dumps([{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                   for f, b in files.items()])
                return self.send(h, 200, body.encode(), {"Content-Type": "application/json"}, head)
            if path.startswith(f"/{repo}/resolve/{COMMIT}/") and path.rsplit("/", 1)[1] in files:
                data = files[path.rsplit("/", 1)[1]]
                return self.send(h, 200, data, {"X-Repo-Commit": COMMIT,
                                                "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, head)
        self.send(h, 404, b'{"error": "Repository not found"}',
                  {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, head)


def test_download_fetches_only_what_is_needed_once(home, monkeypatch):
    files = {"config.json": b'{"a": 1}', "model.safetensors": b"w" * 64, "README.md": b"readme",
             "pytorch_model.bin": b"torch", "tokenizer.json": b"{}"}
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with FakeHub({"acme/tiny": files}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        path = hub.resolve("acme/tiny", "weights")
    assert path == home / ".cache" / "huggingface" / "hub" / "models--acme--tiny" / "snapshots" / COMMIT
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    assert (path / "model.safetensors").read_bytes() == files["model.safetensors"]
    fetched = [r for r in fake.requests if "/resolve/" in r]
    assert not [r for r in fetched if r.endswith(("README.md", "pytorch_model.bin", "tokenizer.json"))]
    # the server is gone: the cache answers, with no network
    assert hub.resolve("acme/tiny", "weights") == path


def test_a_failed_download_is_one_error(home, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with FakeHub({}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        with pytest.raises(ConfigError) as e:
            hub.resolve("acme/missing", "config")
    msg = str(e.value)
    assert f"download from {fake.url}: failed (RepositoryNotFoundError: 404 Client Error." in msg
    assert "Hugging Face cache" in msg and "AI Studio cache" in msg and "To provide them:" in msg


def test_workers_use_what_the_launcher_resolved(home, monkeypatch, tmp_path):
    from llmpre.train.args import parse_arguments

    snap = hf_snapshot(home / ".cache" / "huggingface" / "hub", "acme/tiny",
                       {**WEIGHTS, "tokenizer.json": b"{}"})
    args = parse_arguments(None, {"model": "acme/tiny", "continue_training": "true",
                                  "tokenizer_name_or_path": "acme/tiny", "output_dir": str(tmp_path / "o")})
    assert hub.resolve_run_names(args) == {"acme/tiny": str(snap)}
    assert json.loads(os.environ[hub.ENV]) == {"weights:acme/tiny": str(snap), "tokenizer:acme/tiny": str(snap)}
    # a worker: the caches are gone from its view, the launcher's answer is not
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    assert hub.model_source("acme/tiny", weights=True) == str(snap)
    assert hub.tokenizer_source("acme/tiny") == str(snap)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ConfigError, match="not tried in a worker of a parallel launch"):
        hub.resolve("acme/other", "config")


def test_presets_and_paths_are_not_hub_names(home, tmp_path):
    assert hub.model_source("llama-tiny", weights=False) == "llama-tiny"
    assert hub.model_source("qwen/qwen-7b", weights=False) == "qwen/qwen-7b"    # llmpre's preset table
    assert hub.model_source(str(tmp_path), weights=True) == str(tmp_path)
    assert hub.tokenizer_source(None) is None


def _tiny_checkpoint(directory: Path) -> None:
    """A tiny Llama in HF layout (vocab 512) and a tokenizer.json, as a hub repository holds them."""
    from llmpre.models import build_model, get_config, save_pretrained

    save_pretrained(build_model(get_config(str(ASSET / "model" / "config.json")), seed=3), directory)
    shutil.copy(ASSET / "tokenizer" / "tokenizer.json", directory / "tokenizer.json")


def test_llmpre_train_downloads_a_hub_name_once_and_trains(home, tmp_path):
    repo = tmp_path / "repo"
    _tiny_checkpoint(repo)
    files = {p.name: p.read_bytes() for p in repo.iterdir()}
    shutil.copytree(ASSET / "data", tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "llmpre.cli", "train", "--model", "acme/tiny-llama", "--continue_training", "true",
           "--tokenizer_name_or_path", "acme/tiny-llama", "--input_dir", str(tmp_path / "data"),
           "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--max_seq_length", "32",
           "--per_device_train_batch_size", "1", "--num_threads", "1", "--disable_tqdm", "true"]
    with FakeHub({"acme/tiny-llama": files}) as fake:
        r = subprocess.run(cmd, env={**env, "HF_ENDPOINT": fake.url}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    snap = home / ".cache" / "huggingface" / "hub" / "models--acme--tiny-llama" / "snapshots" / COMMIT
    assert sorted(os.listdir(snap)) == sorted(files)     # the weights, and the tokenizer's files
    got = [r.rsplit("/", 1)[1] for r in fake.requests if r.startswith("GET") and "/resolve/" in r]
    assert sorted(got) == sorted(files)                  # each file fetched once
    assert "global_step: 1" in r.stdout
    # offline now: the same command is served by the cache
    again = [str(tmp_path / "out2") if a == str(tmp_path / "out") else a for a in cmd]
    r = subprocess.run(again, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # the hub tokenizer's files are saved beside the final weights
    assert (tmp_path / "out2" / "tokenizer.json").read_bytes() == files["tokenizer.json"]


def test_a_misspelt_preset_name_gets_the_close_names(home):
    with pytest.raises(ConfigError, match="did you mean meta-llama/Llama-2-7b"):
        hub.resolve("meta-llama/Llama-2-7x", "config")


def test_plan_reads_a_hub_names_config_from_the_cache(home):
    """`llmpre plan --model org/name` plans the cached model (its config.json), as training does."""
    from llmpre.plan.args import parse_plan_arguments

    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_hidden_layers": 3, "vocab_size": 512, "max_position_embeddings": 256,
              "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
    hf_snapshot(home / ".cache" / "huggingface" / "hub", "acme/planned",
                {"config.json": json.dumps(config).encode()})
    settings, _ = parse_plan_arguments(None, {"model": "acme/planned", "seq_length": "128", "micro_batch": "1"})
    assert settings.model.num_hidden_layers == 3 and settings.model.hidden_size == 64
    assert settings.model_name == "acme/planned"
