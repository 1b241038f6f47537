"""One 'rank' of the cache tests: builds or waits for the index of a corpus.

Run as a script by test_cluster_cache.py with PADDLE_* rank variables set;
prints one JSON line: whether this process built the arrays, and their hash.
"""

import hashlib
import json
import sys
import time

import numpy as np

from llmpre.data import build_datasets

prefix, cache, delay, share = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
time.sleep(delay)
ds = build_datasets(prefix, "1", [400_000, 0, 0], 8, 77, data_cache=cache, share_folder=share)["train"]
h = hashlib.sha256()
for key in ("doc_idx", "sample_idx", "shuffle_idx"):
    h.update(np.ascontiguousarray(getattr(ds, key)).tobytes())
print(json.dumps({"built": not ds.loaded_from_cache, "sha": h.hexdigest()}))
