"""Start the distributed environment and build every process group of a layout.

Every rank creates every group (Paddle requires all ranks to take part in each
``new_group`` call, including groups they are not in) in one fixed order, and
no rank starts the next group before every rank has finished the previous one.
On gloo each group's members connect through a TCPStore of the group's own
(see :func:`_new_group`): Paddle's gloo process group reuses the same store
keys for every group, and a member that read a peer's key from an earlier
group failed the setup (tp4 x pp2 on 8 ranks: 5 of 5 runs). Nothing is retried.

Waiting for the other ranks (rendezvous and group setup)
--------------------------------------------------------
Paddle gives these waits no usable deadline: a gloo collective such as
``barrier`` fails after gloo's fixed 30 s (measured; Paddle 3.3.1 passes no
timeout to gloo) with an error that names no rank, while the store operations
inside ``init_parallel_env`` / ``new_group`` wait forever. A slow rank on a
loaded machine (8 ranks on 2 cores) therefore broke the setup.

So every wait here is an :class:`ArrivalBoard` on the TCPStore that
``paddle.distributed.launch`` / ``init_parallel_env`` already use: each rank
posts its arrival at a named point under ``llmpre/arrive/``, then polls the
arrival count until all ranks are there. The deadline is ``distributed_timeout``
(default 1800 s, torch's default; ``LLMPRE_DIST_TIMEOUT`` when the argument is
not given), and on expiry the board reads which ranks posted, so the error
names the ranks that did not arrive and where their logs are. The happy path
costs two store round trips per point plus short polls. A gloo collective runs
only after every rank is known to be there; ``ParallelEnv.barrier`` (the
checkpoint barriers) waits on the board first too. On NCCL the same value also
becomes ``PADDLE_PG_TIMEOUT`` (Paddle's per-collective timeout) unless it is set.

One wait stays Paddle's: the TCPStore on rank 0 waits for every rank to
*connect* at most 900 s (a default fixed in Paddle's C++, not configurable),
holding the GIL. The other ranks, which would retry connecting forever while
rank 0 is absent, first check for the store's port with a deadline here.

Fault injection for tests: ``LLMPRE_FAULT_SKIP_RENDEZVOUS_RANK=<rank>`` makes
that rank connect to the store and then not post its arrival at the rendezvous
(it sleeps for twice the timeout plus 30 s), as a stalled rank would.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field

from llmpre.errors import ConfigError, LlmpreError
from llmpre.parallel.comm import Group
from llmpre.parallel.dims import ParallelDims

logger = logging.getLogger("llmpre")

AXES = ("tp", "pp", "sharding", "dp", "data", "seq")   # seq: sep x cp (parallel.context)
EP_AXES = ("ep", "expert_data")   # built only when expert_parallel_degree > 1 (dims module doc)

DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_ENV = "LLMPRE_DIST_TIMEOUT"
FAULT_ENV = "LLMPRE_FAULT_SKIP_RENDEZVOUS_RANK"
PADDLE_STORE_CONNECT_LIMIT_S = 900   # TCPStore(..., timeout = 900) in Paddle's tcp_store.h
POLL_MAX_S = 0.2                     # longest sleep between two polls of the arrival count
REFRESH_S = 10.0                     # how often a long wait re-reads who has arrived
# What Paddle's C++ store errors arrive as in Python (InvalidArgument -> ValueError,
# Fatal -> SystemError, ...), e.g. "TCP connection reset by peer" when rank 0 is gone.
STORE_ERRORS = (ValueError, RuntimeError, SystemError, OSError)


class RendezvousError(LlmpreError):
    """Ranks did not all reach a point of the distributed setup within the timeout."""


def distributed_timeout(value: float | None = None) -> float:
    """Seconds to wait for the other ranks: ``value`` (the ``distributed_timeout``
    argument) if given, else ``LLMPRE_DIST_TIMEOUT``, else 1800."""
    where = "distributed_timeout"
    if value is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_TIMEOUT_S
        where = TIMEOUT_ENV
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: must be a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"{where} must be a positive number of seconds, got {value}")
    return float(value)


def worker_log(rank: int) -> str:
    """Where ``paddle.distributed.launch`` writes global rank ``rank``'s output."""
    log_dir = os.environ.get("PADDLE_LOG_DIR")
    if not log_dir:
        return f"the worker log of rank {rank}"
    nnodes = int(os.environ.get("PADDLE_NNODES", "1") or 1)
    local = int(os.environ.get("PADDLE_LOCAL_SIZE", "0") or 0)
    if nnodes > 1 and local > 0:   # llmpre starts the same number of ranks on every node
        return f"{log_dir}/workerlog.{rank % local} on node {rank // local}"
    return f"{log_dir}/workerlog.{rank}"


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def missing_message(missing: list[int], world: int, what: str, timeout_s: float,
                    note: str = "") -> str:
    """The one-line error for ranks that did not arrive at ``what`` in time."""
    others = world - len(missing)
    did = "the other rank did" if others == 1 else f"the other {others} did"
    return (f"{_ranks(missing)} of {world} did not arrive at {what} within {timeout_s:.0f} s "
            f"({note or did}); see {', '.join(worker_log(r) for r in missing)}. If "
            f"{'it is' if len(missing) == 1 else 'they are'} only slow (a loaded machine), "
            f"raise distributed_timeout (--distributed_timeout SECONDS or {TIMEOUT_ENV})")


