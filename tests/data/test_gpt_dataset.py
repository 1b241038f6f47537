"""GPTDataset against the samples PaddleNLP itself drew (fixtures/megatron_data)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from conftest import MEGATRON, needs
from llmpre import _core
from llmpre.data import build_gpt_datasets
from llmpre.data.fingerprint import fingerprint, hash_samples

pytestmark = needs(MEGATRON / "expected.json")
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def expected():
    return json.loads((MEGATRON / "expected.json").read_text())


@pytest.fixture()
def corpus_dir(tmp_path, monkeypatch):
    """A writable copy of the reference corpora; cwd is set there because PaddleNLP
    was run from the corpus folder with the bare prefix 'corpus_u16'."""
    for f in MEGATRON.iterdir():
        if f.suffix in (".bin", ".idx", ".npy", ".npz"):
            shutil.copy(f, tmp_path / f.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def build(params):
    return build_gpt_datasets("corpus_u16", params["splits_string"],
                              params["train_val_test_num_samples"], params["seq_length"],
                              params["seed"])


def test_index_arrays_and_samples_match_paddlenlp(corpus_dir, expected):
    params = expected["gpt_dataset_params"]
    datasets = build(params)
    for name in SPLITS:
        e, ds = expected["gpt_dataset"]["corpus_u16"][name], datasets[name]
        assert [ds.begin, ds.end] == e["documents_range"]
        assert ds.tokens_per_epoch == e["tokens_per_epoch"]
        assert ds.num_epochs == e["num_epochs"]
        assert ds.separate_last_epoch == e["separate_last_epoch"]
        assert ds.samples_from_epochs_minus_one == e["num_samples_from_epochs_minus_one"]
        assert len(ds) == e["len_dataset"]
        for key in ("doc_idx", "sample_idx", "shuffle_idx"):
            arr = getattr(ds, key)
            assert str(arr.dtype) == e[key]["dtype"], (name, key)
            assert list(arr.shape) == e[key]["shape"], (name, key)
            assert sha(arr) == e[key]["sha256"], (name, key)
        assert ds.doc_idx[:16].tolist() == e["doc_idx"]["first16"]
        assert ds.sample_idx[:8].tolist() == e["sample_idx"]["first8"]
        assert ds.sample_idx[-2:].tolist() == e["sample_idx"]["last2"]
        assert ds.shuffle_idx[:16].tolist() == e["shuffle_idx"]["first16"]
        first = ds.gather(np.arange(len(e["first_samples"])))
        assert first.tolist() == e["first_samples"]
        assert ds[len(ds) - 1].tolist() == e["last_sample"]
        assert hash_samples(ds, len(ds)) == e["samples_sha256_all_len_dataset_int64le"]
        assert hash_samples(ds, e["num_samples_requested"]) == \
            e["samples_sha256_first_num_samples_requested_int64le"]


def test_cache_files_have_paddlenlp_names_and_bytes(corpus_dir, expected):
    params = expected["gpt_dataset_params"]
    datasets = build(params)
    for name in SPLITS:
        e, ds = expected["gpt_dataset"]["corpus_u16"][name], datasets[name]
        assert ds.desc == e["desc"]
        assert ds.desc_hash == e["desc_md5"]
        assert not ds.loaded_from_cache
        files = e["cache_files"]
        for key, fname in (("desc", files["desc"]), ("doc_idx", files["doc_idx"]),
                           ("sample_idx", files["sample_idx"]),
                           ("shuffle_idx", files["shuffle_idx"])):
            assert ds.cache_files[key] == os.path.join(files["dir"], fname)
        for key, short in (("doc_idx", "doc"), ("sample_idx", "sample"), ("shuffle_idx", "shuffle")):
            data = open(ds.cache_files[key], "rb").read()
            assert hashlib.sha256(data).hexdigest() == e["cache_file_sha256"][short], (name, key)
        assert open(ds.cache_files["desc"]).read() == e["desc"]


def test_cache_is_reused_and_checked(corpus_dir, expected):
    params = expected["gpt_dataset_params"]
    first = build(params)
    second = build(params)
    for name in SPLITS:
        assert second[name].loaded_from_cache
        assert np.array_equal(np.asarray(second[name].shuffle_idx), first[name].shuffle_idx)
    # A cache whose arrays do not fit the corpus is refused with the fix in the message.
    bad = second["train"].cache_files["shuffle_idx"]
    np.save(bad, np.arange(10, dtype=np.uint32), allow_pickle=True)
    with pytest.raises(_core.DataError, match="delete the"):
        build(params)


def test_data_cache_directory_is_used_when_given(corpus_dir, expected, tmp_path_factory):
    params = expected["gpt_dataset_params"]
    cache = tmp_path_factory.mktemp("cache")
    ds = build_gpt_datasets("corpus_u16", "949,50,1", [100, 10, 0], 64, 7, data_cache=str(cache))
    assert os.path.dirname(ds["train"].cache_files["doc_idx"]) == str(cache)
    assert not (corpus_dir / "index-cache").exists()


def test_legacy_npy_npz_format(corpus_dir, expected):
    e = expected["old_format_tiny"]
    datasets = build_gpt_datasets("tiny_old", e["split"], e["train_val_test_num_samples"],
                                  e["seq_length"], e["seed"])
    assert datasets["test"] is None and e["test"] is None
    for name in ("train", "valid"):
        ds, x = datasets[name], e[name]
        assert [ds.begin, ds.end] == x["documents_range"]
        assert ds.num_epochs == x["num_epochs"]
        assert ds.separate_last_epoch == x["separate_last_epoch"]
        assert ds.tokens_per_epoch == x["tokens_per_epoch"]
        assert len(ds) == x["len_dataset"]
        assert ds.desc_hash == x["desc_md5_for_prefix_tiny_old"]
        assert ds.gather(np.arange(len(x["first_samples"]))).tolist() == x["first_samples"]
        assert hash_samples(ds, len(ds)) == x["samples_sha256_all_len_dataset_int64le"]


def test_mmap_and_legacy_layouts_give_the_same_samples(corpus_dir):
    a = build_gpt_datasets("tiny_mmap_u16", "1", [50, 0, 0], 16, 3, use_cache=False)["train"]
    b = build_gpt_datasets("tiny_old", "1", [50, 0, 0], 16, 3, use_cache=False)["train"]
    assert np.array_equal(a.gather(np.arange(len(a))), b.gather(np.arange(len(b))))


def test_fingerprint_matches_expected_hashes(corpus_dir, expected):
    params = expected["gpt_dataset_params"]
    fp = fingerprint("corpus_u16", "949,50,1", params["seq_length"], params["seed"],
                     params["train_val_test_num_samples"], use_cache=False)
    for name in SPLITS:
        e = expected["gpt_dataset"]["corpus_u16"][name]
        assert fp[name] == {
            "num_epochs": e["num_epochs"],
            "separate_last_epoch": e["separate_last_epoch"],
            "len": e["len_dataset"],
            "sha256_all": e["samples_sha256_all_len_dataset_int64le"],
            "sha256_requested": e["samples_sha256_first_num_samples_requested_int64le"],
        }
    assert not (corpus_dir / "index-cache").exists()  # --no-cache writes nothing
