"""End-to-end training speed: llmpre's LLaMA against PaddleFormers' on the identical model and batch.

    .venv/bin/python bench/e2e/bench_llama_vs_paddleformers.py [--rounds 3] [--json out.json]

Model (both sides): LLaMA, hidden 256, 4 layers, 4 heads (no GQA), intermediate
688, vocab 32000, untied head, RMSNorm eps 1e-6; batch 4 x 256 tokens; one
step = forward + loss + backward + AdamW update (paddle.optimizer.AdamW on
both sides, lr 1e-4, weight decay 0.01), fp32, OMP_NUM_THREADS=2.

Configurations, each in its own process (so each reads its environment at
``import paddle``), run round-robin ``--rounds`` times so background load
hits all of them alike; the reported figure is the median step time over
all rounds:

- llmpre, fused ops (the default: ``select_ops()``), and llmpre with every op
  set to the pure-Paddle reference, in this interpreter (.venv).
- PaddleFormers 1.2.0 ``LlamaForCausalLM`` (its own loss), in a separate
  benchmark-only venv (``--pf-python``, default /work/benchvenv-pf/bin/python,
  made with ``pip install paddlepaddle==3.3.1 paddleformers==1.2.0``) with
  ``fuse_rms_norm=False`` (its fused kernel has no CPU implementation), with
  each of its CPU attention implementations: ``eager`` (the default, written
  out) and ``sdpa`` (Paddle's scaled_dot_product_attention).
  Each PaddleFormers configuration runs twice: with the default environment,
  and with ``MKL_DEBUG_CPU_TYPE=5``, which llmpre sets on AMD CPUs
  (llmpre.runtime) and which makes the MKL bundled with Paddle use its AVX2
  kernels (matmul ~3.5x faster on this AMD EPYC). llmpre always runs with its
  default environment.

- llmpre's training engine (``--engine``): the step the trainer runs, with
  llmpre's own AdamW and the global-norm clipping (``forward_backward``,
  ``reduce``, ``grad_norm``, ``step``), fused ops. With ``--llmpre-src DIR``
  the same configuration also runs from another llmpre source tree (DIR is the
  folder holding its ``llmpre`` package, with the compiled ``_core`` and
  ``ops/_paddle_ops`` modules copied beside it), so two versions of the engine
  are timed side by side, round-robin, on one machine. ``--engine-only`` runs
  just these.

The ratios reported are llmpre's tokens/s over the best PaddleFormers
configuration with and without the variable: from the median step time (the
headline), from the fastest step of each configuration (the least disturbed
by other processes), and from CPU time per step. "CPU s/step" (process CPU time
of all threads, including OpenMP threads spinning between parallel regions)
is printed too: it is less sensitive than wall time to other processes
competing for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HIDDEN, LAYERS, HEADS, INTER, VOCAB, BATCH, SEQ = 256, 4, 4, 688, 32000, 4, 256
DEFAULT_PF_PYTHON = "/work/benchvenv-pf/bin/python"


# ----------------------------------------------------------------------------- workers
def _time_steps(paddle, step, warmup: int, steps: int) -> tuple:
    """Wall seconds and process CPU seconds (all threads) of each timed step."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _batch(paddle):
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = paddle.to_tensor(rng.integers(0, VOCAB, size=(BATCH, SEQ + 1)))
    return tokens[:, :-1], tokens[:, 1:]


def worker_llmpre(ops_kind: str, warmup: int, steps: int) -> dict:
    from llmpre.runtime import configure_threads, import_paddle

    configure_threads()  # OMP_NUM_THREADS from the environment; MKL_DEBUG_CPU_TYPE=5 on AMD
    paddle = import_paddle()
    from llmpre.models import ModelConfig, build_model
    from llmpre.ops.select import FLAGS, describe, select_ops

    chosen = select_ops() if ops_kind == "fused" else select_ops(**{flag: False for flag in FLAGS})
    config = ModelConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                         max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False)
    model = build_model(config, seed=0, ops=chosen)
    opt = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters(), weight_decay=0.01)
    inputs, labels = _batch(paddle)
    losses = []

    def step():
        loss = chosen.cross_entropy(model(inputs), labels)
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))

    times, cpu = _time_steps(paddle, step, warmup, steps)
    return {"ops": describe(chosen), "params": sum(int(p.size) for p in model.parameters()),
            "times": times, "cpu": cpu, "first_loss": losses[0], "last_loss": losses[-1]}


