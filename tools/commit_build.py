"""Import llmpre as built from another commit, in child processes (for A/B runs).

``commit_env(rev, prefix)`` exports ``rev`` with ``git archive``, builds a wheel of it (CPU ops,
no CUDA) once, unpacks it into ``<temp>/<prefix>-<sha12>/site`` (cached between runs) and
returns the commit's full sha and the environment variables that make a child Python import
that build instead of this checkout's editable install: the site folder first on PYTHONPATH,
and SKBUILD_EDITABLE_SKIP naming the build folders the editable finder must step aside for.
Used by tools/golden_curves.py (--commit) and bench/moe/bench_grouped.py (--baseline-commit).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Tuple

ROOT = Path(__file__).resolve().parents[1]


def commit_env(rev: str, prefix: str = "llmpre-build") -> Tuple[str, Dict[str, str]]:
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    base = Path(tempfile.gettempdir()) / f"{prefix}-{sha[:12]}"
    site = base / "site"
    if not (site / "llmpre" / "__init__.py").exists():
        src, wheels = base / "src", base / "wheel"
        for d in (src, wheels):
            d.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
        print(f"building llmpre {sha[:12]} (CPU ops) in {base} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation",
                        "--no-deps", str(src), "-w", str(wheels)], check=True,
                       env={**os.environ, "LLMPRE_CUDA": "OFF"})
        zipfile.ZipFile(next(wheels.glob("llmpre-*.whl"))).extractall(site)
    # scikit-build-core's editable finder steps aside for the build folders named in
    # SKBUILD_EDITABLE_SKIP; without that it would import this checkout's sources.
    builds = [getattr(f, "path", None) for f in sys.meta_path
              if "llmpre" in getattr(f, "known_source_files", {})]
    return sha, {"SKBUILD_EDITABLE_SKIP": os.pathsep.join(b for b in builds if b),
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
