"""MoE expert compute: the grouped path (one sort per layer, one llmpre_grouped_mlp call that
gathers its rows itself, one llmpre_moe_combine) against the per-expert loop it replaced (a
``nonzero`` host synchronisation per expert).

    python bench/moe/bench_grouped.py                 # layer + end to end, OMP_NUM_THREADS=2
    python bench/moe/bench_grouped.py --skip-e2e --reps 7
    python bench/moe/bench_grouped.py --skip-layer --baseline-commit none   # no "today" runs

1. Layer: one MoE block's routed experts, forward + backward (``paddle.grad`` of the
   output, the input and every expert weight, with a fixed upstream gradient), 64
   experts top-8, hidden 512, moe_intermediate_size 352 (1408/4), 2048 tokens, fp32.
   Verified first: outputs and gradients of the three implementations agree. Then the
   per-expert loop (``reference.moe_expert_loop``), the grouped path with the
   pure-Paddle reference ops (``use_fused_grouped_mlp=False, use_fused_moe_combine=False``:
   gather, one host read per layer, gather back and a batched product) and with the
   fused ops (the rows gathered inside the grouped kernel, the token-major combine) are
   timed in alternation (background load hits all alike); medians (and minima, and
   process CPU time, which other jobs' load moves less) and their ratios to the loop,
   measured in the same run.
2. End to end: ``llmpre train`` of a tiny DeepSeek-V3 (hidden 256, 4 layers of which 3
   MoE, MLA, 64 routed experts top-8 of width 128 in 8 groups, a shared expert, vocab
   8192; the bundled corpus, quickstart batch) for --steps steps, in subprocesses
   alternating "today" (llmpre built from --baseline-commit, 5d4e287 by default, the
   commit of the issue's first numbers, with ``MoE.routed`` patched back to the
   per-expert loop: the code as it was before this work), "loop" (the code as it is,
   ``MoE.routed`` patched to the loop: what the grouped experts alone change) and
   "grouped" (the code as it is); median (and minimum: the least disturbed by other jobs)
   step time of the steps after the first two.
   The baseline commit is built once as a wheel (CPU ops; 8 minutes on the loaded 2-core box) and cached in
   the temp folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for Paddle and the kernels")
    p.add_argument("--reps", type=int, default=5, help="timed forward+backward calls of each layer implementation")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10, help="training steps per end-to-end run")
    p.add_argument("--rounds", type=int, default=2, help="end-to-end runs of each variant, alternating")
    p.add_argument("--skip-layer", action="store_true")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--baseline-commit", default="5d4e287",
                   help='the "today" variant: llmpre built from this commit, experts as the per-expert loop '
                        '("none": skip it)')
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


# ----------------------------------------------------------------------------- layer
def bench_layer(args) -> dict:
    import numpy as np
    import paddle

    import llmpre.ops as ops
    from llmpre.models.config import ModelConfig
    from llmpre.models.moe import MoE
    from llmpre.ops import reference as R

    hidden, experts, k, inter = 512, 64, 8, 352
    config = ModelConfig(model_type="qwen2_moe", hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=8, vocab_size=1024,
                         max_position_embeddings=4096,
                         moe=dict(num_experts=experts, num_experts_per_tok=k, moe_intermediate_size=inter))
    paddle.seed(0)
    block = MoE(config, ops.select_ops(use_fused_grouped_mlp=True))
    reference_block = MoE(config, ops.select_ops(use_fused_grouped_mlp=False, use_fused_moe_combine=False))
    reference_block.set_state_dict(block.state_dict())
    x = paddle.randn([args.tokens, hidden])
    x.stop_gradient = False
    weights, chosen, _ = block.gate(x)
    weights, chosen = weights.detach(), chosen.detach()
    dy = paddle.randn([args.tokens, hidden])

    def run(name):
        if name == "loop":
            b = block
            out = R.moe_expert_loop(x, weights, chosen, list(b.experts))
        else:
            b = block if name == "grouped (fused op)" else reference_block
            out = b.routed(x, weights, chosen)
        params = [p for e in b.experts for p in e.parameters()]
        return [out] + paddle.grad([out], [x] + params, [dy])

    names = ["loop", "grouped (reference op)", "grouped (fused op)"]
    results = {n: [t.numpy() for t in run(n)] for n in names}
    for n in names[1:]:
        for a, b in zip(results[n], results["loop"]):
            scale = max(1.0, float(np.abs(b).max()))
            err = float(np.abs(a - b).max()) / scale
            assert err < 1e-4, f"{n} disagrees with the loop: relative error {err:.2e}"
    times = {n: [] for n in names}
    cpu = {n: [] for n in names}   # process CPU time (all threads): less moved by other jobs' load
    for _ in range(args.reps):
        for n in names:
            t0, c0 = time.perf_counter(), time.process_time()
            outs = run(n)
            _ = [float(o.sum()) for o in outs[:2]]
            times[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    flops = 3 * 2 * args.tokens * k * hidden * inter * 3   # 3 GEMMs forward, 6 backward
    base, base_min, base_cpu = (statistics.median(times["loop"]), min(times["loop"]),
                                statistics.median(cpu["loop"]))
    rows = {}
    for n in names:
        med, low, c = statistics.median(times[n]), min(times[n]), statistics.median(cpu[n])
        rows[n] = {"median_s": med, "min_s": low, "cpu_median_s": c, "gflops": flops / med / 1e9,
                   "speedup_vs_loop": base / med, "speedup_vs_loop_min": base_min / low,
                   "speedup_vs_loop_cpu": base_cpu / c}
        print(f"  {n:24s} median {med * 1e3:8.1f} ms  min {low * 1e3:8.1f} ms  cpu {c * 1e3:8.1f} ms  "
              f"{flops / med / 1e9:6.1f} GFLOP/s  x{base / med:5.2f} vs loop (min x{base_min / low:.2f}, "
              f"cpu x{base_cpu / c:.2f})")
    return rows


# ----------------------------------------------------------------------------- end to end
PATCH_LOOP = (
    "import sys\n"
    "import llmpre.models.moe as M\n"
    "from llmpre.ops import reference as R\n"
    "M.MoE.routed = lambda self, flat, w, e: R.moe_expert_loop(flat, w, e, list(self.experts))\n"
    "from llmpre.cli import main\n"
    "sys.argv = ['llmpre'] + sys.argv[1:]\n"
    "main()\n"
)
PLAIN = PATCH_LOOP.replace("M.MoE.routed = lambda self, flat, w, e: R.moe_expert_loop(flat, w, e, list(self.experts))\n", "")


def tiny_deepseek_v3(directory: str) -> None:
    from llmpre.models import get_preset
    from llmpre.models.hf_config import to_hf_dict

    c = get_preset("deepseek-v3")
    c = c.replace(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=8192, max_position_embeddings=1024, head_dim=48,
                  mla=dataclasses.replace(c.mla, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32,
                                          qk_rope_head_dim=16, v_head_dim=32),
                  moe=dataclasses.replace(c.moe, num_experts=64, moe_intermediate_size=128,
                                          shared_expert_intermediate_size=128, first_k_dense_replace=1))
    with open(os.path.join(directory, "config.json"), "w") as fh:
        json.dump(to_hf_dict(c), fh)


def baseline_env(commit: str) -> dict:
    """Environment variables that make a child process import llmpre built from ``commit``
    (a cached wheel of it, CPU ops: tools/commit_build.py) instead of this checkout."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from commit_build import commit_env

    return commit_env(commit, prefix="llmpre-bench")[1]


