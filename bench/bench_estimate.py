"""estimate speed: the sampled estimate vs the full exact pass on a seed-shaped collection.

    python bench/bench_estimate.py --n 100000 --rounds 3            # full pass timed too
    python bench/bench_estimate.py --n 1000000 --rounds 2 --no-full # the estimate alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import neardup  # noqa: F401  (first: it sets OPENBLAS_THREAD_TIMEOUT before numpy loads, as the CLI does)
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--no-full", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from neardup.estimate import estimate_vectors
    from neardup.policy import priority_rank
    from neardup.similarity.exact import exact_forest
    from neardup.synthetic import seed_shaped

    t0 = time.perf_counter()
    c = seed_shaped(args.n, args.dim, seed=0)
    X = c.vectors
    try:
        from neardup.similarity.canonical import canonical_vectors

        X = canonical_vectors(X)
    except ImportError:
        pass
    rank = priority_rank(c.meta_table())
    gen_s = time.perf_counter() - t0
    estimate_vectors(X[:5000], rank[:5000], args.threshold, sample=100)  # warm-up: compile / cache load
    truth = None
    rounds = []
    for r in range(args.rounds):
        row: dict = {}
        row["load_1min_before"] = round(os.getloadavg()[0], 2)
        if not args.no_full:
            t0, c0 = time.perf_counter(), time.process_time()
            f = exact_forest(X, args.threshold)
            row["full_s"] = round(time.perf_counter() - t0, 3)
            row["full_cpu_s"] = round(time.process_time() - c0, 3)
            if truth is None:
                lab = f.components(args.threshold)
                sizes = np.bincount(lab, minlength=args.n)
                truth = dict(retained=int((sizes > 0).sum()), with_duplicate=float((sizes[lab] > 1).mean()))
        t0, c0 = time.perf_counter(), time.process_time()
        e = estimate_vectors(X, rank, args.threshold, seed=r)
        row["estimate_s"] = round(time.perf_counter() - t0, 3)
        row["estimate_cpu_s"] = round(time.process_time() - c0, 3)
        if "full_s" in row:
            row["ratio"] = round(row["estimate_s"] / row["full_s"], 4)
            row["ratio_cpu"] = round(row["estimate_cpu_s"] / row["full_cpu_s"], 4)
        row["estimate"] = {k: e[k] for k in ("sample", "with_duplicate", "with_duplicate_low", "with_duplicate_high",
                                             "retained", "retained_low", "retained_high", "undecided", "rows_computed",
                                             "rounds", "products_share")}
        rounds.append(row)
        print(json.dumps(row), flush=True)
    res = dict(n=args.n, dim=args.dim, threshold=args.threshold, generate_s=round(gen_s, 1), truth=truth, rounds=rounds,
               median_estimate_s=statistics.median(x["estimate_s"] for x in rounds),
               median_estimate_cpu_s=statistics.median(x["estimate_cpu_s"] for x in rounds), cpus=os.cpu_count(),
               load_1min=os.getloadavg()[0], date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if not args.no_full:
        res["median_full_s"] = statistics.median(x["full_s"] for x in rounds)
        res["median_ratio"] = statistics.median(x["ratio"] for x in rounds)
        res["median_ratio_cpu"] = statistics.median(x["ratio_cpu"] for x in rounds)
    print(json.dumps(res, indent=1))
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"estimate-{args.n}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
