"""How redundant is a collection? A sample's rows against all rows, with exact 95% intervals.

Two shares of the n images are estimated at a threshold t:

* ``with_duplicate``: images with at least one other image >= t.
* ``retained``: what ``dedup`` would keep in components grouping = the number of groups,
  singletons included, plus reviewer-kept copies. Components cannot be counted from a sample
  directly (retained = sum_i 1/|C(i)| needs every sampled image's group size, i.e. the whole
  group). Instead each image gets the indicator Z_i = "i is its group's master": the best-ranked
  member under the master policy (a total order, so ties are impossible). Exactly one member of
  every group has Z = 1, so sum_i Z_i = number of groups -- *exactly*, for the population, not
  only in expectation. Z_i = 0 as soon as a better-ranked member of i's group turns up.

One streaming pass (:func:`neardup.similarity.rankscan.scan_better`) compares every sampled row
with the catalog until a better-ranked neighbour appears (the row then leaves the product), which
decides most rows and tells each row whether it has a neighbour at all. The rest (local masters:
every neighbour ranks worse) are explored through their neighbours in a few more rounds, until a
better-ranked member turns up or the whole group has been seen (Z_i = 1). Models whose default
grouping is bounded split components, so they retain at least as many: :func:`estimate` says so
and gives the lower bound that still holds for them.

Both are then counts of "successes" in a finite population of n, observed in a uniform sample
of s without replacement: a hypergeometric count. The interval inverts the exact
hypergeometric test (Clopper-Pearson style), so its coverage is at least 95% by construction,
whatever the collection. A sampled image whose exploration runs out of its row budget before
it is decided (the master of a very large group) counts as 0 for the lower bound and 1 for the
upper, which keeps the guarantee. Validation: bench/estimate_coverage.py and the tests.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from .similarity.incremental import RowSource

ProgressFn = Callable[[int, int], None]


def hypergeom_interval(k: int, s: int, n: int, conf: float = 0.95) -> tuple[int, int]:
    """Exact two-sided interval for the successes K in a population of n, given k of s sampled."""
    from scipy.stats import hypergeom

    a = (1.0 - conf) / 2.0
    # lower: the smallest K with P(X >= k | K) > a ; upper: the largest K with P(X <= k | K) > a
    def sf(K: int) -> float:
        return float(hypergeom.sf(k - 1, n, K, s))

    def cdf(K: int) -> float:
        return float(hypergeom.cdf(k, n, K, s))

    lo_k, hi_k = k, n - (s - k)  # the population holds at least k and at most n - (s - k) successes
    if k == 0:
        low = 0
    else:
        lo, hi = lo_k, hi_k
        while lo < hi:
            mid = (lo + hi) // 2
            if sf(mid) > a:
                hi = mid
            else:
                lo = mid + 1
        low = lo
    if k == s:
        high = hi_k
    else:
        lo, hi = lo_k, hi_k
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cdf(mid) > a:
                lo = mid
            else:
                hi = mid - 1
        high = lo
    return int(low), int(high)


def _group(g: np.ndarray, c: np.ndarray, m: int) -> list[np.ndarray]:
    """Hits (row g, column c) as one column array per row 0..m-1."""
    order = np.argsort(g, kind="stable")
    g, c = g[order], c[order]
    bounds = np.searchsorted(g, np.arange(m + 1))
    return [c[bounds[i]:bounds[i + 1]] for i in range(m)]


def estimate_vectors(X: np.ndarray, rank: np.ndarray, threshold: float, *, sample: int | None = None,
                     seed: int = 0, kept: np.ndarray | None = None, max_rows: int | None = None,
                     batch_per_sample: int = 4, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Estimate with_duplicate and retained for unit-norm rows ``X`` (ranked by ``rank``, 0 = best).

    ``kept``: images a reviewer keeps (never suppressed: each counts as retained). ``max_rows``
    bounds the rows explored beyond the sample (default: 2 x the sample).
    """
    from .similarity.rankscan import scan_better

    t0 = time.perf_counter()
    rows = X if isinstance(X, RowSource) else RowSource(X)
    n = rows.n
    s = default_sample(n) if sample is None else int(min(max(sample, 1), n))
    rng = np.random.default_rng(seed)
    S = np.sort(rng.choice(n, s, replace=False)) if n else np.zeros(0, np.int64)
    rank = np.asarray(rank, dtype=np.int64)
    kept = np.zeros(n, bool) if kept is None else np.asarray(kept, bool)
    budget = 2 * s if max_rows is None else int(max_rows)
    big = np.iinfo(np.int64).max
    # one streaming pass: each sampled row stops at its first better-ranked neighbour (a kept image
    # at its first neighbour: it is retained whatever its group, only "has a duplicate" is asked)
    has, done, g, c, products = scan_better(rows, S, np.where(kept[S], big, rank[S]), rank, threshold,
                                            progress=progress)
    # Z: the sampled image is its group's master (or kept by a reviewer: retained either way)
    z = np.full(s, -1, dtype=np.int8)          # -1 undecided, 0 no, 1 yes
    z[~kept[S] & done] = 0                     # a neighbour ranks better
    z[kept[S] | ~has] = 1                      # kept, or no neighbour at all: a group of one
    seen: list[set[int]] = [set() for _ in range(s)]
    frontier: list[list[int]] = [[] for _ in range(s)]
    nbs = _group(g, c, s)
    for k in np.flatnonzero(z < 0).tolist():   # every neighbour ranks worse: explore the group
        nb = nbs[k]
        seen[k] = set(nb.tolist()) | {int(S[k])}
        frontier[k] = rng.permutation(nb).tolist()
    computed, rounds = s, 0
    while (z < 0).any() and computed < s + budget:
        per = batch_per_sample << min(2 * rounds, 10)  # few rounds: each one streams every row once
        pk: list[int] = []
        pv: list[int] = []
        room = s + budget - computed
        for k in np.flatnonzero(z < 0).tolist():
            take = frontier[k][:min(per, room - len(pv))]
            frontier[k] = frontier[k][len(take):]
            pk += [k] * len(take)
            pv += take
            if len(pv) >= room:
                break
        if not pv:
            break
        pk_a, pv_a = np.asarray(pk, np.int64), np.asarray(pv, np.int64)
        _, done2, g2, c2, more = scan_better(rows, pv_a, rank[S[pk_a]], rank, threshold)
        computed += len(pv)
        products += more
        rounds += 1
        z[np.unique(pk_a[done2])] = 0           # a neighbour's neighbour ranks better
        for p, nb in enumerate(_group(g2, c2, len(pv))):
            k = pk[p]
            if z[k] < 0 and len(nb):
                new = [u for u in nb.tolist() if u not in seen[k]]
                seen[k].update(new)
                frontier[k] += new
        for k in np.flatnonzero(z < 0).tolist():
            if not frontier[k]:
                z[k] = 1                     # the whole group seen, no better-ranked member
        if progress is not None:
            progress(int((z >= 0).sum()), s)
    undecided = int((z < 0).sum())
    ones = int((z == 1).sum())
    w = int(has.sum())
    w_lo, w_hi = hypergeom_interval(w, s, n) if s else (0, 0)
    r_lo, _ = hypergeom_interval(ones, s, n) if s else (0, 0)
    _, r_hi = hypergeom_interval(ones + undecided, s, n) if s else (0, 0)
    return dict(images=n, sample=s, threshold=float(threshold), with_duplicate=w / s if s else 0.0,
                with_duplicate_low=w_lo / n if n else 0.0, with_duplicate_high=w_hi / n if n else 0.0,
                retained=int(round(n * (ones + undecided / 2) / s)) if s else 0, retained_low=r_lo, retained_high=r_hi,
                undecided=undecided, rows_computed=computed, rounds=rounds,
                products_share=products / (s * n) if s and n else 0.0, grouping="components", confidence=0.95,
                seconds=round(time.perf_counter() - t0, 3))


