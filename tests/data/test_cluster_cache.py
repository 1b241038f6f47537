"""Index caches shared by many ranks: one builder, the others wait, nothing partial
is ever trusted. Ranks are separate processes with the variables
paddle.distributed.launch sets (PADDLE_TRAINER_ID, PADDLE_RANK_IN_NODE)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from llmpre._core import DataError
from llmpre.data import BuildPolicy, RankInfo, build_datasets, build_gpt_datasets
from llmpre.data.writer import write_corpus

WORKER = Path(__file__).parent / "_cache_worker.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    rs = np.random.RandomState(5)
    write_corpus(d / "corpus", [rs.randint(0, 1000, rs.randint(1, 60)) for _ in range(20000)], np.uint16)
    return d


def launch(corpus, cache, ranks, share=False, delays=None):
    """Start one process per (global, local) rank; return their JSON results and stderr."""
    procs = []
    for k, (g, l) in enumerate(ranks):
        env = {**os.environ, "PADDLE_TRAINER_ID": str(g), "PADDLE_RANK_IN_NODE": str(l),
               "OMP_NUM_THREADS": "1", "LLMPRE_INDEX_WAIT_TIMEOUT": "120"}
        delay = (delays or {}).get(k, 0.0)
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(corpus / "corpus"), str(cache), str(delay),
             "1" if share else "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        out.append((json.loads(stdout.strip().splitlines()[-1]), stderr))
    return out


def test_local_rank_zero_builds_the_others_wait(corpus, tmp_path):
    res = launch(corpus, tmp_path / "c1", [(0, 0), (1, 1), (2, 2), (3, 3)], delays={0: 2.0})
    assert [r["built"] for r, _ in res] == [True, False, False, False]
    assert len({r["sha"] for r, _ in res}) == 1
    for _, err in res[1:]:
        assert "waiting for local rank 0 of this node to build the train index" in err


def test_two_nodes_on_one_filesystem_build_once(corpus, tmp_path):
    """Without share_folder each node's local rank 0 builds; on a shared disk the lock
    makes the second one find the first one's files."""
    res = launch(corpus, tmp_path / "c2", [(0, 0), (1, 1), (2, 0), (3, 1)])
    assert sum(r["built"] for r, _ in res) == 1
    assert not res[1][0]["built"] and not res[3][0]["built"]
    assert len({r["sha"] for r, _ in res}) == 1
    assert not [n for n in os.listdir(tmp_path / "c2") if n.endswith(".lock") or n.startswith(".tmp")]


def test_share_folder_only_global_rank_zero_builds(corpus, tmp_path):
    res = launch(corpus, tmp_path / "c3", [(0, 0), (1, 0), (2, 0)], share=True, delays={0: 1.5})
    assert [r["built"] for r, _ in res] == [True, False, False]
    assert "waiting for global rank 0 (share_folder)" in res[1][1]


def test_waiting_rank_times_out_with_a_clear_error(corpus, tmp_path):
    policy = BuildPolicy(rank=RankInfo(global_rank=1, local_rank=1), timeout=0.5, poll=0.05)
    with pytest.raises(DataError, match=r"waited \ds for local rank 0 .* never appeared"):
        build_gpt_datasets(str(corpus / "corpus"), "1", [100, 0, 0], 8, 1,
                           data_cache=str(tmp_path / "c4"), policy=policy)


def test_crash_debris_is_never_trusted(corpus, tmp_path):
    cache = tmp_path / "c5"
    prefix = str(corpus / "corpus")
    ref = build_gpt_datasets(prefix, "1", [1000, 0, 0], 8, 3, use_cache=False)["train"]
    target = build_gpt_datasets(prefix, "1", [1000, 0, 0], 8, 3, data_cache=str(cache))["train"].cache_files
    # What a builder killed half-way leaves: some files missing, a temp file, its lock file.
    os.unlink(target["desc"])
    os.unlink(target["shuffle_idx"])
    open(os.path.join(cache, ".tmp-123-x_shuffle_idx.npy"), "wb").write(b"\x93NUMPY partial")
    open(target["desc"][:-4] + ".lock", "w").write("node pid 1\n")
    ds = build_gpt_datasets(prefix, "1", [1000, 0, 0], 8, 3, data_cache=str(cache))["train"]
    assert not ds.loaded_from_cache  # rebuilt, not trusted
    for key in ("doc_idx", "sample_idx", "shuffle_idx"):
        assert np.array_equal(getattr(ds, key), getattr(ref, key))
        assert np.array_equal(np.load(target[key]), getattr(ref, key))


def test_builder_waits_for_a_held_lock(corpus, tmp_path, capsys):
    cache = tmp_path / "c6"
    prefix = str(corpus / "corpus")
    probe = build_gpt_datasets(prefix, "1", [500, 0, 0], 8, 9, use_cache=False)["train"]
    os.makedirs(cache)
    fd = os.open(os.path.join(cache, probe.desc_hash + ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def release():
        time.sleep(1.0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    t = threading.Thread(target=release)
    t.start()
    policy = BuildPolicy(rank=RankInfo(0, 0), timeout=30, poll=0.05)
    ds = build_gpt_datasets(prefix, "1", [500, 0, 0], 8, 9, data_cache=str(cache), policy=policy)["train"]
    t.join()
    assert not ds.loaded_from_cache and "waiting for the lock" in capsys.readouterr().err
    assert np.array_equal(ds.shuffle_idx, probe.shuffle_idx)


def test_blend_cache_uses_the_same_rules(corpus, tmp_path):
    write_corpus(tmp_path / "other", [np.arange(30)] * 50, np.uint16)
    spec = f"1 {corpus}/corpus 1 {tmp_path}/other"
    policy = BuildPolicy(rank=RankInfo(1, 1), timeout=0.3, poll=0.05)
    with pytest.raises(DataError, match="never appeared"):
        build_datasets(spec, "1", [100, 0, 0], 8, 1, data_cache=str(tmp_path / "c7"), policy=policy)
    built = build_datasets(spec, "1", [100, 0, 0], 8, 1, data_cache=str(tmp_path / "c7"))["train"]
    waited = build_datasets(spec, "1", [100, 0, 0], 8, 1, data_cache=str(tmp_path / "c7"), policy=policy)["train"]
    assert waited.loaded_from_cache and np.array_equal(waited.gather(range(100)), built.gather(range(100)))
