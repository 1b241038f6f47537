"""Expert dispatch and combine (parallel.expert.ExpertDispatch, comm.exchange_rows) on two
gloo ranks: a MoE block whose 8 experts are split 4 + 4 gives each rank the output and input
gradient of the whole block on its own tokens, the router gradient of its own tokens, and each
local expert the gradient summed over both ranks' tokens. Cases: rows dropped by a capacity
limit with one expert that receives no rows, and a rank whose experts receive no rows at all
(experts never chosen: their router weight on a feature every token has >= 1 is -1e3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "ep_dispatch_worker.py")


@pytest.mark.parametrize("capacity,unused", [(0.5, "7"), (0.0, "4,5,6,7")],
                         ids=["capacity0.5-expert7-idle", "dropless-rank1-idle"])
def test_split_experts_match_the_whole_block(tmp_path, capacity, unused):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PADDLE_TRAINER_ID", None)
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                           "--log_dir", str(tmp_path / "logs"), WORKER, str(tmp_path), str(capacity), unused],
                          capture_output=True, text=True, timeout=180, env=env)
    logs = "".join(open(tmp_path / "logs" / f).read()[-2000:] for f in sorted(os.listdir(tmp_path / "logs"))
                   if f.startswith("workerlog")) if (tmp_path / "logs").exists() else ""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    for rank, local in ((0, [0, 1, 2, 3]), (1, [4, 5, 6, 7])):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["local"] == local and r["unused_routed"] == 0
        # only this rank's experts exist here, with their global names
        assert {int(n.split(".")[1]) for n in r["names"] if n.startswith("experts.")} == set(local)
        # rows only move: each row's arithmetic is the same (measured: equal bit for bit)
        assert r["output"] == 0.0 and r["input_grad"] == 0.0, r
        # an expert's gradient sums both ranks' rows in another order than the whole block on
        # each rank + all-reduce: fp32 reassociation (measured <= 2.5e-7 of the largest element)
        for name, (diff, size) in r["grads"].items():
            assert diff <= 1e-6 * size, (rank, name, diff, size)
