"""Run every GPU check (bench/gpu/check_*.py), then every benchmark
(bench/gpu/bench_*.py), in name order; each module has ``run(out_dir) -> dict``.

Results go to ``<out>/results.json`` (and each module may write its own files);
an op whose check fails is reported and its benchmark is skipped.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--only", default=None, help="run only modules whose name contains this")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from harness import cuda_module, device_info  # noqa: E402

    results = {"date": datetime.date.today().isoformat(), "device": device_info(cuda_module()),
               "checks": {}, "benchmarks": {}}
    failed_ops, benched_anyway = set(), set()
    for kind in ("check", "bench"):
        for path in sorted(HERE.glob(f"{kind}_*.py")):
            op = path.stem[len(kind) + 1:]
            if a.only and a.only not in path.stem:
                continue
            if kind == "bench" and op in failed_ops and op not in benched_anyway:
                results["benchmarks"][op] = {"skipped": "its check failed"}
                continue
            print(f"== {path.name}", flush=True)
            try:
                value = load(path).run(a.out)
            except Exception:
                value = {"error": traceback.format_exc()}
            if kind == "check" and (not isinstance(value, dict) or not value.get("passed")):
                failed_ops.add(op)
                if isinstance(value, dict) and value.get("bench_anyway"):
                    benched_anyway.add(op)  # the check says which parts may still be timed
            results["checks" if kind == "check" else "benchmarks"][op] = value
            print(json.dumps(value, indent=1, default=str)[:4000], flush=True)
    with open(os.path.join(a.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1, default=str)
    print(f"wrote {a.out}/results.json; failed checks: {sorted(failed_ops) or 'none'}")
    return 1 if failed_ops else 0


if __name__ == "__main__":
    sys.exit(main())
