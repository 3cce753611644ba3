"""Where `--index auto` should switch: the exact and the ANN pass side by side, in one process, per data set.

    .venv/bin/python bench/auto_index.py --data seed,sparse,clustered --reps 3 25000 50000 100000 200000

For each data set and size: the vectors, canonical (``seed``: ``neardup.synthetic.seed_shaped``, a
giant chained group, duplicate-dense; ``sparse``: ``neardup.synthetic.sparse_shaped``, 96% distinct
images in scene clusters of cosine ~0.72, 4% in small groups; ``clustered``: the same with 32 tight
scenes, cosine ~0.9 inside one), then ``--reps`` times ``exact_forest`` and ``ann_forest`` at floor
0.98, alternating (kernels warmed on a small set first): median wall and CPU seconds, the load
average around the runs, the exact pass's share of pairs in its int8 GEMM, and what ``--index auto``
takes there (``AUTO_EXACT_MAX`` in ``neardup/dedup.py``) against the faster pass. One JSON line per
point; results in docs/benchmarks-scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def vectors(kind: str, n: int):  # -> np.ndarray
    from neardup.similarity.canonical import canonical_vectors
    from neardup.synthetic import seed_shaped, sparse_shaped

    if kind == "seed":
        return canonical_vectors(seed_shaped(n, seed=0).vectors)
    if kind == "sparse":
        return canonical_vectors(sparse_shaped(n, seed=0).vectors)
    if kind == "clustered":
        return canonical_vectors(sparse_shaped(n, seed=0, scenes=32, scene_weight=0.95).vectors)
    raise SystemExit(f"data {kind!r}: use seed, sparse or clustered")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", type=int, default=[25_000, 50_000, 100_000, 200_000])
    ap.add_argument("--data", default="seed", help="comma-separated: seed, sparse, clustered")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--floor", type=float, default=0.98)
    args = ap.parse_args()
    from neardup.dedup import AUTO_EXACT_MAX
    from neardup.similarity.ann import ann_forest
    from neardup.similarity.exact import exact_forest

    warm = vectors("seed", 20_000)
    exact_forest(warm, args.floor)
    ann_forest(warm, args.floor)
    for kind in args.data.split(","):
        for n in args.sizes:
            X = vectors(kind, n)
            runs: dict[str, list[tuple[float, float]]] = {"exact": [], "ann": []}
            loads = [os.getloadavg()[0]]
            int8 = None
            for _ in range(args.reps):
                for name, fn in (("exact", exact_forest), ("ann", ann_forest)):
                    t, c = time.perf_counter(), cpu()
                    f = fn(X, args.floor)
                    runs[name].append((time.perf_counter() - t, cpu() - c))
                    loads.append(os.getloadavg()[0])
                    if name == "exact":
                        int8 = (f.meta or {}).get("int8_fraction")
            row = {"data": kind, "n": n, "floor": args.floor, "reps": args.reps, "int8_fraction": int8,
                   "load_min": round(min(loads), 2), "load_max": round(max(loads), 2)}
            for name, rs in runs.items():
                row[f"{name}_wall_s"] = round(statistics.median(w for w, _ in rs), 2)
                row[f"{name}_cpu_s"] = round(statistics.median(c for _, c in rs), 2)
                row[f"{name}_walls"] = [round(w, 2) for w, _ in rs]
            row["faster"] = "exact" if row["exact_wall_s"] <= row["ann_wall_s"] else "ann"
            row["auto"] = "exact" if n <= AUTO_EXACT_MAX else "ann"
            row["auto_within_10pct"] = row[f"{row['auto']}_wall_s"] <= 1.1 * min(row["exact_wall_s"], row["ann_wall_s"])
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
