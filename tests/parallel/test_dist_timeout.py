"""Waiting for the other ranks during the distributed setup: a generous,
configurable deadline, and an error that names the ranks that did not arrive
(instead of gloo's fixed 30 s ``TIMEOUT`` that names none)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from llmpre.errors import ConfigError, LlmpreError
from llmpre.parallel.env import (FAULT_ENV, TIMEOUT_ENV, ArrivalBoard, RendezvousError,
                                 distributed_timeout, open_store, worker_log)


class FakeStore:
    """Paddle TCPStore's ``add`` (a counter per key, created at 0 when read)."""

    def __init__(self, fail_after: int | None = None):
        self.values: dict = {}
        self.calls = 0
        self.fail_after = fail_after

    def add(self, key: str, n: int) -> int:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ValueError("(InvalidArgument) TCP connection reset by peer. Details: Success.")
        self.values[key] = self.values.get(key, 0) + n
        return self.values[key]

    def post(self, point: int, *ranks: int) -> None:
        for r in ranks:
            self.add(f"llmpre/arrive/{point}/{r}", 1)
            self.add(f"llmpre/arrive/{point}/count", 1)


class FakeTime:
    def __init__(self, on_sleep=None):
        self.now, self.sleeps, self.on_sleep = 0.0, 0, on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.sleeps += 1
        if self.on_sleep:
            self.on_sleep(self.sleeps)


@pytest.fixture
def launcher_env(monkeypatch):
    for key in ("PADDLE_LOG_DIR", "PADDLE_NNODES", "PADDLE_LOCAL_SIZE", TIMEOUT_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PADDLE_LOG_DIR", "/runs/x/launch_logs")
    return monkeypatch


def test_timeout_is_generous_by_default_and_configurable(launcher_env):
    assert distributed_timeout() == 1800            # torch's default
    launcher_env.setenv(TIMEOUT_ENV, "7.5")
    assert distributed_timeout() == 7.5             # the env var when the argument is unset
    assert distributed_timeout(60) == 60            # the argument wins
    with pytest.raises(ConfigError, match="distributed_timeout must be a positive"):
        distributed_timeout(0)
    launcher_env.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match=f"{TIMEOUT_ENV}='soon': must be a number"):
        distributed_timeout()


def test_board_names_the_rank_that_did_not_arrive(launcher_env):
    store, t = FakeStore(), FakeTime()
    store.post(1, 1, 3)                              # ranks 1 and 3 are there, 2 never comes
    board = ArrivalBoard(store, 0, 4, 5.0, clock=t.clock, sleep=t.sleep)
    with pytest.raises(RendezvousError) as e:
        board.arrive("the rendezvous")
    assert isinstance(e.value, LlmpreError)          # the CLI prints it as one line, exit 2
    assert str(e.value).startswith(
        "rank 2 of 4 did not arrive at the rendezvous within 5 s (the other 3 did); "
        "see /runs/x/launch_logs/workerlog.2. If it is only slow")
    assert "--distributed_timeout SECONDS or LLMPRE_DIST_TIMEOUT" in str(e.value)
    assert 5.0 <= t.now < 5.0 + 0.21                 # gave up at the deadline, not later


def test_board_waits_for_late_ranks_and_polls_cheaply(launcher_env):
    store, t = FakeStore(), FakeTime()

    def others_arrive_3s_late(_):
        if t.now >= 3.0 and not store.values.get("llmpre/arrive/1/1"):
            store.post(1, 1, 2)

    t.on_sleep = others_arrive_3s_late
    board = ArrivalBoard(store, 0, 3, 1800.0, clock=t.clock, sleep=t.sleep)
    board.arrive("the rendezvous")
    assert 3.0 <= t.now < 3.5 and t.sleeps < 30      # backoff: few polls, short delay after arrival
    store.post(2, 1, 2)
    calls = store.calls
    board.arrive("the process-group setup (tp group [0, 1, 2])")
    assert store.calls - calls == 2                  # everyone already there: post + count, no wait


def test_missing_rank_zero_waiting_for_connections_is_not_blamed(launcher_env):
    # rank 5 never connected to the store, so rank 0 is still inside Paddle's
    # store constructor and has not posted either: the missing one is rank 5
    store, t = FakeStore(), FakeTime()
    store.post(1, 1, 2, 3, 4, 6, 7)
    store.add("init/", 7)                            # Paddle's count of connected ranks
    board = ArrivalBoard(store, 3, 8, 30.0, clock=t.clock, sleep=t.sleep)
    with pytest.raises(RendezvousError, match=r"^rank 5 of 8 did not arrive at the rendezvous "
                       r"within 30 s \(rank 0 is still waiting for it to connect to the store; "
                       r"the other 6 arrived\); see /runs/x/launch_logs/workerlog.5\."):
        board.arrive("the rendezvous")


def test_several_missing_ranks_and_multi_node_logs(launcher_env):
    launcher_env.setenv("PADDLE_NNODES", "2")
    launcher_env.setenv("PADDLE_LOCAL_SIZE", "4")
    assert worker_log(6) == "/runs/x/launch_logs/workerlog.2 on node 1"
    store, t = FakeStore(), FakeTime()
    store.post(1, 1, 2, 4, 5, 7)
    store.add("init/", 8)
    board = ArrivalBoard(store, 1, 8, 10.0, clock=t.clock, sleep=t.sleep)
    with pytest.raises(RendezvousError, match=r"^ranks 0, 3, 6 of 8 did not arrive at x within 10 s "
                       r"\(the other 5 did\); see /runs/x/launch_logs/workerlog.0 on node 0, "
                       r".*workerlog.3 on node 0, .*workerlog.2 on node 1\. If they are only slow"):
        board.arrive("x")


