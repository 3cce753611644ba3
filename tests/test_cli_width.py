"""`runs`, `pairs` and `models` fit an 80-column terminal: no line longer, nothing cut to an ellipsis."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from neardup import Catalog
from neardup.dedup import dedup


def _cli(*args: str) -> str:
    env = dict(os.environ, COLUMNS="80", TERM="xterm")
    r = subprocess.run([sys.executable, "-m", "neardup", *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_tables_fit_80_columns(tmp_path):
    rng = np.random.default_rng(0)
    V = rng.normal(size=(200, 32)).astype(np.float32)
    V[1::2] = V[0::2] + 0.05 * rng.normal(size=(100, 32)).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    db = tmp_path / "a-rather-long-catalog-name.duckdb"
    with Catalog(db) as cat:
        cat.put_embeddings("sscd-distilled", [f"photo_{i:06d}" for i in range(200)], V)
        dedup(cat, 0.95, mode="leader")
        dedup(cat, 0.9)                      # replaces run 1 (one run in force per model)
        dedup(cat, 0.92, keep_previous=True)
        cat.restore(3)
        dedup(cat, 0.93, mode="bounded", bound=0.8, window=1.5, window_link=0.97, keep_previous=True)
    outputs = {"runs": _cli("runs", "--db", str(db)),
               "pairs": _cli("pairs", "--band", "0.9:1", "--sample", "4", "--db", str(db)),
               "models": _cli("models")}
    for name, out in outputs.items():
        long = [line for line in out.splitlines() if len(line) > 80]
        assert not long, (name, long)
        assert "…" not in out, (name, out)
    runs = outputs["runs"]
    for word in ("restored", "applied", "replaced by run 2", "sscd-distilled", "leader", "0.95", "0.9"):
        assert word in runs
    # each run's grouping: mode and bound (run 2: the model's default bound 0.76), and the capture-time window
    assert "b .76" in runs and "b .8+1.5s" in runs and "leader" in runs
    assert "run 4: bounded (bound 0.8; captured > 1.5 s apart: linked from 0.97)" in runs
    assert "photo_0" in outputs["pairs"] and "clip-vit-b-32" in outputs["models"]
