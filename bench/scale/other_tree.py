"""Run another llmpre source tree in child processes (launched workers included).

The editable install's import hook takes precedence over PYTHONPATH, so pointing
PYTHONPATH at another tree is not enough: ``env_for(src)`` returns an environment whose
PYTHONPATH holds a generated ``sitecustomize`` that drops the hook and puts ``src`` first,
in every Python process started with it.
"""

from __future__ import annotations

import os
import tempfile


def env_for(src: str, base: dict | None = None) -> dict:
    """``base`` (default: os.environ) with every Python process importing llmpre from ``src``
    (the folder holding another tree's ``llmpre`` package, compiled modules beside it)."""
    hook = tempfile.mkdtemp(prefix="llmpre-other-tree-")
    with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
        f.write("import sys\n"
                "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()]\n"
                f"sys.path.insert(0, {os.path.abspath(src)!r})\n")
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = hook + os.pathsep + env.get("PYTHONPATH", "")
    return env