class ArrivalBoard:
    """A barrier on a Paddle store with a deadline that names the missing ranks.

    ``store`` needs only ``add(key, n) -> int`` (Paddle's TCPStore has no
    non-blocking get, and ``add(key, 0)`` reads a counter without waiting)."""

    def __init__(self, store, rank: int, world: int, timeout_s: float,
                 clock=time.monotonic, sleep=time.sleep):
        self.store, self.rank, self.world, self.timeout_s = store, rank, world, timeout_s
        self.clock, self.sleep = clock, sleep
        self.points = 0      # points passed; the same sequence on every rank

    def arrived(self, point: int) -> list[int]:
        """Ranks that have posted at ``point``."""
        return [r for r in range(self.world) if self.store.add(f"llmpre/arrive/{point}/{r}", 0) > 0]

    def arrive(self, what: str) -> None:
        """Post this rank's arrival at ``what`` and wait until every rank has."""
        self.points += 1
        point, count = self.points, f"llmpre/arrive/{self.points}/count"
        missing: list[int] | None = None   # as last read from the store
        try:
            self.store.add(f"llmpre/arrive/{point}/{self.rank}", 1)
            n = self.store.add(count, 1)
            start = self.clock()
            refreshed, delay = start, 0.001
            while n < self.world:
                now = self.clock()
                if now - start >= self.timeout_s:
                    missing = sorted(set(range(self.world)) - set(self.arrived(point)))
                    raise RendezvousError(self._message(missing, what))
                if now - refreshed >= REFRESH_S:   # kept for the message if rank 0 goes away
                    missing = sorted(set(range(self.world)) - set(self.arrived(point)))
                    refreshed = now
                self.sleep(delay)
                delay = min(delay * 2, POLL_MAX_S)
                n = self.store.add(count, 0)
        except STORE_ERRORS as e:
            raise RendezvousError(
                f"rank {self.rank} lost the rendezvous store (hosted by rank 0) while waiting "
                f"at {what} ({str(e).strip().splitlines()[0]}): rank 0 failed, or the launcher "
                f"stopped it after another rank failed; the first error is in one of the worker "
                f"logs (rank 0: {worker_log(0)})" + ("" if missing is None else "; ranks not "
                f"arrived when last checked: {', '.join(map(str, missing)) or 'none'}")) from e

    def _message(self, missing: list[int], what: str) -> str:
        note = ""
        if 0 in missing and len(missing) > 1 and self.store.add("init/", 0) < self.world:
            # rank 0 posts only once Paddle's store has seen every rank connect
            # ("init/" is the count TCPStore keeps of connected ranks)
            missing = [r for r in missing if r != 0]
            note = (f"rank 0 is still waiting for {'it' if len(missing) == 1 else 'them'} to "
                    f"connect to the store; the other {self.world - len(missing) - 1} arrived")
        return missing_message(missing, self.world, what, self.timeout_s, note)


