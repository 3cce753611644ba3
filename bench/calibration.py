"""Threshold calibration from 60 simulated judgments vs the best single threshold (issue 12's target).

    .venv/bin/python bench/calibration.py                 # 10 seeds, sscd, target precision 0.99
    .venv/bin/python bench/calibration.py --seeds 20 --objective f1

The labelled set (``bench/results/raw/calibration/photos``) is bench/quality.py's: scikit-image's
bundled CC0 photos plus 3x3 tiles of two large ones (Hubble deep field, retina) as *look-alike*
distinct originals, each with one copy of every :mod:`neardup.samples` edit and burst frames for
six photos; a file's ground-truth group is its source. It is scanned and embedded with sscd once
(the catalog is kept and reused).

Per seed, on a copy of that catalog with no judgments: ``offer_pairs`` rounds of 16, 11, 11, 11
and 11 pairs (the first spread over the bands around the model's default, the next four active),
each pair judged by the ground truth (same source = same), then ``calibrate``. The fitted threshold's *true* pair
precision and recall (over all pairs of the collection, "duplicate iff similarity >= t") are
compared with those of the best single threshold: the lowest t whose true precision reaches the
target (for ``--objective f1``: the t of maximum true F1). Pass: both within 0.02, in >= 9 of 10.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "bench" / "results" / "raw" / "calibration"
BURST = ("astronaut", "coffee", "rocket", "camera", "moon", "hubble_deep_field_t11")
TOL = 0.02
#: 60 judgments: 16 spread over the bands, then four active rounds of 11
ROUNDS = (16, 11, 11, 11, 11)


def build_catalog(model: str) -> Path:
    """The labelled photos, scanned and embedded once (reused when already there)."""
    from neardup.catalog import Catalog
    from neardup.embed import get_model
    from neardup.find import embed
    from neardup.samples import build_collection
    from neardup.sources import scan

    photos = RAW / "photos"
    db = RAW / f"{model}.duckdb"
    if db.exists():
        return db
    build_collection(photos, seed=0, tiles=True, copies=1, burst=BURST, extras=False)
    with Catalog(db) as cat:
        scan(cat, [photos])
        embed(cat, get_model(model))
    return db


def truth_pairs(db: Path, model: str) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ids, and every pair's (i, j, similarity, same) from the vectors and labels.csv."""
    import csv

    from neardup.catalog import Catalog

    with Catalog(db, read_only=True) as cat:
        e = cat.load_embeddings(model)
        rows = cat.sql("SELECT id, path FROM images").to_pylist()
    labels = {r["path"]: r["group"] for r in csv.DictReader(open(RAW / "photos" / "labels.csv"))}
    root = (RAW / "photos").resolve()
    group_of = {}
    for r in rows:
        rel = Path(r["path"]).resolve().relative_to(root).as_posix()
        group_of[r["id"]] = labels[rel]
    ids = e.ids.tolist()
    X = np.asarray(e.vectors, np.float64)
    g = np.array([group_of[i] for i in ids])
    i, j = np.triu_indices(len(ids), 1)
    sims = np.einsum("ij,ij->i", X[i], X[j])
    return {k: n for n, k in enumerate(ids)}, i, j, sims, (g[i] == g[j])


def true_pr(sims: np.ndarray, same: np.ndarray, t: float) -> tuple[float, float]:
    """True pair precision and recall of "duplicate iff sim >= t"."""
    m = sims >= t
    tp = int((m & same).sum())
    return (tp / m.sum() if m.sum() else 1.0), tp / same.sum()


def best_threshold(sims: np.ndarray, same: np.ndarray, target: float, objective: str) -> float:
    """The best single threshold on the ground truth (lowest reaching the target precision, or max F1)."""
    order = np.argsort(-sims, kind="stable")
    s, y = sims[order], same[order]
    tp = np.cumsum(y)
    n = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]          # thresholds between distinct similarities
    prec, rec = tp / n, tp / y.sum()
    if objective == "f1":
        f1 = np.where(last, 2 * prec * rec / np.maximum(prec + rec, 1e-12), -1)
        return float(s[int(np.argmax(f1))])
    ok = np.flatnonzero(last & (prec >= target))
    return float(s[ok[-1]])


