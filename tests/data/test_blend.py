"""Weighted blends: the data argument, PaddleNLP's BlendableDataset, caching, training."""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner

from llmpre._core import DataError
from llmpre.cli import main
from llmpre.data import BlendedDataset, GPTDataset, build_datasets, parse_data_spec
from llmpre.data.writer import write_corpus


@pytest.fixture()
def corpora(tmp_path):
    rs = np.random.RandomState(11)
    for name, vocab in (("a", 100), ("b", 5000), ("c", 300)):
        docs = [rs.randint(0, vocab, rs.randint(1, 90)) for _ in range(150)]
        write_corpus(tmp_path / name, docs, np.uint16)
    return tmp_path


def test_data_spec_rules(corpora):
    s = parse_data_spec(f"0.3 {corpora}/a 0.7 {corpora}/b")
    assert s.is_blend and s.prefixes == (f"{corpora}/a", f"{corpora}/b") and s.weights == (0.3, 0.7)
    d = parse_data_spec(str(corpora))  # a directory of several corpora: equal weights, by name
    assert d.prefixes == tuple(os.path.join(str(corpora), n) for n in "abc") and d.weights == (1.0,) * 3
    (corpora / "one").mkdir()
    write_corpus(corpora / "one" / "x", [np.arange(3)], np.uint16)
    assert parse_data_spec(str(corpora / "one")) == parse_data_spec(str(corpora / "one" / "x"))
    assert not parse_data_spec(f"{corpora}/a").is_blend
    for bad, match in ((f"0.3 {corpora}/a 0.7", "WEIGHT PREFIX pairs"),
                       (f"x {corpora}/a 1 {corpora}/b", "not a weight"),
                       (f"0 {corpora}/a 0 {corpora}/b", "sum to 0"),
                       (f"-1 {corpora}/a 2 {corpora}/b", ">= 0"),
                       (str(corpora / "empty"), "no corpus here")):
        with pytest.raises(DataError, match=match):
            parse_data_spec(bad)
    (corpora / "nothing").mkdir()
    with pytest.raises(DataError, match="holds no .idx"):
        parse_data_spec(str(corpora / "nothing"))


def test_blend_follows_paddlenlp(corpora):
    a, b = f"{corpora}/a", f"{corpora}/b"
    n = [600, 40, 0]
    ds = build_datasets(f"0.3 {a} 0.7 {b}", "90,10,0", n, 32, 1234, use_cache=False)
    train = ds["train"]
    assert isinstance(train, BlendedDataset) and ds["test"] is None and len(train) == 600
    counts = [[math.ceil(x * w * 1.005) + 20 for x in n] for w in (0.3, 0.7)]
    assert [c.num_samples for c in train.datasets] == [counts[0][0], counts[1][0]]
    # each child is the single-corpus dataset PaddleNLP builds with that count
    alone = build_datasets(a, "90,10,0", counts[0], 32, 1234, use_cache=False)["train"]
    assert isinstance(alone, GPTDataset) and alone.desc == train.datasets[0].desc
    # the greedy rule's proportions, and sample i is child sample dataset_sample_index[i]
    di = np.asarray(train.dataset_index)
    assert np.bincount(di).tolist() == [180, 420]
    idx = np.array([0, 1, 2, 250, 599])
    got = train.gather(idx)
    for row, i in zip(got, idx):
        child = train.datasets[int(train.dataset_index[i])]
        assert np.array_equal(row, child[int(train.dataset_sample_index[i])])
    assert np.array_equal(train.dataset_of([0, 1, 2]), di[:3])
    # PaddleNLP's description text (what the cache name hashes)
    want = ("Blendable dataset\n\nDatasets:\n" + train.datasets[0].desc + "\n\n" +
            train.datasets[1].desc + "\n\n" + "Weights: [0.3 0.7]\nSize: 600\n")
    assert train.desc == want and train.desc_hash == hashlib.md5(want.encode()).hexdigest()
    with pytest.raises(IndexError):
        train.gather([600])


def test_blend_cache_names_and_reuse(corpora):
    spec = f"1 {corpora}/a 1 {corpora}/b 2 {corpora}/c"
    cache = corpora / "cache"
    first = build_datasets(spec, "1", [300, 0, 0], 16, 5, data_cache=str(cache))["train"]
    h = first.desc_hash
    assert first.cache_files == {"desc": f"{cache}/{h}.dsc", "index": f"{cache}/{h}_index.npy",
                                 "sample_index": f"{cache}/{h}_sample_index.npy"}
    assert "Weights: [0.25 0.25 0.5 ]" in open(first.cache_files["desc"]).read()
    assert np.load(first.cache_files["index"]).dtype == np.int16
    again = build_datasets(spec, "1", [300, 0, 0], 16, 5, data_cache=str(cache))["train"]
    assert again.loaded_from_cache and not first.loaded_from_cache
    assert np.array_equal(again.gather(np.arange(300)), first.gather(np.arange(300)))
    assert not [n for n in os.listdir(cache) if n.endswith(".lock") or n.startswith(".tmp")]
    # a cache that belongs to other data is refused, not trusted
    np.save(first.cache_files["sample_index"], np.full(300, 10**6, np.int64))
    with pytest.raises(DataError, match="does not belong"):
        build_datasets(spec, "1", [300, 0, 0], 16, 5, data_cache=str(cache))


def test_blend_needs_the_split_in_every_corpus(corpora):
    write_corpus(corpora / "tiny", [np.arange(40)], np.uint16)  # one item: valid split empty
    with pytest.raises(DataError, match="valid split empty in .*tiny"):
        build_datasets(f"1 {corpora}/a 1 {corpora}/tiny", "90,10,0", [10, 10, 0], 8, 1, use_cache=False)


def test_fingerprint_cli_accepts_a_weighted_list(corpora):
    spec = f"0.4 {corpora}/a 0.6 {corpora}/c"
    r = CliRunner().invoke(main, ["data", "fingerprint", spec, "--split", "1", "--seq-length", "16",
                                  "--num-samples", "200,0,0", "--no-cache"])
    assert r.exit_code == 0, r.output
    fp = json.loads(r.output)["train"]
    assert fp["len"] == 200 and fp["samples_per_dataset"] == [80, 120] and fp["weights"] == [0.4, 0.6]
    again = CliRunner().invoke(main, ["data", "fingerprint", spec, "--split", "1", "--seq-length", "16",
                                      "--num-samples", "200,0,0"])
    assert json.loads(again.output)["train"]["sha256_all"] == fp["sha256_all"]  # cached == in memory


def test_training_accepts_blends_and_checks_every_vocabulary(corpora, tmp_path):
    from llmpre.train.args import parse_arguments
    from llmpre.train.data import TrainData

    def args(**kw):
        values = {"model": "llama-tiny", "max_seq_length": "16", "per_device_train_batch_size": "2",
                  "max_steps": "5", "do_eval": "true", "eval_steps": "5", "eval_iters": "1",
                  "split": "90,10,0", "output_dir": str(tmp_path / "run"), **kw}
        return parse_arguments(None, values)

    data = TrainData(args(input_dir=f"0.5 {corpora}/a 0.5 {corpora}/c"), vocab_size=512)
    assert isinstance(data.datasets["train"], BlendedDataset) and len(data.datasets["train"]) == 10
    assert data.train.batch(0).shape == (2, 17)
    with pytest.raises(Exception, match=rf"corpus {corpora}/b holds token id \d+, but the model's vocabulary has 512"):
        TrainData(args(input_dir=str(corpora)), vocab_size=512)  # the directory: a, b, c
