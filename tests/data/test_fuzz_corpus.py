"""Fuzzing the corpus reader: hundreds of damaged corpora, never a crash.

Each mutation damages a small corpus (uint8/uint16/int32 .bin/.idx, or the
legacy _ids.npy/_idx.npz pair): flipped bytes in the header and arrays,
truncated or extended files, random dtype codes, item sizes and pointers past
the end of .bin, garbage item/document counts and doc_idx entries, empty files,
corrupt or reshaped .npy/.npz members. Every outcome must be either a corpus
that opens and reads consistently end to end (every item, max_token, an index
build) or a DataError naming the files; `verify` must find a problem whenever
the reader refuses. The loop runs in a subprocess so a segfault fails the test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).parent / "_fuzz_worker.py"
MUTATIONS = 400


def test_damaged_corpora_never_crash(tmp_path):
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path), "20261127", str(MUTATIONS)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode < 0:
        raise AssertionError(f"the fuzz loop died from signal {signal.Signals(-proc.returncode).name}:"
                             f"\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], "\n".join(report["failures"][:10])
    outcomes = report["outcomes"]
    assert sum(sum(v.values()) for v in outcomes.values()) == MUTATIONS
    assert len(outcomes) == 14  # every kind of damage was tried
    for kind, counts in outcomes.items():
        assert counts.get("DataError", 0) > 0, (kind, counts)  # and was caught at least once