@dataclass
class ParallelEnv:
    dims: ParallelDims
    rank: int = 0
    world_size: int = 1
    groups: dict = field(default_factory=dict)   # axis -> Group containing this rank
    embed_group: Group | None = None             # first and last pipeline stage (tied weights)
    board: ArrivalBoard | None = None            # waits with a deadline (multi-process only)
    stores: list = field(default_factory=list)   # the gloo groups' own stores, kept open

    @property
    def coords(self) -> dict:
        return self.dims.coords(self.rank)

    @property
    def tp(self) -> Group:
        return self.groups["tp"]

    @property
    def pp(self) -> Group:
        return self.groups["pp"]

    @property
    def data(self) -> Group:
        return self.groups["data"]

    @property
    def is_first_stage(self) -> bool:
        return self.coords["pp"] == 0

    @property
    def is_last_stage(self) -> bool:
        return self.coords["pp"] == self.dims.pp - 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self, what: str = "a barrier of the run") -> None:
        """Wait for every rank (nothing to wait for in a single process): on the
        arrival board (deadline: distributed_timeout), then a backend barrier."""
        if self.world_size > 1:
            import paddle.distributed as dist

            if self.board is not None:
                self.board.arrive(what)
            dist.barrier()


def world_info() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment, (0, 1) without one."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")), int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def store_endpoint() -> tuple[str, int]:
    """Host and port of the global TCPStore, chosen as Paddle's C++ chooses them
    (PADDLE_MASTER, else the first of PADDLE_TRAINER_ENDPOINTS)."""
    ep = os.environ.get("PADDLE_MASTER") or os.environ.get("PADDLE_TRAINER_ENDPOINTS", "").split(",")[0]
    host, _, port = ep.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"no rendezvous address: PADDLE_MASTER / PADDLE_TRAINER_ENDPOINTS give {ep!r} "
                          "(start multi-process runs with `llmpre train` or paddle.distributed.launch)")
    return host, int(port)


def wait_for_store(host: str, port: int, world: int, timeout_s: float) -> None:
    """Until rank 0's store accepts connections: Paddle's own connect retries forever."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise RendezvousError(missing_message(
                    [0], world, f"the rendezvous (nothing listens at {host}:{port}, the store "
                    "rank 0 opens)", timeout_s, "the others are waiting for it")) from None
            time.sleep(0.5)


def open_store(rank: int, world: int, timeout_s: float, factory=None):
    """Paddle's global TCPStore (the one init_parallel_env uses), connected."""
    if factory is None:
        from paddle.base import core

        factory = core.create_or_get_global_tcp_store
    if rank != 0:
        wait_for_store(*store_endpoint(), world, timeout_s)
    try:
        return factory()
    except SystemError as e:
        if "elapsed > _timeout" not in str(e):
            raise
        raise RendezvousError(
            f"rank 0 of {world} waited {PADDLE_STORE_CONNECT_LIMIT_S} s (Paddle's fixed limit) "
            "for every rank to connect to the rendezvous store, and some did not; the ranks that "
            "connected list in their logs which ranks had not arrived (with distributed_timeout "
            f"under {PADDLE_STORE_CONNECT_LIMIT_S} s they name them first; logs next to "
            f"{worker_log(0)})") from e


def _skip_rendezvous_if_asked(rank: int, timeout_s: float) -> None:
    if os.environ.get(FAULT_ENV, "").strip() == str(rank):
        logger.warning("%s=%d: rank %d does not arrive at the rendezvous (sleeping %.0f s)",
                       FAULT_ENV, rank, rank, 2 * timeout_s + 30)
        time.sleep(2 * timeout_s + 30)


def _host_group_store(timeout_s: float):
    """A new, empty TCPStore served by this rank: (store, "ip:port")."""
    from paddle.base import core

    ip = os.environ.get("PADDLE_CURRENT_ENDPOINT", "").rpartition(":")[0] or "127.0.0.1"
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return core.TCPStore(ip, port, True, 0, math.ceil(timeout_s)), f"{ip}:{port}"


