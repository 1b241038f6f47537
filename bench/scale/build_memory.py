"""Peak memory of building one rank's model (parameters only, as the trainer builds it
before its optimizer), for a layout's every rank, against one process; optionally for
another llmpre source tree side by side (each build in a fresh process).

    python bench/scale/build_memory.py --model qwen2.5-1.5b --layouts 1,tp2,tp2xpp2 \\
        [--other-src /tmp/old_src/python] [--json out.json]

Reported per rank: the growth of the peak resident memory over the process after its
imports, the bytes of the parameters the rank keeps (its shard), and the largest single
parameter of the model; shard-local building should stay within shard + one parameter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from other_tree import env_for  # noqa: E402

CHILD = r"""
import json, resource, sys
import numpy as np
import paddle
from llmpre.models import build_model, get_config
from llmpre.parallel.comm import Group
from llmpre.parallel.dims import ParallelDims
from llmpre.parallel.env import AXES, ParallelEnv
from llmpre.parallel.parallelize import parallelize

model_name, tp, pp, rank = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = get_config(model_name)
dims = ParallelDims(tp=tp, pp=pp)
env = ParallelEnv(dims=dims, rank=rank, world_size=dims.world_size)
for axis in AXES:   # the rank's groups, without process groups (works for older trees too)
    env.groups[axis] = Group(next(g for g in dims.group_ranks(axis) if rank in g), None, rank)
ppr = env.groups["pp"].ranks
env.embed_group = Group(sorted({ppr[0], ppr[-1]}) if rank in (ppr[0], ppr[-1]) else [rank], None, rank)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    model = build_model(cfg, seed=1, lazy=True)
except TypeError:          # an llmpre without deferred building
    model = build_model(cfg, seed=1)
model = parallelize(model, env).model
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
shard = sum(int(np.prod(p.shape)) * p.element_size() for p in model.parameters())
print(json.dumps({"growth": peak - before, "shard": shard}))
"""


def largest_param_bytes(model: str) -> int:
    from llmpre.models import build_model, get_config

    m = build_model(get_config(model), seed=0, lazy=True)
    return max(int(__import__("numpy").prod(p.shape)) * 4 for p in m.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-1.5b")
    p.add_argument("--layouts", default="1,tp2,tp2xpp2")
    p.add_argument("--other-src")
    p.add_argument("--json")
    args = p.parse_args()
    largest = largest_param_bytes(args.model)
    print(f"{args.model}: largest parameter {largest / 2**30:.3f} GiB (fp32)")
    rows = []
    for layout in args.layouts.split(","):
        tp = int(layout.split("tp")[1].split("x")[0]) if "tp" in layout else 1
        pp = int(layout.split("pp")[1]) if "pp" in layout else 1
        for src in [None] + ([args.other_src] if args.other_src else []):
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
            if src:
                env = env_for(src, env)
            for rank in range(tp * pp):
                out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(tp), str(pp), str(rank)],
                                     capture_output=True, text=True, env=env, cwd=ROOT)
                if out.returncode != 0:
                    raise SystemExit(out.stderr[-3000:])
                r = json.loads(out.stdout.strip().splitlines()[-1])
                row = {"tree": src or "this tree", "layout": layout, "rank": rank,
                       "growth_gib": round(r["growth"] / 2**30, 3), "shard_gib": round(r["shard"] / 2**30, 3),
                       "over_shard_in_largest_params": round((r["growth"] - r["shard"]) / largest, 2)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "largest_param_bytes": largest, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