def train_steps(args, workdir: str, variant: str, run: int, extra_env: dict) -> list:
    out = os.path.join(workdir, f"out-{variant}-{run}")
    cmd = [sys.executable, "-c", PLAIN if variant == "grouped" else PATCH_LOOP, "train", "--model",
           os.path.join(workdir, "model"), "--max_steps", str(args.steps), "--logging_steps", "1",
           "--output_dir", out, "--save_steps", "100000", "--eval_steps", "100000"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), **extra_env)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=workdir)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{variant} training failed:\n{log[-3000:]}")
    if "grouped_mlp=" not in log:
        raise SystemExit(f"{variant}: the run did not log its ops line")
    steps = [float(m) for m in re.findall(r"interval_runtime: ([0-9.]+)", log)]
    losses = [float(m) for m in re.findall(r"loss: ([0-9.]+), learning_rate", log)]
    return steps, losses


def bench_e2e(args) -> dict:
    envs = {"loop": {}, "grouped": {}}
    if args.baseline_commit != "none":
        envs = {"today": baseline_env(args.baseline_commit), **envs}
    with tempfile.TemporaryDirectory() as workdir:
        os.makedirs(os.path.join(workdir, "model"))
        tiny_deepseek_v3(os.path.join(workdir, "model"))
        times = {v: [] for v in envs}
        losses = {}
        for r in range(args.rounds):
            for variant, env in envs.items():
                steps, loss = train_steps(args, workdir, variant, r, env)
                times[variant] += steps[2:]
                losses.setdefault(variant, loss)
                print(f"  {variant:8s} run {r}: step times {', '.join(f'{s:.2f}' for s in steps)} s "
                      f"(load {load_average()})", flush=True)
    print("  first losses: " + ", ".join(f"{v} {losses[v][:3]}" for v in envs))
    first = {v: max(abs(a - b) / abs(b) for a, b in zip(losses[v][:3], losses["grouped"][:3])) for v in envs}
    med = {v: statistics.median(t) for v, t in times.items()}
    low = {v: min(t) for v, t in times.items()}    # the least disturbed step: other jobs' load moves it less
    for name, stat in (("median", med), ("min", low)):
        print(f"  {name} step: " + ", ".join(f"{v} {m:.3f} s" for v, m in stat.items()) +
              f"  -> grouped x{stat['loop'] / stat['grouped']:.2f} steps/s vs loop" +
              (f", x{stat['today'] / stat['grouped']:.2f} vs today ({args.baseline_commit})" if "today" in stat
               else ""))
    speedups = {f"vs_{v}": med[v] / med["grouped"] for v in envs if v != "grouped"}
    speedups_min = {f"vs_{v}": low[v] / low["grouped"] for v in envs if v != "grouped"}
    return {"median_step_s": med, "min_step_s": low, "steps_per_s": {v: 1 / m for v, m in med.items()},
            "speedup": speedups, "speedup_min": speedups_min, "first_loss_rel_diff_vs_grouped": first,
            "baseline_commit": args.baseline_commit}


def main():
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    result = {"threads": args.threads, "load_average_start": load_average()}
    print(f"threads {args.threads}, load average {result['load_average_start']}")
    if not args.skip_layer:
        print(f"MoE layer forward+backward: {args.tokens} tokens, 64 experts top-8, hidden 512, inter 352, fp32")
        result["layer"] = bench_layer(args)
    if not args.skip_e2e:
        print(f"tiny DeepSeek-V3, llmpre train, {args.steps} steps x {args.rounds} runs per variant")
        result["e2e"] = bench_e2e(args)
    result["load_average_end"] = load_average()
    print(f"load average at the end {result['load_average_end']}")
    if args.json:
        with open(args.json + ".tmp", "w") as fh:
            json.dump(result, fh, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    sys.exit(main())