def _new_group(dist, board: ArrivalBoard, store, ranks: list[int], what: str, gloo: bool, keep: list):
    """``dist.new_group(ranks)`` on every rank; on gloo the members use a store of their own.

    Paddle's ProcessGroupGloo constructor connects a second full mesh through
    the store *without* a per-group key prefix (process_group_gloo.cc), under
    the keys "0", "1", ... that every earlier gloo group also wrote. A member
    that reads a peer's key before the peer has rewritten it gets a stale
    address: "address.cc:30 sizeof(impl_) == bytes.size(). 136 vs 317" (the
    8-rank default group's 7 addresses read as 3), "Connection refused", or a
    gloo TIMEOUT. It failed 5 of 5 tp4 x pp2 setups on 2 cores. A fresh store
    per group (hosted by its first member) has no stale keys to read."""
    rank = board.rank
    if not gloo:
        return dist.new_group(ranks)
    from paddle.base import core
    from paddle.distributed import collective

    key, own = f"llmpre/group-store/{board.points}", None
    if rank == ranks[0]:
        own, address = _host_group_store(board.timeout_s)
        store.set(key, address)
    board.arrive(f"the process-group setup (before the {what})")
    if rank not in ranks:
        return dist.new_group(ranks)      # keeps Paddle's group ids in step; nothing to connect
    if own is None:
        host, _, port = store.get(key).decode().rpartition(":")
        own = core.TCPStore(host, int(port), False, 0, math.ceil(board.timeout_s))
    keep.append(own)
    default = collective._default_store   # what new_group passes to ProcessGroupGloo.create
    collective._set_default_store(own)
    try:
        return dist.new_group(ranks)
    finally:
        collective._set_default_store(default)


def init_parallel(dims: ParallelDims, timeout_s: float | None = None) -> ParallelEnv:
    """Join the other ranks and build every group of ``dims``. ``timeout_s`` is the
    ``distributed_timeout`` argument (None: LLMPRE_DIST_TIMEOUT, else 1800 s)."""
    rank, world = world_info()
    env = ParallelEnv(dims=dims, rank=rank, world_size=world)
    if world == 1:
        for axis in AXES + EP_AXES:
            env.groups[axis] = Group([0], None, 0)
        env.embed_group = Group([0], None, 0)
        return env
    import paddle.distributed as dist

    timeout = distributed_timeout(timeout_s)
    os.environ.setdefault("PADDLE_PG_TIMEOUT", str(int(timeout * 1000)))   # NCCL only (ms)
    store = open_store(rank, world, timeout)
    _skip_rendezvous_if_asked(rank, timeout)
    board = env.board = ArrivalBoard(store, rank, world, timeout)
    board.arrive("the rendezvous")
    dist.init_parallel_env()    # the default group, on the same store
    board.arrive("the process-group setup (the default group)")
    gloo = str(dist.get_backend()).upper() == "GLOO"

    def group(ranks: list[int], what: str):
        handle = _new_group(dist, board, store, ranks, what, gloo, env.stores) if len(ranks) > 1 else None
        board.arrive(f"the process-group setup (the {what})")
        return handle

    for axis in AXES:
        for ranks in dims.group_ranks(axis):
            handle = group(ranks, f"{axis} group {ranks}")
            if rank in ranks:
                env.groups[axis] = Group(ranks, handle, rank)
    for axis in EP_AXES:
        if dims.ep == 1:      # no new groups: every rank holds every expert
            env.groups[axis] = Group([rank], None, rank) if axis == "ep" else env.groups["data"]
            continue
        for ranks in dims.group_ranks(axis):
            handle = group(ranks, f"{axis} group {ranks}")
            if rank in ranks:
                env.groups[axis] = Group(ranks, handle, rank)
    # the first and last pipeline stage of each (dp, sharding, tp) position share tied weights
    for ranks in dims.group_ranks("pp"):
        pair = sorted({ranks[0], ranks[-1]})
        handle = group(pair, f"embedding group {pair}")
        if rank in pair:
            env.embed_group = Group(pair, handle, rank)
    if env.embed_group is None:
        env.embed_group = Group([rank], None, rank)
    for axis in AXES + (EP_AXES if dims.ep > 1 else ()):
        env.groups[axis].probe()
    env.barrier("the end of the process-group setup")   # the first world collective
    return env


def detached_env(dims: ParallelDims, rank: int) -> ParallelEnv:
    """Rank ``rank`` of ``dims`` with its groups' memberships but no process groups: enough
    to build that rank's model shard and optimizer state in one process (``llmpre plan
    --materialize``); any collective on it fails."""
    world = dims.world_size
    if not 0 <= rank < world:
        raise ConfigError(f"--rank {rank}: the layout has {world} ranks (0 to {world - 1})")
    env = ParallelEnv(dims=dims, rank=rank, world_size=world)
    for axis in AXES + EP_AXES:
        ranks = next(g for g in dims.group_ranks(axis) if rank in g)
        env.groups[axis] = Group(ranks, None, rank)
    pp = env.groups["pp"].ranks
    pair = sorted({pp[0], pp[-1]})
    env.embed_group = Group(pair if rank in pair else [rank], None, rank)
    return env
