"""Coverage of the calibrated threshold's 95% interval over many seeds, on synthetic judgments with a known threshold.

    .venv/bin/python bench/calibration_coverage.py                  # 100 seeds per population, every method
    .venv/bin/python bench/calibration_coverage.py --seeds 50 --methods posterior

Each seed draws a population of pair similarities with ground-truth labels, so the true
threshold is known: the lowest t whose true pair precision reaches 0.99. A simulated judge then
answers 60 pairs chosen as the product chooses them (16 spread over the sampling bands, then four
rounds of 11 at :func:`neardup.calibration.active_targets`), and the interval of each method is
checked for containing the true threshold. Populations:

* ``edge``: like the labelled photos (bench/calibration.py) -- a mass of different pairs at low
  similarity, look-alike different pairs thinning out up to a hard edge, duplicates mostly high
  with a tail of heavy edits below the edge, and a few rare different pairs above the boundary;
* ``logistic``: P(same | s) rises smoothly (a logistic of width 0.03 around 0.8);
* ``step``: the judge says "same" exactly above 0.81 (a sharp boundary).

Methods (the point fit is the same isotonic fit in all): ``percentile`` (bootstrap percentile),
``hull`` (the hull of the percentile and the basic bootstrap intervals, the method before this
study), ``posterior`` (each draw resamples the judgments, draws the isotonic fit's pooled blocks
from Beta(k + 1/2, n - k + 1/2), Jeffreys, re-made monotone; percentile of the thresholds: a
block judged all "same" still allows different pairs it has not seen), ``union`` (the posterior
range and the hull together: the default). The judgments are the same for every method of a seed
(the bootstrap steers sampling in all), so methods differ only in the interval reported. Writes ``bench/results/calibration-coverage.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = (16, 11, 11, 11, 11)
TARGET = 0.99


def population(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, same) of every pair of a synthetic collection."""
    if kind == "edge":
        diff = np.r_[rng.beta(2, 5, 40_000) * 0.7 + 0.1,                 # unrelated pairs
                     0.45 + 0.40 * rng.beta(1.2, 3.0, 2_500),            # look-alikes up to the edge 0.85
                     rng.uniform(0.80, 0.90, 25)]                        # rare different pairs above the boundary
        same = np.r_[1.0 - rng.gamma(1.5, 0.05, 1_300),                   # edits, mostly high
                     rng.uniform(0.55, 0.85, 120)]                       # heavy edits
        s = np.r_[diff, np.clip(same, 0.3, 1.0)]
        y = np.r_[np.zeros(len(diff), bool), np.ones(len(same), bool)]
    elif kind == "logistic":
        s = np.r_[rng.uniform(0.2, 1.0, 20_000), rng.uniform(0.7, 1.0, 6_000)]
        y = rng.random(len(s)) < 1 / (1 + np.exp(-(s - 0.8) / 0.03))
    elif kind == "step":
        s = np.r_[rng.uniform(0.2, 1.0, 20_000), rng.uniform(0.7, 1.0, 4_000)]
        y = s >= 0.81
    else:
        raise ValueError(kind)
    return s, y


def true_threshold(s: np.ndarray, y: np.ndarray, target: float = TARGET) -> float:
    o = np.argsort(-s, kind="stable")
    ss, yy = s[o], y[o]
    prec = np.cumsum(yy) / np.arange(1, len(yy) + 1)
    last = np.r_[ss[1:] != ss[:-1], True]
    return float(ss[np.flatnonzero(last & (prec >= target))[-1]])


def simulate(kind: str, seed: int, method: str, n_boot: int = 300) -> dict:
    from neardup import calibration as C

    rng = np.random.default_rng(seed)
    s, y = population(kind, rng)
    t_true = true_threshold(s, y)
    floor = C.sampling_bands(0.6)[0][0]
    pop = C.Population.from_similarities(s, floor)
    judged: list[int] = []
    free = np.ones(len(s), bool)
    cal = None
    for rnd, n in enumerate(ROUNDS):
        if cal is None:
            picks = []
            bands = C.sampling_bands(0.6)
            for k in range(n):
                lo, hi = bands[k % len(bands)]
                idx = np.flatnonzero(free & (s >= lo) & (s < hi))
                if len(idx):
                    q = int(rng.choice(idx))
                    picks.append(q)
                    free[q] = False
        else:
            picks = []
            for q in C.active_targets(cal, n):
                idx = np.flatnonzero(free)
                near = idx[np.argsort(np.abs(s[idx] - q) + rng.random(len(idx)) * 1e-9)[:1]]
                picks.append(int(near[0]))
                free[near[0]] = False
        judged += picks
        js, jy = s[judged], y[judged].astype(float)
        try:
            cal = C.fit(js, jy, pop, n_boot=n_boot, seed=seed * 10 + rnd, interval=method)
        except C.CalibrationNeedsMore:
            cal = None
    if cal is None:
        return dict(seed=seed, fitted=False, t_true=t_true)
    return dict(seed=seed, fitted=True, t_true=round(t_true, 5), threshold=round(cal.threshold, 5),
                low=round(cal.low, 5), high=round(cal.high, 5), covers=bool(cal.low <= t_true <= cal.high),
                width=round(cal.high - cal.low, 5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--kinds", default="edge,logistic,step")
    ap.add_argument("--methods", default="percentile,hull,posterior,union")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration-coverage.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = {}
    for kind in args.kinds.split(","):
        for method in args.methods.split(","):
            rows = [simulate(kind, seed, method) for seed in range(args.seeds)]
            ok = [r for r in rows if r["fitted"]]
            cov = sum(r["covers"] for r in ok)
            table[f"{kind}/{method}"] = dict(
                seeds=args.seeds, fitted=len(ok), covers=cov,
                median_width=float(np.median([r["width"] for r in ok])) if ok else None,
                median_abs_error=float(np.median([abs(r["threshold"] - r["t_true"]) for r in ok])) if ok else None,
                runs=rows)
            print(f"{kind:9s} {method:11s} covers {cov}/{len(ok)} "
                  f"(median width {table[f'{kind}/{method}']['median_width']:.4f})", file=sys.stderr, flush=True)
    res = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               machine=f"{platform.machine()}, {platform.python_version()}",
               command="python bench/calibration_coverage.py " + " ".join(sys.argv[1:]), target=TARGET,
               judgments=sum(ROUNDS), results=table, seconds=round(time.perf_counter() - t0, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: {kk: v[kk] for kk in ("fitted", "covers", "median_width")} for k, v in table.items()}))


if __name__ == "__main__":
    main()