def default_sample(n: int) -> int:
    """About 1% of the rows, between 1,000 and 5,000 (all rows when fewer): seconds even at 1M."""
    return int(min(n, max(1000, min(5000, n // 100))))


def estimate(catalog: Any, threshold: float, *, model: str | None = None, sample: int | None = None,
             seed: int = 0, prefer: str | Sequence[str] | None = None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Estimate, for a catalog, the share of images with a near-duplicate at t and what dedup would retain.

    Same scope and ranking as :func:`neardup.dedup.dedup` in components mode: vanished images are
    left out, "not a duplicate" images are singletons, reviewer masters rank first, kept copies
    count as retained. ``retained`` is for components grouping whatever the model's default;
    where that default is another mode (bounded for the SSCD models), the result says so and
    gives the lower bound that still holds for it (``retained_default_grouping_at_least``: those
    modes split components, so they retain at least as many). Reads the catalog only.
    """
    import pyarrow as pa

    from .dedup import check_threshold, load_scope
    from .grouping import default_grouping
    from .policy import DEFAULT_POLICY, parse_policy, policy_columns, priority_rank

    t = check_threshold(threshold)
    if sample is not None and sample < 1:
        from .errors import InputError

        raise InputError(f"sample {sample}: give at least 1 row (default: ~1% of the catalog)")
    policy = parse_policy(prefer if prefer is not None else DEFAULT_POLICY)
    overrides = catalog.overrides()
    base = load_scope(catalog, model)
    not_dup = overrides["not_duplicate"] & set(base.ids.tolist())
    scope = load_scope(catalog, base.model, exclude=sorted(not_dup)) if not_dup else base
    have = set(catalog.image_columns())
    meta = catalog.images([c for c in policy_columns(policy) if c in have])
    pos = {k: i for i, k in enumerate(meta["id"].to_pylist())}
    ids = scope.ids.tolist()
    meta = meta.take(pa.array(np.fromiter((pos[i] for i in ids), dtype=np.int64, count=len(ids))))
    rank = priority_rank(meta, policy)
    forced = overrides["master"] & set(ids)
    if forced:
        rank = np.where(np.fromiter((i in forced for i in ids), bool, len(ids)), rank - len(rank), rank)
    kept = np.fromiter((i in overrides["keep"] for i in ids), bool, len(ids))
    rows = RowSource(scope.vectors)
    out = estimate_vectors(rows, rank, t, sample=sample, seed=seed, kept=kept, progress=progress)
    extra = len(not_dup)  # "not a duplicate": singletons without a duplicate, retained
    n_all = out["images"] + extra
    scale = out["images"] / n_all if n_all else 0.0
    out.update(model=scope.model, images=n_all, not_duplicate=extra,
               with_duplicate=out["with_duplicate"] * scale, with_duplicate_low=out["with_duplicate_low"] * scale,
               with_duplicate_high=out["with_duplicate_high"] * scale,
               retained=out["retained"] + extra, retained_low=out["retained_low"] + extra,
               retained_high=out["retained_high"] + extra)
    mode, bound = default_grouping(scope.model)
    out["default_grouping"] = mode if bound is None else f"{mode} (bound {bound})"
    if mode != "components":
        # bounded and leader groups each split a component, never join two: at least as many groups
        out["retained_default_grouping_at_least"] = out["retained_low"]
        out["note"] = (f"retained counts groups as transitive components (the seed's rule); model {scope.model}'s "
                       f"default grouping is {out['default_grouping']}, which splits components into more groups, so "
                       f"a dedup with it retains at least {out['retained_low']:,} (95%); that count is not estimated")
    return out


__all__ = ["default_sample", "estimate", "estimate_vectors", "hypergeom_interval"]
