"""Coverage of `neardup estimate`'s 95% intervals over many generated seed-shaped collections.

Each seed generates a new collection (giant-group span drawn in [1, 4] radians), computes the
exact values with the full exact pass (retained = groups incl. singletons; share of images with
a near-duplicate), and runs the estimator with an independent sample seed. Reports how often
each interval held the exact value, the mean interval width, and the estimator's cost.

    .venv/bin/python bench/estimate_coverage.py --seeds 120 --n 4000 --sample 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from neardup.estimate import estimate_vectors
from neardup.policy import priority_rank
from neardup.similarity.exact import exact_forest
from neardup.synthetic import seed_shaped


def canonical(X: np.ndarray) -> np.ndarray:
    try:
        from neardup.similarity.canonical import canonical_vectors

        return canonical_vectors(X)
    except ImportError:
        return (np.rint(X * 2048) / 2048).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=120)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=48)
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--threshold", type=float, default=0.98)
    args = ap.parse_args()
    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        c = seed_shaped(args.n, args.dim, seed=seed, giant_span=float(rng.uniform(1, 4)))
        X = canonical(c.vectors)
        t0 = time.perf_counter()
        f = exact_forest(X, args.threshold)
        t_full = time.perf_counter() - t0
        lab = f.components(args.threshold)
        sizes = np.bincount(lab, minlength=args.n)
        want_r = int((sizes > 0).sum())
        want_w = float((sizes[lab] > 1).mean())
        e = estimate_vectors(X, priority_rank(c.meta_table()), args.threshold, sample=args.sample, seed=10_000 + seed)
        rows.append(dict(seed=seed, retained=want_r, with_duplicate=want_w, est=e, full_s=t_full,
                         hit_r=e["retained_low"] <= want_r <= e["retained_high"],
                         hit_w=e["with_duplicate_low"] - 1e-12 <= want_w <= e["with_duplicate_high"] + 1e-12))
        print(json.dumps(dict(seed=seed, retained=want_r, low=e["retained_low"], high=e["retained_high"],
                              hit_r=rows[-1]["hit_r"], hit_w=rows[-1]["hit_w"], undecided=e["undecided"],
                              rows=e["rows_computed"])), flush=True)
    res = dict(
        seeds=args.seeds, n=args.n, dim=args.dim, sample=args.sample, threshold=args.threshold,
        coverage_retained=sum(r["hit_r"] for r in rows) / len(rows),
        coverage_with_duplicate=sum(r["hit_w"] for r in rows) / len(rows),
        mean_rel_halfwidth_retained=float(np.mean([(r["est"]["retained_high"] - r["est"]["retained_low"]) / 2 / r["retained"]
                                                   for r in rows])),
        mean_halfwidth_with_duplicate=float(np.mean([(r["est"]["with_duplicate_high"] - r["est"]["with_duplicate_low"]) / 2
                                                     for r in rows])),
        undecided_total=int(sum(r["est"]["undecided"] for r in rows)),
        mean_rows_per_sample=float(np.mean([r["est"]["rows_computed"] / r["est"]["sample"] for r in rows])),
    )
    print(json.dumps(res, indent=1))
    out = Path(__file__).resolve().parent / "results" / f"estimate-coverage-{args.n}-{args.threshold}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
