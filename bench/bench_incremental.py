"""Incremental dedup benchmark: 5% new rows added to a seed-shaped catalog, whole commands.

A seed-shaped collection of ``n + n*frac`` images is split into a base (``n``) and new rows.
Each round, side by side on the same machine:

* **full**: a fresh catalog of all rows (no forest cache) -> ``neardup dedup`` (timed);
* **incremental**: a copy of the base catalog, already deduplicated (its forest cached), gets the
  new rows with ``neardup import-embeddings`` (not timed) -> ``neardup dedup`` (timed).

Both are the whole command in a fresh process. The two runs' groups and masters are compared
(exported and matched image by image). Prints medians, per-round ratios and the load average.

    .venv/bin/python bench/bench_incremental.py --n 20000 --rounds 3
    .venv/bin/python bench/bench_incremental.py --n 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEARDUP = [sys.executable, "-m", "neardup"]


def sh(*args: str) -> float:
    """Run a neardup command; return its wall time."""
    t = time.perf_counter()
    subprocess.run([*NEARDUP, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def copy_catalog(src: Path, dst: Path) -> None:
    shutil.copy(src, dst)
    shutil.copytree(src.with_name(src.name + ".d"), dst.with_name(dst.name + ".d"), copy_function=os.link)


def groups_of(db: Path, tmp: Path) -> dict[str, tuple[str, bool]]:
    """image -> (master, suppressed) of the latest run, from an export."""
    out = tmp / f"{db.stem}-export.json"
    subprocess.run([*NEARDUP, "export", "--out", str(out), "--db", str(db)], check=True, stdout=subprocess.DEVNULL)
    return {r["image_id"]: (r["master_id"], r["is_suppressed"]) for r in json.loads(out.read_text())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--frac", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()

    import numpy as np

    from neardup.synthetic import seed_shaped

    n_new = int(round(args.n * args.frac))
    tmp = Path(tempfile.mkdtemp(prefix="neardup-incr-"))
    c = seed_shaped(args.n + n_new, args.dim, seed=0)
    for name, sl in (("base", slice(0, args.n)), ("new", slice(args.n, None)), ("all", slice(None))):
        np.save(tmp / f"{name}.npy", c.vectors[sl])
        (tmp / f"{name}.txt").write_text("\n".join(c.ids[sl].tolist()) + "\n")
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(c.meta_table().slice(sl.start or 0, len(c.ids[sl])), tmp / f"{name}.parquet")
    t = f"{args.threshold}"
    base = tmp / "base.duckdb"
    sh("import-embeddings", str(tmp / "base.npy"), "--ids", str(tmp / "base.txt"), "--meta", str(tmp / "base.parquet"),
       "--db", str(base))
    sh("dedup", "--threshold", t, "--db", str(base))           # builds and caches the base forest
    allc = tmp / "all.duckdb"
    sh("import-embeddings", str(tmp / "all.npy"), "--ids", str(tmp / "all.txt"), "--meta", str(tmp / "all.parquet"),
       "--db", str(allc))

    rounds = []
    for r in range(args.rounds):
        load = os.getloadavg()[0]
        full_db = tmp / f"full{r}.duckdb"
        copy_catalog(allc, full_db)
        t_full = sh("dedup", "--threshold", t, "--db", str(full_db))
        inc_db = tmp / f"inc{r}.duckdb"
        copy_catalog(base, inc_db)
        sh("import-embeddings", str(tmp / "new.npy"), "--ids", str(tmp / "new.txt"), "--meta", str(tmp / "new.parquet"),
           "--db", str(inc_db))
        t_inc = sh("dedup", "--threshold", t, "--db", str(inc_db))
        g_full, g_inc = groups_of(full_db, tmp), groups_of(inc_db, tmp)
        same = g_full == g_inc
        diff = sum(1 for k in g_full if g_full[k] != g_inc.get(k))
        rounds.append(dict(full_s=round(t_full, 2), incremental_s=round(t_inc, 2), ratio=round(t_inc / t_full, 3),
                           groups_equal=same, images_differing=diff, load_1min=round(load, 2)))
        print(json.dumps(rounds[-1]), flush=True)
        for db in (full_db, inc_db):
            db.unlink()
            shutil.rmtree(db.with_name(db.name + ".d"))
    res = dict(n=args.n, new=n_new, dim=args.dim, threshold=args.threshold, rounds=rounds,
               median_full_s=statistics.median(r["full_s"] for r in rounds),
               median_incremental_s=statistics.median(r["incremental_s"] for r in rounds),
               median_ratio=statistics.median(r["ratio"] for r in rounds), cpus=os.cpu_count())
    print(json.dumps(res, indent=1))
    out = HERE / "results" / f"incremental-{args.n}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