def run_seed(db: Path, model: str, seed: int, sims_by_pair: dict, target: float, objective: str) -> dict:
    from neardup.calibration import add_judgments, calibrate, offer_pairs
    from neardup.catalog import Catalog

    work = RAW / f"seed-{seed}.duckdb"
    shutil.rmtree(Path(str(work) + ".d"), ignore_errors=True)
    work.unlink(missing_ok=True)
    shutil.copy(db, work)
    if Path(str(db) + ".d").exists():
        shutil.copytree(Path(str(db) + ".d"), Path(str(work) + ".d"))
    hows = []
    with Catalog(work) as cat:
        for rnd, n in enumerate(ROUNDS):
            pairs, how = offer_pairs(cat, n, model, target=target, objective=objective, seed=seed * 1000 + rnd)
            hows.append(how.split(" (")[0][:60])
            add_judgments(cat, [(p["a"], p["b"], sims_by_pair[(p["a"], p["b"])]) for p in pairs], model, "simulated")
        cal = calibrate(cat, model, target=target, objective=objective, seed=seed)
    shutil.rmtree(Path(str(work) + ".d"), ignore_errors=True)
    work.unlink(missing_ok=True)
    return cal.to_dict() | {"rounds": hows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sscd")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--objective", default="precision", choices=("precision", "f1"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration.json")
    args = ap.parse_args()
    RAW.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    db = build_catalog(args.model)
    print(f"catalog ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    pos, i, j, sims, same = truth_pairs(db, args.model)
    ids = sorted(pos, key=pos.get)
    sims_by_pair = {}
    for a, b, y in zip(np.array(ids)[i], np.array(ids)[j], same):
        sims_by_pair[(a, b) if a <= b else (b, a)] = bool(y)
    t_best = best_threshold(sims, same, args.target, args.objective)
    p_best, r_best = true_pr(sims, same, t_best)
    print(f"{len(ids)} images, {len(sims):,} pairs ({int(same.sum()):,} same); best single threshold "
          f"{t_best:.4f}: precision {p_best:.4f}, recall {r_best:.4f}", file=sys.stderr)
    rows = []
    for seed in range(args.seeds):
        c = run_seed(db, args.model, seed, sims_by_pair, args.target, args.objective)
        p, r = true_pr(sims, same, c["threshold"])
        ok = abs(p - p_best) <= TOL and abs(r - r_best) <= TOL
        row = dict(seed=seed, threshold=c["threshold"], low=c["low"], high=c["high"], est_precision=c["precision"],
                   est_recall=c["recall"], true_precision=round(p, 4), true_recall=round(r, 4),
                   judgments=c["judgments"], n_same=c["n_same"], covers_best=c["low"] <= t_best <= c["high"],
                   within_tol=bool(ok), rounds=c["rounds"])
        rows.append(row)
        print(f"seed {seed}: t={c['threshold']:.4f} [{c['low']:.4f}, {c['high']:.4f}] true P {p:.4f} R {r:.4f} "
              f"(est {c['precision']:.3f}/{c['recall']:.3f}) {'ok' if ok else 'MISS'}", file=sys.stderr)
    n_ok = sum(r["within_tol"] for r in rows)
    result = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  machine=f"{platform.machine()}, {platform.python_version()}",
                  command="python bench/calibration.py " + " ".join(sys.argv[1:]), model=args.model,
                  objective=args.objective, target=args.target, images=len(ids), pairs=int(len(sims)),
                  same_pairs=int(same.sum()), best=dict(threshold=t_best, precision=round(p_best, 4),
                                                        recall=round(r_best, 4)),
                  tolerance=TOL, seeds_within=n_ok, seeds=args.seeds,
                  interval_covers_best=sum(r["covers_best"] for r in rows), runs=rows,
                  seconds=round(time.perf_counter() - t0, 1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{n_ok} of {args.seeds} seeds within {TOL} of the best threshold's precision and recall; "
          f"interval covers the best threshold in {result['interval_covers_best']}; wrote {args.out}")


if __name__ == "__main__":
    main()
