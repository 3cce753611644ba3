"""Calibrate the threshold from the user's own judgments of pairs ("same" or "different").

The model. A judged pair is (similarity s, same ∈ {0, 1}). We estimate ``p(s) = P(same | s)``
with isotonic regression (pool-adjacent-violators: a more similar pair is never *less* likely to
be a duplicate), linear between judged similarities and flat beyond them. Because which pairs get
judged depends only on their similarity, ``p(s)`` is estimated without bias however the pairs were
chosen (spread over bands, actively, or from review decisions). Above the most similar pair judged
different, the fit says "no different pairs": real collections behave so (look-alikes stop at
some similarity). A logistic fit was tried: on real photos (bench/calibration.py) its symmetric
tail leaks false positives into the mass of true duplicates and every seed's threshold came out
far too high; see docs/benchmarks-calibration.md for both, and for where isotonic under-covers.

The population. The catalog's similarity forest holds an exact histogram of every pair's
similarity above its floor. Precision and recall of "duplicate iff s >= t" over the *pairs* of
the collection are then

    precision(t) = Σ_{s>=t} p(s)·N(s) / Σ_{s>=t} N(s)
    recall(t)    = Σ_{s>=t} p(s)·N(s) / Σ_{s>=floor} p(s)·N(s)

(recall counts duplicates down to the floor of the calibration range; pairs below it are taken
as different). Both are monotone in t when p is, so "the threshold that reaches the target
precision with the highest recall" is the lowest t with precision(t) >= target.

The interval. The fitted threshold is refitted under draws of P(same): each draw resamples the
judgments, takes the isotonic fit's pooled blocks (k "same" of n) each from Beta(k + 1/2,
n - k + 1/2) and makes them monotone again (:func:`posterior_thresholds`); the 95% interval is
the union of the 2.5%-97.5% range of those thresholds and the bootstrap spread (the hull of the
percentile and basic intervals of a plain resample). A plain resample cannot produce a different
pair where none was judged: on photo-like populations its interval covered the true threshold in
23 of 50 seeds, the union in 50 of 50 (bench/calibration_coverage.py; docs/benchmarks-calibration.md);
the Jeffreys draws alone lean high where P(same) steps from 0 to 1 (38 of 50), which the
bootstrap's spread covers (48 of 50). The bootstrap also drives *active sampling*: the next
pairs offered sit at quantiles of the bootstrap thresholds, where an answer moves the fit (its
spread is ``Calibration.spread``).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from .catalog import Catalog
from .errors import InputError, NeardupError

#: Fewer judgments than this and no fit is attempted.
MIN_JUDGMENTS = 10
#: Sampling bands cover [default - SPAN*(1 - default), 1], split into this many equal bands.
N_BANDS = 8
SPAN = 1.0
#: Bins of the population histogram used by the fit (over the calibration range).
GRID_BINS = 2000
OBJECTIVES = ("precision", "f1")
JUDGMENT_SOURCES_REVIEW = {"not_duplicate": False, "keep": False, "same": True}


class CalibrationNeedsMore(NeardupError):
    """The judgments cannot support a fit yet; the message says which band to judge next."""

    def __init__(self, message: str, band: tuple[float, float] | None = None) -> None:
        super().__init__(message)
        self.band = band


# --------------------------------------------------------------------------------------------
# the fit on arrays (pure)
# --------------------------------------------------------------------------------------------
def isotonic(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of y on x: ``(unique x ascending, fitted value at each)`` (pool adjacent violators)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64)
    ux, inv = np.unique(x, return_inverse=True)
    sw = np.bincount(inv, weights=w, minlength=len(ux))
    sy = np.bincount(inv, weights=w * y, minlength=len(ux))
    val: list[float] = []
    wt: list[float] = []
    cnt: list[int] = []
    for k in range(len(ux)):
        v, ww, c = sy[k] / sw[k], sw[k], 1
        while val and val[-1] > v:
            pv, pw, pc = val.pop(), wt.pop(), cnt.pop()
            v = (pv * pw + v * ww) / (pw + ww)
            ww += pw
            c += pc
        val.append(v)
        wt.append(ww)
        cnt.append(c)
    return ux, np.repeat(np.asarray(val), np.asarray(cnt, dtype=np.int64))


def p_same(s: np.ndarray, sims: np.ndarray, same: np.ndarray) -> np.ndarray:
    """The fitted P(same | similarity) at ``s``: isotonic on the judgments, linear between them, flat beyond."""
    xs, ps = isotonic(sims, same)
    return np.interp(np.asarray(s, np.float64), xs, ps)


@dataclass(frozen=True)
class Population:
    """How many pairs of the collection fall in each similarity bin: ``counts[k]`` in ``[edges[k], edges[k+1])``."""

    edges: np.ndarray
    counts: np.ndarray

    @property
    def floor(self) -> float:
        return float(self.edges[0])

    @property
    def centres(self) -> np.ndarray:
        return 0.5 * (self.edges[:-1] + self.edges[1:])

    @classmethod
    def from_similarities(cls, sims: np.ndarray, floor: float, bins: int = GRID_BINS) -> "Population":
        """Bin a list of pair similarities (those below ``floor`` are dropped; >= 1 go in the top bin)."""
        edges = np.linspace(floor, 1.0, bins + 1)
        s = np.asarray(sims, dtype=np.float64)
        s = s[s >= floor]
        k = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
        return cls(edges, np.bincount(k, minlength=bins).astype(np.float64))

    @classmethod
    def from_hist(cls, hist: np.ndarray, hist_floor: float, hist_step: float, floor: float,
                  bins: int = GRID_BINS) -> "Population":
        """Re-bin a fine histogram (bin b = ``[hist_floor + b*step, ...)``) onto ``bins`` bins over [floor, 1]."""
        edges = np.linspace(floor, 1.0, bins + 1)
        lefts = hist_floor + np.arange(len(hist)) * hist_step
        keep = lefts >= floor - 1e-12
        k = np.clip(np.searchsorted(edges, lefts[keep] + 1e-12, side="right") - 1, 0, bins - 1)
        return cls(edges, np.bincount(k, weights=np.asarray(hist, np.float64)[keep], minlength=bins))


def _curves(pop: Population, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of "s >= edges[k]" for every bin edge k, given P(same) at each bin centre."""
    tp = np.cumsum((p * pop.counts)[::-1])[::-1]
    n = np.cumsum(pop.counts[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n > 0, tp / n, 1.0)
        recall = tp / tp[0] if tp[0] > 0 else np.zeros_like(tp)
    return precision, recall


def _choose(pop: Population, precision: np.ndarray, recall: np.ndarray, target: float,
            objective: str) -> int | None:
    """Index of the chosen bin edge, or None when the target precision is reached nowhere."""
    if objective == "f1":
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return int(np.argmax(f1)) if f1.max() > 0 else None
    ok = np.flatnonzero(precision >= target - 1e-12)
    return int(ok[0]) if len(ok) else None


def fit_arrays(sims: np.ndarray, same: np.ndarray, pop: Population, *, target: float = 0.99,
               objective: str = "precision") -> tuple[float | None, float, float]:
    """Point fit: ``(threshold or None if unreachable, precision, recall)`` at the chosen threshold."""
    precision, recall = _curves(pop, p_same(pop.centres, sims, same))
    k = _choose(pop, precision, recall, target, objective)
    if k is None:
        return None, float(precision.max()), 0.0
    return float(pop.edges[k]), float(precision[k]), float(recall[k])


def bootstrap_thresholds(sims: np.ndarray, same: np.ndarray, pop: Population, *, target: float = 0.99,
                         objective: str = "precision", n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Fitted thresholds of ``n_boot`` resamples of the judgments (1.0 where the target is unreachable)."""
    rng = np.random.default_rng(seed)
    sims = np.asarray(sims, np.float64)
    same = np.asarray(same, np.float64)
    out = np.empty(n_boot)
    for r in range(n_boot):
        idx = rng.integers(0, len(sims), len(sims))
        t, _, _ = fit_arrays(sims[idx], same[idx], pop, target=target, objective=objective)
        out[r] = 1.0 if t is None else t
    return out


def posterior_thresholds(sims: np.ndarray, same: np.ndarray, pop: Population, *, target: float = 0.99,
                         objective: str = "precision", n_boot: int = 1000, seed: int = 0,
                         resample: bool = True) -> np.ndarray:
    """Fitted thresholds under ``n_boot`` draws of P(same) (1.0 where the target is unreachable).

    Each draw resamples the judgments (``resample``: as the bootstrap does, so where the isotonic
    fit pools them varies too), pools them into the isotonic fit's blocks of equal fitted value,
    takes each block's P(same) from Beta(k + 1/2, n - k + 1/2) (Jeffreys; k "same" of n), makes
    those monotone again (pool adjacent violators, weights n), and refits the threshold. Unlike a
    resample alone, a block judged all "same" still allows the different pairs that 60 judgments
    rarely meet (see docs/benchmarks-calibration.md, "Interval coverage").
    """
    rng = np.random.default_rng(seed)
    sims = np.asarray(sims, np.float64)
    same = np.asarray(same, np.float64)
    out = np.empty(n_boot)
    for r in range(n_boot):
        idx = rng.integers(0, len(sims), len(sims)) if resample else np.arange(len(sims))
        ux, inv = np.unique(sims[idx], return_inverse=True)
        n_u = np.bincount(inv, minlength=len(ux)).astype(np.float64)
        k_u = np.bincount(inv, weights=same[idx], minlength=len(ux))
        fitted = isotonic(ux, k_u / n_u, n_u)[1]
        block = np.r_[0, np.cumsum(np.diff(fitted) != 0)]
        nb = np.bincount(block, weights=n_u)
        kb = np.bincount(block, weights=k_u)
        pb = rng.beta(kb + 0.5, nb - kb + 0.5)
        _, pb = isotonic(np.arange(len(nb), dtype=np.float64), pb, nb)
        p = np.interp(pop.centres, ux, pb[block])
        precision, recall = _curves(pop, p)
        k = _choose(pop, precision, recall, target, objective)
        out[r] = 1.0 if k is None else float(pop.edges[k])
    return out


#: How the 95% interval is made (see :func:`fit`); "union" is the default since the coverage study.
INTERVALS = ("union", "posterior", "hull", "percentile")


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """A fitted threshold, its 95% bootstrap interval, and what a run at each would do."""

    model: str
    threshold: float
    low: float
    high: float
    precision: float
    recall: float
    judgments: int
    n_same: int
    n_different: int
    target: float
    objective: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)   # "threshold"/"low"/"high" -> suppressed, retained
    counts_mode: str = "components"     # the grouping the counts come from (see :func:`calibrate`)
    next_band: tuple[float, float] | None = None
    draws: np.ndarray | None = field(default=None, repr=False)
    #: the bootstrap spread of the fit (what active sampling narrows); the 95% interval is (low, high)
    spread: tuple[float, float] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("draws")
        d.pop("spread")
        for k in ("threshold", "low", "high", "precision", "recall"):
            d[k] = round(float(d[k]), 6)
        d["next_band"] = None if self.next_band is None else [round(v, 4) for v in self.next_band]
        return d


def sampling_bands(default: float, floor: float | None = None) -> list[tuple[float, float]]:
    """The :data:`N_BANDS` equal bands from ``default - SPAN*(1 - default)`` (or ``floor``) up to 1."""
    lo = default - SPAN * (1.0 - default) if floor is None else floor
    lo = float(min(max(lo, 0.01), default - 1e-3))
    edges = np.linspace(lo, 1.0, N_BANDS + 1)
    return [(round(float(a), 6), round(float(b), 6)) for a, b in zip(edges[:-1], edges[1:])]


def _band_text(band: tuple[float, float]) -> str:
    return f"{band[0]:.3f}:{band[1]:.3f}"


def fit(sims: np.ndarray, same: np.ndarray, pop: Population, *, model: str = "", target: float = 0.99,
        objective: str = "precision", n_boot: int = 1000, seed: int = 0, interval: str = "union") -> Calibration:
    """Fit the threshold and its interval from judged pairs over a population of pair similarities.

    Raises :class:`CalibrationNeedsMore` (naming the band to judge next) for too few or one-sided
    judgments, or when the threshold lies beyond the judged range.
    """
    if objective not in OBJECTIVES:
        raise InputError(f"objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    if not (0.5 <= target < 1.0):
        raise InputError(f"target precision {target}: give a value in [0.5, 1)")
    sims = np.asarray(sims, np.float64)
    same = np.asarray(same, np.float64)
    n = len(sims)
    n_same = int(same.sum())
    bands = [(float(a), float(b)) for a, b in zip(pop.edges[:-1:GRID_BINS // N_BANDS],
                                                  pop.edges[GRID_BINS // N_BANDS::GRID_BINS // N_BANDS])]
    if n < MIN_JUDGMENTS:
        counts = [int(((sims >= a) & (sims < b)).sum()) for a, b in bands]
        band = bands[int(np.argmin(counts))]
        raise CalibrationNeedsMore(f"only {n} judgment{'s' if n != 1 else ''}: judge at least {MIN_JUDGMENTS} "
                                   f"(next: pairs in band {_band_text(band)})", band)
    if n_same == 0:
        band = (float(sims.max()), 1.0)
        raise CalibrationNeedsMore(f"none of the {n} judged pairs is the same image: judge pairs above "
                                   f"{sims.max():.3f} (band {_band_text(band)})", band)
    if n_same == n:
        band = (max(pop.floor, float(sims.min()) - (1 - pop.floor) / N_BANDS), float(sims.min()))
        raise CalibrationNeedsMore(f"all {n} judged pairs are the same image: judge pairs below "
                                   f"{sims.min():.3f} (band {_band_text(band)})", band)
    t, prec, rec = fit_arrays(sims, same, pop, target=target, objective=objective)
    if t is None:
        hi_diff = float(sims[same == 0].max())
        band = (hi_diff, 1.0)
        raise CalibrationNeedsMore(f"precision {target:g} is reached at no threshold: a pair judged different has "
                                   f"similarity {hi_diff:.3f}; judge more pairs in band {_band_text(band)} "
                                   f"(or lower --target-precision)", band)
    lo_diff = float(sims[same == 0].min())
    if t < lo_diff:
        band = (max(pop.floor, lo_diff - (1 - pop.floor) / N_BANDS), lo_diff)
        raise CalibrationNeedsMore(f"the threshold lies below every pair judged different ({lo_diff:.3f}): "
                                   f"judge pairs in band {_band_text(band)}", band)
    if interval not in INTERVALS:
        raise InputError(f"interval {interval!r}: use one of {', '.join(INTERVALS)}")
    # the bootstrap draws steer active sampling (active_targets); the interval is made as asked
    draws = bootstrap_thresholds(sims, same, pop, target=target, objective=objective, n_boot=n_boot, seed=seed)
    q_lo, q_hi = (float(v) for v in np.quantile(draws, [0.025, 0.975]))
    # the spread of the fit given these judgments: the hull of the percentile and the basic
    # (reflected) bootstrap intervals; it steers active sampling (active_targets, offer_pairs)
    spread = (max(pop.floor, min(q_lo, 2 * t - q_hi, t)), min(float(pop.edges[-2]), max(q_hi, 2 * t - q_lo, t)))
    if interval in ("posterior", "union"):
        post = posterior_thresholds(sims, same, pop, target=target, objective=objective, n_boot=n_boot, seed=seed + 1)
        p_lo, p_hi = (float(v) for v in np.quantile(post, [0.025, 0.975]))
        low, high = max(pop.floor, min(p_lo, t)), min(1.0, max(p_hi, t))
        if interval == "union":   # with the bootstrap spread, which covers where the posterior is biased up
            low, high = min(low, spread[0]), max(high, spread[1])
    elif interval == "percentile":
        low, high = min(q_lo, t), max(q_hi, t)
    else:
        low, high = spread
    return Calibration(model=model, threshold=t, low=low, high=high, precision=prec, recall=rec, judgments=n,
                       n_same=n_same, n_different=n - n_same, target=target, objective=objective,
                       next_band=(low, min(1.0, high + (pop.edges[1] - pop.edges[0]))), draws=draws, spread=spread)


def active_targets(cal: Calibration, k: int) -> np.ndarray:
    """Similarities where the next ``k`` judgments narrow the interval most.

    Half sit at quantiles of the bootstrap thresholds (where an answer moves the fit); half are
    spread from the median draw up to beyond the interval's top, because the precision at a
    threshold is decided by the different pairs *above* it, which the fit has seen least of.
    (On the labelled photos this beat quantiles alone: 20 of 20 seeds within tolerance vs 17.)
    """
    draws = np.sort(cal.draws if cal.draws is not None and len(cal.draws) else np.array([cal.threshold]))
    half = k // 2
    at = np.quantile(draws, (np.arange(half) + 0.5) / half) if half else np.zeros(0)
    low, high = cal.spread or (cal.low, cal.high)
    width = max(high - low, 0.01)
    up = np.linspace(float(np.median(draws)), min(1.0, high + width / 2), k - half)
    return np.r_[at, up]


# --------------------------------------------------------------------------------------------
# catalog level: judgments table, population, calibrations table
# --------------------------------------------------------------------------------------------
def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _ordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def pair_similarities(cat: Catalog, model: str, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Cosine similarity of each (a, b) under ``model`` (float64 dot of the stored unit vectors)."""
    if not pairs:
        return np.zeros(0)
    ids = sorted({x for p in pairs for x in p})
    _, _, vectors = cat.embedding_vectors(model)
    rows, found = cat.embedding_rows(model, ids)
    pos = dict(zip(found.tolist(), rows.tolist()))
    missing = [i for i in ids if i not in pos]
    if missing:
        raise InputError(f"image {missing[0]!r} has no {model} embedding")
    ia = np.fromiter((pos[a] for a, _ in pairs), np.int64, len(pairs))
    ib = np.fromiter((pos[b] for _, b in pairs), np.int64, len(pairs))
    va = np.asarray(vectors[ia], np.float64)
    vb = np.asarray(vectors[ib], np.float64)
    return np.einsum("ij,ij->i", va, vb)


def resolve_model(cat: Catalog, model: str | None) -> str:
    """The model named, or the catalog's default one (CatalogError if it has no embeddings)."""
    from .embed import canonical_name

    if model is None:
        return cat.default_model()
    try:
        return canonical_name(model) if model not in {m["model"] for m in cat.embedding_models()} else model
    except InputError:
        return model


def add_judgments(cat: Catalog, rows: Iterable[tuple[str, str, bool]], model: str, source: str) -> int:
    """Store judged pairs (a, b, same) for ``model``; the latest judgment of a pair is the one that counts."""
    rows = [(*_ordered(str(a), str(b)), bool(s)) for a, b, s in rows]
    if not rows:
        return 0
    sims = pair_similarities(cat, model, [(a, b) for a, b, _ in rows])
    now = _now()
    t = pa.table({"a": [r[0] for r in rows], "b": [r[1] for r in rows], "same": [r[2] for r in rows],
                  "source": [source] * len(rows), "model": [model] * len(rows),
                  "similarity": sims.astype(np.float64), "created_at": pa.array([now] * len(rows), pa.timestamp("us"))})
    with cat.transaction() as con:
        with cat.registered("_judged", t):
            con.execute("INSERT INTO judgments SELECT a, b, same, source, model, similarity, created_at FROM _judged")
        cat.describe("recorded {n} pair judgment(s)", len(rows))
    return len(rows)


def judgments(cat: Catalog, model: str | None = None) -> pa.Table:
    """The judgments that count (the latest per pair), for one model or all: a, b, same, similarity, source, model, created_at."""
    where = "WHERE model = ?" if model else ""
    return cat.sql(
        f"""SELECT a, b, same, similarity, source, model, created_at FROM (
              SELECT *, row_number() OVER (PARTITION BY model, a, b ORDER BY created_at DESC) AS k
              FROM judgments {where}) WHERE k = 1 ORDER BY model, similarity DESC, a, b""",
        [model] if model else None)


def export_judgments(cat: Catalog, out: str | Path, model: str | None = None) -> int:
    """Write the judgments that count to CSV (a, b, similarity, same as 1/0, source, model, created_at)."""
    from .paths import atomic_output, check_output_file

    check_output_file(out)  # a bad place is one line before the query
    t = judgments(cat, model)
    with atomic_output(out) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:  # whole or not at all
        w = csv.writer(f)
        w.writerow(["a", "b", "similarity", "same", "source", "model", "created_at"])
        for r in t.to_pylist():
            w.writerow([r["a"], r["b"], f"{r['similarity']:.6f}", int(r["same"]), r["source"], r["model"],
                        r["created_at"].isoformat(sep=" ", timespec="seconds") if r["created_at"] else ""])
    return t.num_rows


def model_default_threshold(model: str) -> float:
    """The model's own default threshold (the centre of the sampling bands), 0.98 when unknown."""
    from .thresholds import FALLBACK_THRESHOLD, model_default

    t = model_default(model)
    return FALLBACK_THRESHOLD if t is None else float(t)


def calibration_floor(default: float, sims: np.ndarray | None = None) -> float:
    """Bottom of the calibration range: the lowest sampling band, lowered to the lowest judged pair."""
    lo = sampling_bands(default)[0][0]
    if sims is not None and len(sims):
        lo = min(lo, math.floor(float(np.min(sims)) * 100) / 100)
    return max(lo, 0.01)


def population(cat: Catalog, model: str, floor: float) -> tuple[Population, Any]:
    """The pair-similarity histogram over [floor, 1] from the (cached) similarity forest, and the forest.

    Kept in memory per model version and floor (:mod:`neardup.judge_pool`): a refit after each
    answer does not read the collection again.
    """
    from .judge_pool import population as cached_population

    return cached_population(cat, model, floor)


def calibrate(cat: Catalog, model: str | None = None, *, target: float = 0.99, objective: str = "precision",
              n_boot: int = 1000, seed: int = 0, save: bool = True, run_counts: bool = True) -> Calibration:
    """Fit the threshold from the catalog's judgments for ``model`` and (``save``) record it as calibrated.

    ``counts`` says what a run would suppress at the threshold and at both interval ends: with
    ``run_counts``, from dry runs with the model's default grouping (exactly what ``neardup dedup``
    would do); otherwise from the forest's transitive components, an upper bound for every mode
    (``counts_mode`` says which).
    """
    model = resolve_model(cat, model)
    t = judgments(cat, model)
    sims = np.asarray(t["similarity"].to_numpy(), np.float64)
    same = np.asarray(t["same"].to_numpy(zero_copy_only=False), bool).astype(np.float64)
    floor = calibration_floor(model_default_threshold(model), sims)
    pop, forest = population(cat, model, floor)
    cal = fit(sims, same, pop, model=model, target=target, objective=objective, n_boot=n_boot, seed=seed)
    from .grouping import default_grouping

    mode = default_grouping(model)[0]
    if run_counts and mode != "components":
        from .dedup import dedup

        cal.counts_mode = mode
        for k in ("threshold", "low", "high"):
            sm = dedup(cat, getattr(cal, k), model=model, dry_run=True).summary
            cal.counts[k] = dict(suppressed=sm["suppressed"], retained=sm["retained"], groups=sm["groups"])
    else:
        cal.counts_mode = "components" if mode == "components" else "components (upper bound)"
        rows = forest.sweep([cal.threshold, cal.low, cal.high])
        cal.counts = {k: dict(suppressed=r["suppressed"], retained=r["retained"], groups=r["groups"])
                      for k, r in zip(("threshold", "low", "high"), rows)}
    if save and not cat.read_only:
        with cat.transaction() as con:
            con.execute("INSERT INTO calibrations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [model, cal.threshold, cal.low, cal.high, cal.precision, cal.recall, target, objective,
                         cal.judgments, _now()])
            cat.describe(f"saved a calibration for model {model}")
    return cal


def latest_calibration(cat: Catalog, model: str) -> dict[str, Any] | None:
    """The most recent saved calibration for ``model`` (None if never calibrated, or an older catalog)."""
    try:
        t = cat.sql("SELECT * FROM calibrations WHERE model = ? ORDER BY created_at DESC LIMIT 1", [model])
    except Exception:  # a read-only catalog made before the calibrations table existed
        return None
    rows = t.to_pylist()
    return rows[0] if rows else None


# --------------------------------------------------------------------------------------------
# pairs to judge
# --------------------------------------------------------------------------------------------
def offer_pairs(cat: Catalog, n: int, model: str | None = None, *, target: float = 0.99,
                objective: str = "precision", seed: int = 0, exclude: Iterable[tuple[str, str]] = (),
                fitted: "Calibration | CalibrationNeedsMore | None" = None) -> tuple[list[dict[str, Any]], str]:
    """``n`` unjudged pairs to judge next, and how they were chosen.

    With no usable fit yet: spread evenly over the sampling bands around the model's default
    (or the band the fit asks for). With a fit: at :func:`active_targets`, the pairs whose
    answers narrow the interval most. Judged pairs and ``exclude`` (e.g. skipped ones) are never offered.
    ``fitted``: the current fit (or why there is none) when the caller has it already.
    """
    from .judge_pool import candidate_pool

    if n < 1:
        raise InputError(f"--sample {n}: give at least 1")
    model = resolve_model(cat, model)
    jt = judgments(cat, model)
    judged = {(r["a"], r["b"]) for r in jt.select(["a", "b"]).to_pylist()}
    judged_s = np.asarray(jt["similarity"].to_numpy(), np.float64)
    default = model_default_threshold(model)
    how: str
    cal: Calibration | None = None
    need = None
    if isinstance(fitted, Calibration):
        cal = fitted
    elif isinstance(fitted, CalibrationNeedsMore):
        need = fitted.band
    else:
        try:
            cal = calibrate(cat, model, target=target, objective=objective, n_boot=400, seed=seed, save=False,
                            run_counts=False)   # (the counts are not needed to choose pairs)
        except CalibrationNeedsMore as exc:
            need = exc.band
    if cal is not None:
        targets = active_targets(cal, n)
        s_lo, s_hi = cal.spread or (cal.low, cal.high)
        width = max((s_hi - s_lo) / (2 * n), 5e-4)
        bands = [(max(-1.0, float(q) - width), min(1.0, float(q) + width)) for q in targets]
        how = (f"where the answers narrow the interval {cal.low:.4f}-{cal.high:.4f} most "
               f"(at and above the bootstrap thresholds)")
    else:
        bands = sampling_bands(default)
        # the least judged bands first (ties in a seeded order), so a single pair also explores
        shuffle = np.random.default_rng(seed).permutation(len(bands))
        judged_in = [int(((judged_s >= lo) & (judged_s < hi)).sum()) for lo, hi in bands]
        bands = [bands[k] for k in sorted(range(len(bands)), key=lambda k: (judged_in[k], shuffle[k]))]
        if need is not None and len(judged):
            bands = [need] + bands   # the band the fit asks for comes first
        how = "spread over " + ", ".join(_band_text(b) for b in bands) + f" (the {model} default is {default:g})"
    seen = set(judged) | {_ordered(str(a), str(b)) for a, b in exclude} | skipped_pairs(cat, model)
    pool = candidate_pool(cat, model, sampling_bands(default)[0][0])
    chosen: list[dict[str, Any]] = []
    _draw(pool, bands, n, seen, chosen, seed)
    if cal is not None:   # too few unjudged pairs right at the targets: widen around them, then spread
        w = width
        while len(chosen) < n and w < 0.25:
            w *= 4
            _draw(pool, [(max(-1.0, float(q) - w), min(1.0, float(q) + w)) for q in targets], n, seen, chosen, seed)
        if len(chosen) < n:
            _draw(pool, sampling_bands(default), n, seen, chosen, seed)
    chosen.sort(key=lambda r: -r["similarity"])
    return chosen, how


def _draw(pool: Any, bands: Sequence[tuple[float, float]], n: int, seen: set[tuple[str, str]],
          chosen: list[dict[str, Any]], seed: int) -> None:
    """Add unjudged pairs from ``bands`` to ``chosen`` (one per band in turn) until it holds ``n``.

    Within a band the pool's pairs come in a seeded random order weighted by the pairs each stands
    for, i.e. as a uniform draw from all the band's pairs (:mod:`neardup.judge_pool`).
    """
    pools = []
    for lo, hi in bands:
        idx = np.flatnonzero((pool.sims >= lo) & ((pool.sims < hi) if hi < 1.0 else True))
        u = np.random.default_rng(seed).random(len(idx))
        order = idx[np.argsort(-np.log(np.maximum(u, 1e-300)) / pool.weight[idx], kind="stable")]
        pools.append([(str(pool.a[q]), str(pool.b[q]), float(pool.sims[q])) for q in order])
    cursor = [0] * len(pools)
    while len(chosen) < n and any(c < len(p) for c, p in zip(cursor, pools)):
        for bi, pool in enumerate(pools):
            while cursor[bi] < len(pool):
                a, b, sim = pool[cursor[bi]]
                cursor[bi] += 1
                key = _ordered(a, b)
                if key not in seen:
                    seen.add(key)
                    chosen.append(dict(a=key[0], b=key[1], similarity=round(sim, 6)))
                    break
            if len(chosen) >= n:
                break


def write_pairs_csv(pairs: Sequence[dict[str, Any]], out: str | Path) -> None:
    """The file a person fills in: a, b, similarity, same (empty: write 1 for the same image, 0 if not)."""
    from .paths import atomic_output

    with atomic_output(out) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:  # whole or not at all
        w = csv.writer(f)
        w.writerow(["a", "b", "similarity", "same"])
        for p in pairs:
            w.writerow([p["a"], p["b"], f"{p['similarity']:.6f}", ""])


_TRUE = {"1", "true", "yes", "y", "same"}
_FALSE = {"0", "false", "no", "n", "different"}


def read_judgments_csv(path: str | Path) -> list[tuple[str, str, bool]]:
    """Judged rows of a pairs CSV (columns a, b, same; similarity optional); rows with an empty ``same`` are skipped.

    Any bad row is an :class:`InputError` naming the file, row (line number) and column.
    """
    return [(a, b, s) for _, a, b, s in _read_rows(path)[0]]


def _read_rows(path: str | Path) -> tuple[list[tuple[int, str, str, bool]], int]:
    """``([(line, a, b, same)], rows in the file)`` of a pairs CSV; see :func:`read_judgments_csv`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise InputError(f"{path}: empty file (need columns a, b, same)") from None
    except csv.Error as exc:
        raise InputError(f"{path}: row 1: {exc}") from None
    missing = [c for c in ("a", "b", "same") if c not in header]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} (need columns a, b, same; found {', '.join(header) or 'none'})")
    dup = sorted({h for h in header if header.count(h) > 1 and h in ("a", "b", "same", "similarity")})
    if dup:
        raise InputError(f"{path}: column {dup[0]!r} appears twice")
    ca, cb, cs = header.index("a"), header.index("b"), header.index("same")
    csim = header.index("similarity") if "similarity" in header else None
    out: list[tuple[int, str, str, bool]] = []
    n_rows = 0
    first_row: dict[tuple[str, str], tuple[int, bool]] = {}
    line = 1
    try:
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            n_rows += 1
            if len(row) < len(header):
                raise InputError(f"{path}: row {line}: {len(row)} fields, the header has {len(header)}")
            a, b, s = row[ca].strip(), row[cb].strip(), row[cs].strip().lower()
            if not a:
                raise InputError(f"{path}: row {line}, column a: empty image id")
            if not b:
                raise InputError(f"{path}: row {line}, column b: empty image id")
            if a == b:
                raise InputError(f"{path}: row {line}, columns a and b: the same image {a!r} twice")
            if csim is not None and row[csim].strip():
                try:
                    v = float(row[csim])
                except ValueError:
                    raise InputError(f"{path}: row {line}, column similarity: {row[csim].strip()!r} is not a number") from None
                if not (-1.0001 <= v <= 1.0001):
                    raise InputError(f"{path}: row {line}, column similarity: {v} is outside [-1, 1]")
            if not s:
                continue
            if s in _TRUE:
                same = True
            elif s in _FALSE:
                same = False
            else:
                raise InputError(f"{path}: row {line}, column same: {row[cs].strip()!r} is not 1 (same) or 0 (different)")
            key = _ordered(a, b)
            if key in first_row and first_row[key][1] != same:
                raise InputError(f"{path}: row {line}: pair {a!r}, {b!r} was judged the other way on row {first_row[key][0]}")
            first_row.setdefault(key, (line, same))
            out.append((line, a, b, same))
    except csv.Error as exc:
        raise InputError(f"{path}: row {line + 1}: {exc}") from None
    return out, n_rows


def import_judgments(cat: Catalog, path: str | Path, model: str | None = None) -> tuple[int, int]:
    """Read a judged pairs CSV and store its judgments, all or nothing: ``(stored, rows left unjudged)``."""
    model = resolve_model(cat, model)
    rows, n_rows = _read_rows(path)
    ids = sorted({x for _, a, b, _ in rows for x in (a, b)})
    if ids:
        _, found = cat.embedding_rows(model, ids)
        have = set(found.tolist())
        for line, a, b, _ in rows:
            for col, x in (("a", a), ("b", b)):
                if x not in have:
                    raise InputError(f"{path}: row {line}, column {col}: image {x!r} has no {model} embedding "
                                     "in this catalog")
    n = add_judgments(cat, [(a, b, s) for _, a, b, s in rows], model, source=f"csv:{Path(path).name}")
    return n, n_rows - n


def skip_pair(cat: Catalog, a: str, b: str, model: str) -> None:
    """Remember that the person skipped this pair (not offered again, also after a restart; never fitted)."""
    a, b = _ordered(str(a), str(b))
    with cat.transaction() as con:
        con.execute("DELETE FROM judgment_skips WHERE a = ? AND b = ? AND model = ?", [a, b, model])
        con.execute("INSERT INTO judgment_skips VALUES (?, ?, ?, ?)", [a, b, model, _now()])
        cat.describe("skipped a pair")


def skipped_pairs(cat: Catalog, model: str) -> set[tuple[str, str]]:
    """The pairs skipped for ``model`` (empty on a read-only catalog made before the table existed)."""
    try:
        rows = cat.con.execute("SELECT a, b FROM judgment_skips WHERE model = ?", [model]).fetchall()
    except Exception:
        return set()
    return {(str(a), str(b)) for a, b in rows}


def record_review_judgment(cat: Catalog, image_id: str, kind: str) -> bool:
    """A review decision on ``image_id`` as a judgment of the pair (image, its master in the latest applied run).

    ``not_duplicate`` and ``keep`` ("keep this one too") judge the pair different, ``same`` judges it
    the same. Returns False when the image has no master to pair with (not in a group of an applied run).
    """
    if kind not in JUDGMENT_SOURCES_REVIEW:
        return False
    row = cat.one("""SELECT m.master_id, r.model FROM run_members m JOIN runs r ON r.id = m.run_id
                     WHERE m.image_id = ? AND r.status = 'applied' AND m.master_id <> m.image_id
                     ORDER BY r.id DESC LIMIT 1""", [image_id])
    if row is None:
        return False
    master, model = row
    add_judgments(cat, [(image_id, master, JUDGMENT_SOURCES_REVIEW[kind])], model, source=f"review:{kind}")
    return True


def forget_review_judgment(cat: Catalog, image_id: str, kind: str) -> int:
    """Undo :func:`record_review_judgment` for a decision being removed: delete the judgments it wrote.

    Those are the rows with source ``review:<kind>`` on a pair with ``image_id`` written since the
    decision's override was made (call before removing the override). Returns rows deleted.
    """
    since = cat.scalar("SELECT max(created_at) FROM overrides WHERE image_id = ? AND kind = ?", [image_id, kind])
    if since is None or kind not in JUDGMENT_SOURCES_REVIEW:
        return 0
    params = [f"review:{kind}", image_id, image_id, since]
    n = int(cat.scalar("SELECT count(*) FROM judgments WHERE source = ? AND (a = ? OR b = ?) AND created_at >= ?", params))
    if n:
        with cat.transaction() as con:
            con.execute("DELETE FROM judgments WHERE source = ? AND (a = ? OR b = ?) AND created_at >= ?", params)
            cat.describe("removed {n} judgment(s) of an undone review decision", n)
    return n


__all__ = ["Calibration", "CalibrationNeedsMore", "Population", "add_judgments", "bootstrap_thresholds", "calibrate",
           "export_judgments", "fit", "forget_review_judgment", "fit_arrays", "import_judgments", "isotonic", "p_same", "judgments", "latest_calibration",
           "offer_pairs", "read_judgments_csv", "record_review_judgment", "sampling_bands", "skip_pair", "skipped_pairs",
           "write_pairs_csv"]
