"""Train llama-tiny on very long sequences with context parallelism and report, per rank,
the peak resident memory, and the run's tokens per second (the guide in docs/parallel.md).

    python bench/cp/long_sequence.py --seq 131072 --cp 4 --layers 1 --steps 2

Runs ``llmpre train --model llama-tiny --cp N --nproc-per-node N`` on the bundled corpus
(one sequence of ``--seq`` tokens per step), samples every worker's peak RSS (VmHWM in
/proc/<pid>/status) once a second while it runs, and reads the logged steps from
metrics.jsonl. Step 1 includes the warm-up (first-touch allocations), so tokens/s is
reported for the later steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
            except OSError:
                continue
    return out


def _descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        for c in _children(p):
            seen.append(c)
            todo.append(c)
    return seen


def _status(pid: int) -> dict:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                values[key] = rest.strip()
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
        values["rank"] = env.get(b"PADDLE_TRAINER_ID", b"").decode() or None
    except OSError:
        pass
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, default=131072)
    p.add_argument("--cp", type=int, default=4)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", default=None, help="output_dir (default: a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="llmpre-long-")
    cmd = [sys.executable, "-m", "llmpre.cli", "train", "--model", "llama-tiny",
           "--num_hidden_layers", str(args.layers), "--max_seq_length", str(args.seq),
           "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
           "--max_steps", str(args.steps), "--logging_steps", "1", "--do_eval", "false",
           "--save_steps", "100000", "--disable_tqdm", "true", "--report_to", "none",
           "--cp", str(args.cp), "--nproc-per-node", str(args.cp), "--output_dir", out]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {}                                   # rank -> max VmHWM (kB)
    while proc.poll() is None:
        for pid in _descendants(proc.pid):
            st = _status(pid)
            if st.get("rank") is not None and "VmHWM" in st:
                kb = int(st["VmHWM"].split()[0])
                peak[st["rank"]] = max(peak.get(st["rank"], 0), kb)
        time.sleep(1.0)
    log = proc.stdout.read()
    if proc.returncode != 0:
        sys.exit(f"training failed (exit {proc.returncode}):\n{log[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    train = [r for r in rows if r.get("type") == "train"]
    later = [r for r in train if r["step"] > 1] or train
    runtime = sum(r["interval_runtime"] for r in later)
    result = {
        "seq": args.seq, "cp": args.cp, "layers": args.layers, "steps": len(train),
        "tokens_per_rank": args.seq // args.cp,
        "losses": [r["loss"] for r in train],
        "step_seconds": [r["interval_runtime"] for r in train],
        "tokens_per_second": args.seq * len(later) / runtime,
        "peak_rss_gib_per_rank": {k: round(v / 2**20, 3) for k, v in sorted(peak.items())},
        "wall_seconds": round(time.time() - start, 1),
        "threads_per_rank": env["OMP_NUM_THREADS"], "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
