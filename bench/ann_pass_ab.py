"""Time the whole ANN pass in process on a memory-mapped .npy, for A/B runs of two source trees.

    python bench/ann_pass_ab.py SRC_DIR [VECTORS.npy] [FLOOR]     # e.g. /work/main/src c1m.npy 0.98

Prints one JSON line: wall and CPU seconds of ``ann_forest`` (partition, tiles, merge, recall
from its meta), pairs compared, largest partition, pair recall, the lowest share of complete
sampled rows over the thresholds, and the load average before and after. Alternate trees in one
session (main, branch, main, branch) and compare side by side.
"""

import json
import sys
import time

import numpy as np

sys.path.insert(0, sys.argv[1])
from neardup.similarity import ann  # noqa: E402

X = np.load(sys.argv[2] if len(sys.argv) > 2 else "/tmp/s6cann/c1m.npy", mmap_mode="r")
floor = float(sys.argv[3]) if len(sys.argv) > 3 else 0.98
l0 = open("/proc/loadavg").read().split()[:3]
t = time.perf_counter(); c = time.process_time()
f = ann.ann_forest(X, floor)
w, cc = time.perf_counter() - t, time.process_time() - c
m = f.meta
rc = m["recall"]["by_threshold"]
print(json.dumps({"tree": sys.argv[1], "wall": round(w, 1), "cpu": round(cc, 1), "seconds": m["seconds"], "cpu_seconds": m["cpu_seconds"],
  "nprobe": m["nprobe"], "pairs": round(m["compared_fraction"] * len(X) * (len(X) - 1) / 2), "largest": m["largest_partition"], "P": m["partitions"],
  "pair_recall": m["recall"]["pair_recall"], "rows_complete_min": min(r["rows_complete"] for r in rc.values()),
  "load_before": l0, "load_after": open("/proc/loadavg").read().split()[:3]}), flush=True)
