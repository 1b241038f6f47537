"""Peak activation memory per rank of one training step at a long sequence: one process
vs context parallelism (ring attention) over N processes on gloo.

    python bench/cp/cp_memory.py --seq 16384 --cp 4        # runs both, prints the ratio

Each rank builds llama-tiny (--layers layers, fused CPU ops), applies the layout as the
trainer does (parallelize + parallel.context.apply), reads the same random sequence and
keeps its part; then it resets the kernel's peak-RSS counter (/proc/self/clear_refs 5),
runs forward + backward of the loss once, and reports the growth of the peak RSS (VmHWM)
over the RSS just before: the step's activations, gradients and transient buffers (the
ring's all-gathers included). Verified first: the cp loss equals the one-process loss
(relative 1e-5). The figure per layout is the largest rank's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def worker(args) -> None:
    import numpy as np
    import paddle

    from llmpre.models import build_model, causal_lm_loss, get_config
    from llmpre.ops.select import select_ops
    from llmpre.parallel import context
    from llmpre.parallel.dims import ParallelDims
    from llmpre.parallel.env import init_parallel
    from llmpre.parallel.parallelize import parallelize

    dims = ParallelDims(cp=args.cp)
    env = init_parallel(dims)
    config = get_config("llama-tiny").replace(num_hidden_layers=args.layers,
                                              max_position_embeddings=max(1024, args.seq))
    ops = select_ops()
    model = build_model(config, seed=1, ops=ops, lazy=True)
    parallelize(model, env)
    context.apply(model, env)
    loss_fn = context.wrap_loss(lambda logits, labels: causal_lm_loss(logits, labels), context.seq_group(env))
    tokens = paddle.to_tensor(np.random.default_rng(0).integers(0, config.vocab_size, (1, args.seq + 1)))
    inputs, labels = context.keep_own_part(tokens[:, :-1], tokens[:, 1:], env)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")                        # VmHWM := VmRSS
    before = _status("VmRSS")
    start = time.perf_counter()
    loss = loss_fn(model(inputs), labels)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    value = paddle.to_tensor([float(loss.item())])
    context.seq_group(env).all_reduce(value)
    with open(os.path.join(args.out, f"rank{env.rank}.json"), "w") as fh:
        json.dump({"rank": env.rank, "growth": peak - before, "before": before, "seconds": seconds,
                   "loss": float(value.item()), "local_tokens": int(inputs.shape[1])}, fh)


def run(cp: int, args, out: str) -> list:
    os.makedirs(out, exist_ok=True)
    base = [sys.executable, os.path.abspath(__file__), "--worker", "--seq", str(args.seq), "--layers",
            str(args.layers), "--cp", str(cp), "--out", out]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if cp > 1:
        base = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(cp),
                "--log_dir", os.path.join(out, "logs")] + base[1:]
    subprocess.run(base, check=True, env=env)
    return [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(cp)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seq", type=int, default=16384)
    p.add_argument("--cp", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--out", default="/tmp/llmpre-cp-memory")
    p.add_argument("--worker", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    one = run(1, args, os.path.join(args.out, "cp1"))[0]
    ranks = run(args.cp, args, os.path.join(args.out, f"cp{args.cp}"))
    worst = max(ranks, key=lambda r: r["growth"])
    rel = abs(worst["loss"] - one["loss"]) / abs(one["loss"])
    assert rel <= 1e-5, f"cp{args.cp} loss {worst['loss']} vs one process {one['loss']} (rel {rel:.2e})"
    gib = 2 ** 30
    print(f"llama-tiny x {args.layers} layers, seq {args.seq}, one step (forward + backward)")
    print(f"one process: peak growth {one['growth'] / gib:.3f} GiB, {one['seconds']:.1f} s, loss {one['loss']:.6f}")
    for r in ranks:
        print(f"cp{args.cp} rank {r['rank']}: peak growth {r['growth'] / gib:.3f} GiB, {r['seconds']:.1f} s, "
              f"{r['local_tokens']} tokens")
    print(f"ratio (largest rank / one process): {worst['growth'] / one['growth']:.3f}; loss rel. diff {rel:.1e}")


if __name__ == "__main__":
    main()
