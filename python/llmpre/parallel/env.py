"""Start the distributed environment and build every process group of a layout.

Every rank creates every group (Paddle requires all ranks to take part in each
``new_group`` call, including groups they are not in) in one fixed order, with
a barrier on the world group after each one: on gloo, creating overlapping
subgroups back to back without it was measured to fail (TIMEOUT / connection
refused with 4 ranks), because a rank may start connecting the next group's
pairs while a peer is still setting up the previous one. The barrier orders
them; nothing is retried.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from llmpre.parallel.comm import Group
from llmpre.parallel.dims import ParallelDims

logger = logging.getLogger("llmpre")

AXES = ("tp", "pp", "sharding", "dp", "data")


@dataclass
class ParallelEnv:
    dims: ParallelDims
    rank: int = 0
    world_size: int = 1
    groups: dict = field(default_factory=dict)   # axis -> Group containing this rank
    embed_group: Group | None = None             # first and last pipeline stage (tied weights)

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

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a single process)."""
        if self.world_size > 1:
            import paddle.distributed as dist

            dist.barrier()


def world_info() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment, (0, 1) without one."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")), int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init_parallel(dims: ParallelDims) -> ParallelEnv:
    rank, world = world_info()
    env = ParallelEnv(dims=dims, rank=rank, world_size=world)
    if world == 1:
        for axis in AXES:
            env.groups[axis] = Group([0], None, 0)
        env.embed_group = Group([0], None, 0)
        return env
    import paddle.distributed as dist

    dist.init_parallel_env()
    for axis in AXES:
        for ranks in dims.group_ranks(axis):
            handle = dist.new_group(ranks) if len(ranks) > 1 else None
            dist.barrier()
            if rank in ranks:
                env.groups[axis] = Group(ranks, handle, rank)
    # the first and last pipeline stage of each (dp, sharding, tp) position share tied weights
    for ranks in dims.group_ranks("pp"):
        pair = sorted({ranks[0], ranks[-1]})
        handle = dist.new_group(pair) if len(pair) > 1 else None
        dist.barrier()
        if rank in pair:
            env.embed_group = Group(pair, handle, rank)
    if env.embed_group is None:
        env.embed_group = Group([rank], None, rank)
    for axis in AXES:
        env.groups[axis].probe()
    dist.barrier()
    return env