def test_losing_the_store_names_rank_zero(launcher_env):
    store, t = FakeStore(fail_after=120), FakeTime()
    store.post(1, 2)
    board = ArrivalBoard(store, 1, 3, 1800.0, clock=t.clock, sleep=t.sleep)
    with pytest.raises(RendezvousError, match=r"rank 1 lost the rendezvous store \(hosted by rank 0\) "
                       r"while waiting at the rendezvous \(\(InvalidArgument\) TCP connection reset"
                       r".*launcher stopped it after another rank failed.*workerlog\.0\); "
                       r"ranks not arrived when last checked: 0$"):
        board.arrive("the rendezvous")
    assert t.now > 10                                # it had re-read the arrivals by then


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_absent_rank_zero_is_named_by_the_others(launcher_env):
    """Paddle's store client retries connecting forever; a rank other than 0
    first waits for the store's port with the deadline."""
    launcher_env.setenv("PADDLE_MASTER", f"127.0.0.1:{_free_port()}")
    start = time.monotonic()
    with pytest.raises(RendezvousError, match=r"^rank 0 of 2 did not arrive at the rendezvous "
                       r"\(nothing listens at 127\.0\.0\.1:\d+, the store rank 0 opens\) within 1 s "
                       r"\(the others are waiting for it\); see .*workerlog\.0\."):
        open_store(1, 2, 1.0, factory=lambda: pytest.fail("must not connect"))
    assert time.monotonic() - start < 5


def test_paddles_fixed_store_limit_becomes_one_message(launcher_env):
    """Rank 0's TCPStore waits for every rank to connect (900 s in Paddle's
    global store); its Fatal error is turned into a RendezvousError. Same C++
    path with a 1 s limit and a peer that never connects."""
    from paddle.base import core

    port = _free_port()
    with pytest.raises(RendezvousError, match="rank 0 of 2 waited 900 s .Paddle's fixed limit. for "
                       "every rank to connect to the rendezvous store, and some did not"):
        open_store(0, 2, 1800.0, factory=lambda: core.TCPStore("127.0.0.1", port, True, 2, 1))


# -- real ranks under paddle.distributed.launch ------------------------------------
WORKER = textwrap.dedent("""
    import sys
    from llmpre.errors import LlmpreError
    from llmpre.parallel.dims import ParallelDims
    from llmpre.parallel.env import init_parallel

    try:
        env = init_parallel(ParallelDims(tp=int(sys.argv[1]), pp=int(sys.argv[2])))
    except LlmpreError as e:
        print(f"error: {e}", flush=True)
        sys.exit(2)
    print(f"ready rank {env.rank} tp {env.tp.ranks} pp {env.pp.ranks} stores {len(env.stores)}",
          flush=True)
""")


def _launch(tmp_path, nproc: int, tp: int, pp: int, **env_extra) -> tuple[int, float, str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    logs = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env.update(OMP_NUM_THREADS="1", **env_extra)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node",
                             str(nproc), "--log_dir", str(logs), str(script), str(tp), str(pp)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)          # the launcher and every rank
        out, _ = proc.communicate()
        raise AssertionError(f"the launch did not end within 240 s:\n{out[-3000:]}")
    return proc.returncode, time.monotonic() - start, out


def _log(tmp_path, rank: int) -> str:
    return (tmp_path / "logs" / f"workerlog.{rank}").read_text(errors="replace")


def test_tp4_pp2_sets_up_on_eight_ranks(tmp_path):
    """The layout of the report (8 ranks on a 2-core machine). Before each gloo
    group had a store of its own, 5 of 5 such setups failed here on stale store
    keys ("136 vs 317", "Connection refused", or a gloo TIMEOUT)."""
    rc, _, out = _launch(tmp_path, 8, 4, 2, **{TIMEOUT_ENV: "600"})
    logs = {r: _log(tmp_path, r) for r in range(8)}
    assert rc == 0, out[-3000:] + logs[0][-3000:]
    assert "ready rank 0 tp [0, 1, 2, 3] pp [0, 4] stores 3" in logs[0]    # tp, pp and embedding groups
    assert "ready rank 7 tp [4, 5, 6, 7] pp [3, 7] stores 3" in logs[7]
    assert all("ready rank" in log for log in logs.values())


def test_stalled_rank_is_named_by_the_survivor(tmp_path):
    """Rank 1 connects, then does not arrive; rank 0 gives up after the 5 s set
    through LLMPRE_DIST_TIMEOUT with one line naming rank 1 and its log."""
    rc, seconds, out = _launch(tmp_path, 2, 2, 1, **{TIMEOUT_ENV: "5", FAULT_ENV: "1"})
    log0 = _log(tmp_path, 0)
    assert rc != 0, out[-3000:]
    want = (f"error: rank 1 of 2 did not arrive at the rendezvous within 5 s (the other rank did); "
            f"see {tmp_path / 'logs'}/workerlog.1. If it is only slow")
    assert want in log0, log0[-3000:]
    assert "] TIMEOUT" not in log0                   # no gloo error: nobody entered a collective
    assert f"{FAULT_ENV}=1: rank 1 does not arrive" in _log(tmp_path, 1)
    assert seconds < 60
