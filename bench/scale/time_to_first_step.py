"""Time to the first training step, and each rank's peak memory, of a llama2-13b-shaped
model at reduced depth: this llmpre against another source tree, side by side.

    python bench/scale/time_to_first_step.py --other-src /tmp/old_src/python \\
        --layouts 1,tp2 --layers 1 [--json out.json]

``--other-src`` is the folder holding another version's ``llmpre`` package with the
compiled ``_core`` (and ``ops/_paddle_ops``) modules copied beside it (e.g. ``git archive
<commit> python | tar -x -C /tmp/old_src`` plus those files). Each run starts ``llmpre
train`` (the launcher for several processes) and stops it at the first step's log line;
the peak resident memory of every process (VmHWM) is read just before.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from other_tree import env_for  # noqa: E402


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(e))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ")
    except OSError:
        return False
    return b"llmpre" in cmd and b"paddle.distributed.launch" not in cmd


def run(src: str | None, layout: str, layers: int, model: str, seq: int) -> dict:
    extra = [] if layout == "1" else ["--" + layout[:2], layout[2:]]
    out = tempfile.mkdtemp(prefix="ttfs-")
    argv = [sys.executable, "-m", "llmpre.cli", "train", "--model", model, "--num_hidden_layers", str(layers),
            "--max_seq_length", str(seq), "--per_device_train_batch_size", "1", "--max_steps", "2",
            "--logging_steps", "1", "--do_eval", "false", "--report_to", "none", "--disable_tqdm", "true",
            "--save_steps", "100000", "--output_dir", out, "--force", *extra]
    env = env_for(src) if src else dict(os.environ)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, cwd=ROOT)
    first, peaks, tail = None, {}, []
    try:
        for line in proc.stdout:
            tail = (tail + [line])[-30:]
            for p in [proc.pid] + descendants(proc.pid):
                if is_worker(p):
                    peaks[p] = max(peaks.get(p, 0), hwm(p))
            if "global_step: 1," in line or "global_step: 1 " in line:
                first = time.perf_counter() - start
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if first is None:
        raise SystemExit(f"no first step ({src or 'this tree'}, {layout}):\n" + "".join(tail))
    return {"src": src or "this tree", "layout": layout, "seconds_to_first_step": round(first, 1),
            "max_rank_peak_gib": round(max(peaks.values()) / 2 ** 30, 3),
            "ranks_peak_gib": sorted(round(v / 2 ** 30, 3) for v in peaks.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--other-src", help="another llmpre source tree (its python folder)")
    p.add_argument("--layouts", default="1,tp2", help="comma list: 1, tp2, pp2, ...")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--model", default="llama2-13b")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    for layout in args.layouts.split(","):
        for src in ([args.other_src] if args.other_src else []) + [None]:
            r = run(src, layout, args.layers, args.model, args.seq)
            print(json.dumps(r), flush=True)
            rows.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