def _use_source_tree(src: str) -> None:
    """Import llmpre from ``src`` instead of the installed (editable) package."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    sys.path.insert(0, os.path.abspath(src))
    for name in [m for m in sys.modules if m == "llmpre" or m.startswith("llmpre.")]:
        del sys.modules[name]


def worker_llmpre_engine(warmup: int, steps: int) -> dict:
    """The trainer's step through llmpre's engine (either engine API: the single
    ``Engine`` or the former ``LocalEngine``)."""
    if os.environ.get("LLMPRE_BENCH_SRC"):
        _use_source_tree(os.environ["LLMPRE_BENCH_SRC"])
    import functools

    from llmpre.runtime import configure_threads, import_paddle

    configure_threads()
    paddle = import_paddle()
    import llmpre
    from llmpre.models import ModelConfig, build_model
    from llmpre.ops.select import describe, select_ops
    from llmpre.parallel.dims import ParallelDims
    from llmpre.parallel.env import init_parallel
    from llmpre.train.args import parse_arguments
    from llmpre.train.optim import clip_coefficient
    from llmpre.train.precision import Precision

    chosen = select_ops()
    config = ModelConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                         max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False)
    model = build_model(config, seed=0, ops=chosen)
    args = parse_arguments(None, {"model": "llama-tiny", "output_dir": "/tmp/llmpre-bench-engine",
                                  "weight_decay": "0.01", "max_grad_norm": "1.0"})
    loss_fn = functools.partial(chosen.cross_entropy, ignore_index=-100)
    precision = Precision.from_args(args)
    try:
        from llmpre.train.engine import Engine
        engine = Engine(paddle, model, precision, args, init_parallel(ParallelDims()), loss_fn)
    except ImportError:   # llmpre before the single engine
        from llmpre.train.engine import LocalEngine
        engine = LocalEngine(paddle, model, loss_fn, precision, args)
    import numpy as np

    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(BATCH, SEQ + 1)).astype("int64")
    losses = []

    def step():
        losses.append(engine.forward_backward(lambda: tokens, 1, 1.0))
        engine.reduce()
        norm = engine.grad_norm()
        engine.step(1e-4, grad_scale=clip_coefficient(norm, 1.0))
        engine.zero_grad()

    times, cpu = _time_steps(paddle, step, warmup, steps)
    return {"ops": f"{type(engine).__name__} from {os.path.dirname(llmpre.__file__)}; {describe(chosen)}",
            "params": sum(int(p.size) for p in model.parameters()),
            "times": times, "cpu": cpu, "first_loss": losses[0], "last_loss": losses[-1]}


def worker_paddleformers(attn: str, warmup: int, steps: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import paddle
    from paddleformers.transformers import LlamaConfig, LlamaForCausalLM

    paddle.seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                         max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                         fuse_rms_norm=False, _attn_implementation=attn)
    model = LlamaForCausalLM(config)
    model.train()
    opt = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters(), weight_decay=0.01)
    inputs, labels = _batch(paddle)
    losses = []

    def step():
        out = model(input_ids=inputs, labels=labels)
        loss = out[0] if isinstance(out, (tuple, list)) else out.loss
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))

    times, cpu = _time_steps(paddle, step, warmup, steps)
    return {"ops": f"paddleformers _attn_implementation={config._attn_implementation}",
            "params": sum(int(p.size) for p in model.parameters()),
            "times": times, "cpu": cpu, "first_loss": losses[0], "last_loss": losses[-1]}


# ----------------------------------------------------------------------------- driver
def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def run_worker(python: str, name: str, extra_env: dict, drop_env: tuple, warmup: int, steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", **extra_env)
    for key in drop_env:
        env.pop(key, None)
    cmd = [python, os.path.abspath(__file__), "--worker", name, "--warmup", str(warmup), "--steps", str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"worker {name} failed ({python}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--pf-python", default=DEFAULT_PF_PYTHON)
    p.add_argument("--skip-reference", action="store_true", help="skip llmpre with reference ops")
    p.add_argument("--engine", action="store_true", help="also time llmpre's training engine step")
    p.add_argument("--engine-only", action="store_true", help="time only llmpre's engine step(s)")
    p.add_argument("--llmpre-src", help="another llmpre source tree whose engine is timed side by side")
    p.add_argument("--json")
    args = p.parse_args()

    if args.worker:
        kind, _, variant = args.worker.partition(":")
        result = (worker_llmpre(variant, args.warmup, args.steps) if kind == "llmpre"
                  else worker_llmpre_engine(args.warmup, args.steps) if kind == "engine"
                  else worker_paddleformers(variant, args.warmup, args.steps))
        print(json.dumps(result))
        return

    engines = [("llmpre engine (this tree)", sys.executable, "engine:", {}, ())]
    if args.llmpre_src:
        engines.append((f"llmpre engine ({args.llmpre_src})", sys.executable, "engine:",
                        {"LLMPRE_BENCH_SRC": args.llmpre_src}, ()))
    if args.engine_only:
        configs = engines
    elif not os.path.exists(args.pf_python):
        raise SystemExit(f"--pf-python {args.pf_python} does not exist: make the benchmark venv with "
                         "`python -m venv /work/benchvenv-pf && /work/benchvenv-pf/bin/pip install "
                         "paddlepaddle==3.3.1 paddleformers==1.2.0`")
    # (label, python, worker, extra env, env vars removed)
    if not args.engine_only:
        configs = [("llmpre fused ops", sys.executable, "llmpre:fused", {}, ())]
        if not args.skip_reference:
            configs.append(("llmpre reference ops", sys.executable, "llmpre:reference", {}, ()))
        for attn in ("eager", "sdpa"):
            name = f"paddleformers:{attn}"
            label = f"PaddleFormers attention={attn}"
            configs.append((label, args.pf_python, name, {}, ("MKL_DEBUG_CPU_TYPE",)))
            configs.append((label + " + MKL_DEBUG_CPU_TYPE=5", args.pf_python, name,
                            {"MKL_DEBUG_CPU_TYPE": "5"}, ()))
        if args.engine:
            configs += engines

    print(f"LLaMA h{HIDDEN} L{LAYERS} heads{HEADS} i{INTER} vocab{VOCAB}, batch {BATCH}x{SEQ}, AdamW, "
          f"OMP_NUM_THREADS=2; {args.rounds} rounds x {args.steps} steps; load average at start {load_average()}",
          flush=True)
    samples = {label: [] for label, *_ in configs}
    cpu_samples = {label: [] for label, *_ in configs}
    info = {}
    for r in range(args.rounds):
        for label, python, worker, extra, drop in configs:
            res = run_worker(python, worker, extra, drop, args.warmup, args.steps)
            samples[label] += res["times"]
            cpu_samples[label] += res["cpu"]
            info[label] = res
            print(f"  round {r + 1} {label:52s} {statistics.median(res['times']):.3f} s/step "
                  f"(load {load_average()})", flush=True)
    tokens = BATCH * SEQ
    rows = {}
    for label, _, _, extra, _ in configs:
        step = statistics.median(samples[label])
        best = min(samples[label])
        rows[label] = {"step_s": round(step, 4), "tokens_per_s": round(tokens / step, 1),
                       "best_step_s": round(best, 4), "best_tokens_per_s": round(tokens / best, 1),
                       "cpu_s_per_step": round(statistics.median(cpu_samples[label]), 4),
                       "params": info[label]["params"], "ops": info[label]["ops"],
                       "first_loss": round(info[label]["first_loss"], 4)}
    print(f"\n{'configuration':56s} {'s/step':>8s} {'tokens/s':>9s} {'best tok/s':>11s} {'CPU s/step':>11s} "
          f"{'params':>10s}")
    for label, row in rows.items():
        print(f"{label:56s} {row['step_s']:8.3f} {row['tokens_per_s']:9.1f} {row['best_tokens_per_s']:11.1f} "
              f"{row['cpu_s_per_step']:11.3f} {row['params']:10d}")
    params = {row["params"] for row in rows.values()}
    if len(params) != 1:
        raise SystemExit(f"the models differ in size: {params}")
    summary = {}
    if len(engines) == 2 and all(label in rows for label, *_ in engines):
        this, other = (rows[label] for label, *_ in engines)
        summary["engine_this_tree_vs_other_tree"] = round(other["step_s"] / this["step_s"], 3)
        summary["engine_this_tree_vs_other_tree_best_steps"] = round(other["best_step_s"] / this["best_step_s"], 3)
        summary["engine_this_tree_vs_other_tree_cpu_time"] = round(
            other["cpu_s_per_step"] / this["cpu_s_per_step"], 3)
    if args.engine_only:
        print("\n" + "\n".join(f"{k}: {v}x" for k, v in summary.items()))
        if args.json:
            with open(args.json + ".tmp", "w") as fh:
                json.dump({"rows": rows, "summary": summary}, fh, indent=1)
            os.replace(args.json + ".tmp", args.json)
        return
    for key, suffix in (("tokens_per_s", ""), ("best_tokens_per_s", "_best_steps"),
                        ("cpu_s_per_step", "_cpu_time")):
        def speed(row):  # higher is better for every metric
            return 1.0 / row[key] if key == "cpu_s_per_step" else row[key]

        ours = speed(rows["llmpre fused ops"])
        pf_default = max(speed(row) for label, row in rows.items()
                         if label.startswith("PaddleFormers") and "MKL" not in label)
        pf_mkl = max(speed(row) for label, row in rows.items()
                     if label.startswith("PaddleFormers") and "MKL" in label)
        summary["llmpre_vs_best_paddleformers_default_env" + suffix] = round(ours / pf_default, 2)
        summary["llmpre_vs_best_paddleformers_mkl_debug_cpu_type_5" + suffix] = round(ours / pf_mkl, 2)
        if "llmpre reference ops" in rows:
            summary["llmpre_fused_vs_llmpre_reference" + suffix] = round(
                ours / speed(rows["llmpre reference ops"]), 2)
    print("\n" + "\n".join(f"{k}: {v}x" for k, v in summary.items()))
    print(f"load average at end {load_average()}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"rows": rows, "summary": summary}, fh, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
