"""Regenerate or check the golden loss curves in tests/assets/losses/.

    .venv/bin/python tools/golden_curves.py --check                     # every curve, full length
    .venv/bin/python tools/golden_curves.py --check llama-tiny-quickstart --steps 12
    .venv/bin/python tools/golden_curves.py --check llama-tiny-quickstart --run-dir RUN
    .venv/bin/python tools/golden_curves.py --check --steps 12 -- --learning_rate 3.03e-3
    .venv/bin/python tools/golden_curves.py --write [NAME ...]          # then commit, saying why
    .venv/bin/python tools/golden_curves.py --write --commit HEAD       # from a commit, not the tree

--check trains (or, with --run-dir, reads an existing run directory's
metrics.jsonl), prints a table of golden vs new loss with the relative
difference and the tolerance (per step up to the curve's tight_steps, then as
window means; eval losses shown), and exits 1 when one is over its tolerance
(tests/golden.py, tests/assets/losses/README.md). --write trains the full
length, shows how far the new curve moved from the checked-in one, and
overwrites the file with the losses, learning rates, eval losses, the exact
command and what produced it. Curves: llama-tiny-quickstart (200 steps, 3-5
min on two busy cores) and layout-reference (5 steps, ~10 s). Extra
`llmpre train` flags (e.g. a perturbed learning rate, to see the check fail)
go after `--`.

--commit REV trains with a wheel built from `git archive REV` (cached in the
temp folder, ~2 min to build) instead of this checkout's editable install: for
a tree other people are editing while the curve is written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import golden  # noqa: E402  (tests/golden.py: curve definitions and comparison)
from commit_build import commit_env  # noqa: E402  (tools/commit_build.py)


def use_commit(rev: str) -> None:
    """Make the training runs import llmpre built from commit ``rev`` (a cached wheel of
    it: tools/commit_build.py) instead of this checkout."""
    sha, env = commit_env(rev, prefix="llmpre-golden")
    os.environ.update(env)
    os.environ["LLMPRE_GOLDEN_COMMIT"] = sha
    print(f"training with llmpre {sha[:12]} from {env['PYTHONPATH'].split(os.pathsep)[0]}")


def train(curve, steps, extra, work):
    out_dir = Path(tempfile.mkdtemp(prefix=f"{curve.name}-", dir=work))
    t0 = time.time()
    output = golden.run(curve, out_dir, steps, tuple(extra))
    print(f"{curve.name}: trained {steps} steps in {time.time() - t0:.0f} s ({out_dir})")
    return golden.read_run(out_dir), output


def check(curve, args) -> bool:
    if args.run_dir:
        got = golden.read_run(args.run_dir)
        print(f"{curve.name}: read {len(got['loss'])} steps from {args.run_dir}")
    else:
        got, _ = train(curve, min(args.steps or curve.steps, curve.steps), args.extra, args.work)
    want = golden.load(curve)
    result = golden.compare(curve, got, want)
    print(golden.table(result))
    lr_off = [s for s in got["learning_rate"] if s in want["learning_rate"]
              and got["learning_rate"][s] != want["learning_rate"][s]]
    if lr_off:
        print(f"learning rate differs from the golden schedule at steps {lr_off[:10]}"
              f"{' ...' if len(lr_off) > 10 else ''}")
    print(golden.summary(curve, result))
    return result["ok"]


def write(curve, args) -> None:
    steps = curve.steps
    if args.steps and args.steps != steps or args.extra or args.run_dir:
        sys.exit("--write records the curve as defined in tests/golden.py: "
                 "no --steps, --run-dir or extra flags")
    got, output = train(curve, steps, [], args.work)
    if sorted(got["loss"]) != list(range(1, steps + 1)):
        sys.exit(f"{curve.name}: expected losses for steps 1..{steps}, got {sorted(got['loss'])[:5]}...")
    if curve.path.exists():
        result = golden.compare(curve, got, golden.load(curve))
        print(golden.table(result, only_failing=True))
        print("against the checked-in curve:", golden.summary(curve, result))
    command = ["llmpre", "train", *curve.flags, "--max_steps", str(steps), "--output_dir", "OUT"]
    # layout_runner sets OMP_NUM_THREADS=1; the quickstart curve says --num_threads 1
    env = {"OMP_NUM_THREADS": "1"} if curve is golden.LAYOUT_REFERENCE else {}
    prov = golden.provenance(output)
    if prov["uncommitted_source_changes"]:
        print("warning: uncommitted source changes are recorded in the file:",
              ", ".join(prov["uncommitted_source_changes"]))
    data = {"name": curve.name, "what": curve.what,
            "command": shlex.join(command), "env": env, "steps": steps,
            "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **prov,
            "loss": {str(s): got["loss"][s] for s in sorted(got["loss"])},
            "learning_rate": {str(s): got["learning_rate"][s] for s in sorted(got["learning_rate"])},
            "eval_loss": {str(s): got["eval_loss"][s] for s in sorted(got["eval_loss"])}}
    curve.path.parent.mkdir(parents=True, exist_ok=True)
    curve.path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {curve.path.relative_to(ROOT)}: say why it moved in the commit message")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="train the full length and overwrite the curve")
    mode.add_argument("--check", action="store_true", help="train (or read --run-dir) and compare")
    p.add_argument("names", nargs="*", help=f"curves (default: all): {', '.join(golden.CURVES)}")
    p.add_argument("--steps", type=int, help="--check only the first STEPS steps (at most a curve's length)")
    p.add_argument("--run-dir", help="--check this run directory instead of training")
    p.add_argument("--work", default=None, help="where the runs go (default: a temporary folder)")
    p.add_argument("--commit", help="train with llmpre built from this commit, not this checkout")
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:len(argv) - len(extra) - 1] if "--" in argv else argv)
    args.extra = extra
    unknown = [n for n in args.names if n not in golden.CURVES]
    if unknown:
        p.error(f"unknown curve(s) {unknown}; known: {', '.join(golden.CURVES)}")
    curves = [golden.CURVES[n] for n in args.names] or list(golden.CURVES.values())
    if args.run_dir and len(curves) != 1:
        p.error("--run-dir needs exactly one curve name")
    if args.commit:
        use_commit(args.commit)
    ok = True
    for curve in curves:
        if args.write:
            write(curve, args)
        else:
            ok = check(curve, args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
