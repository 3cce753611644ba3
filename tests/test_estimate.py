"""estimate: exact hypergeometric intervals, the master-indicator identity, and measured coverage."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import hypergeom
from test_incremental import canon, ref

from neardup import Catalog
from neardup.estimate import estimate, estimate_vectors, hypergeom_interval
from neardup.policy import priority_rank
from neardup.synthetic import seed_shaped


@pytest.mark.parametrize("n,s", [(30, 7), (60, 60), (45, 1), (80, 20)])
def test_interval_covers_every_population_at_least_95_percent(n, s):
    """For every possible number K of successes, the exact probability that the interval holds K is >= 0.95."""
    ivals = [hypergeom_interval(k, s, n) for k in range(s + 1)]
    for K in range(n + 1):
        lo_k, hi_k = max(0, s - (n - K)), min(s, K)
        cover = sum(hypergeom.pmf(k, n, K, s) for k in range(lo_k, hi_k + 1) if ivals[k][0] <= K <= ivals[k][1])
        assert cover >= 0.95 - 1e-9, (K, cover)


def truth(X: np.ndarray, t: float) -> tuple[int, float]:
    labels, _ = ref(X, t)
    sizes = np.bincount(labels)
    return len(sizes), float((sizes[labels] > 1).mean())


def test_full_sample_is_exact():
    """Sampling every row, the masters found are exactly the groups: the interval is the true value."""
    c = seed_shaped(1500, 32, seed=3)
    X = canon(c.vectors)
    want_r, want_w = truth(X, 0.97)
    e = estimate_vectors(X, priority_rank(c.meta_table()), 0.97, sample=len(X), max_rows=10 * len(X))
    assert e["undecided"] == 0
    assert e["retained"] == e["retained_low"] == e["retained_high"] == want_r
    assert e["with_duplicate"] == pytest.approx(want_w) and e["with_duplicate_low"] == pytest.approx(want_w)


def test_coverage_over_generated_collections():
    """40 seed-shaped collections (bench/estimate_coverage.py runs more): the 95% intervals hold the
    exact values (float64 brute force) in at least 36 of them -- a guaranteed-coverage interval
    misses more than 4 of 40 with probability < 5%."""
    hit_r = hit_w = 0
    for seed in range(40):
        c = seed_shaped(1200, 24, seed=seed, giant_span=float(np.random.default_rng(seed).uniform(1, 4)))
        X = canon(c.vectors)
        want_r, want_w = truth(X, 0.97)
        e = estimate_vectors(X, priority_rank(c.meta_table()), 0.97, sample=120, seed=1000 + seed)
        hit_r += e["retained_low"] <= want_r <= e["retained_high"]
        hit_w += e["with_duplicate_low"] - 1e-12 <= want_w <= e["with_duplicate_high"] + 1e-12
    assert hit_r >= 36 and hit_w >= 36, (hit_r, hit_w)


def test_catalog_estimate_counts_like_dedup_and_writes_nothing(db):
    from neardup.dedup import dedup

    c = seed_shaped(900, 24, seed=8)
    X = canon(c.vectors)
    with Catalog(db) as cat:
        cat.put_embeddings("m", c.ids, X, images=c.meta_table())
        cat.add_override(str(c.ids[0]), "not_duplicate")
        cat.add_override(str(c.ids[1]), "keep")
        want = dedup(cat, 0.97, dry_run=True).summary
    before = db.read_bytes()
    r = subprocess.run([sys.executable, "-m", "neardup", "estimate", "--threshold", "0.97", "--json",
                        "--sample", "900", "--db", str(db)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)
    for key in ("with_duplicate", "with_duplicate_low", "with_duplicate_high", "retained", "retained_low",
                "retained_high", "sample"):
        assert key in e
    assert e["retained"] == e["retained_low"] == e["retained_high"] == want["retained"]
    assert db.read_bytes() == before
    with Catalog(db, read_only=True) as cat:
        small = estimate(cat, 0.97, sample=200)
    assert small["retained_low"] <= want["retained"] <= small["retained_high"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), n=st.integers(2, 400), m=st.integers(1, 40), t=st.sampled_from([0.8, 0.9, 0.97]),
       wave=st.sampled_from([3, 64, 8192]), threads=st.sampled_from([1, 2, 3]))
def test_scan_better_against_brute_force(seed, n, m, t, wave, threads):
    """Each row: has a neighbour >= t (itself excluded); done iff one ranks below its target; a row
    not done lists exactly its neighbours -- in any waves, tiles and threads."""
    from neardup.similarity.incremental import RowSource
    from neardup.similarity.rankscan import scan_better

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 12))
    X = canon(centres[rng.integers(0, 4, n)] + 0.25 * rng.standard_normal((n, 12)))
    node = rng.integers(0, n, m)
    rank = rng.permutation(n).astype(np.int64)
    target = np.where(rng.random(m) < 0.2, np.iinfo(np.int64).max, rank[node])
    has, done, g, c, _ = scan_better(RowSource(X), node, target, rank, t, first_wave=wave, max_wave=2 * wave,
                                     col_chunk=max(1, wave // 2), query_block=5, threads=threads)
    S = np.asarray(X, np.float64)[node] @ np.asarray(X, np.float64).T      # exact (canonical vectors)
    S[np.arange(m), node] = -np.inf
    nb = [np.flatnonzero(S[i] >= t) for i in range(m)]
    assert has.tolist() == [len(x) > 0 for x in nb]
    assert done.tolist() == [bool((rank[x] < target[i]).any()) for i, x in enumerate(nb)]
    for i in range(m):
        got = sorted(c[g == i].tolist())
        assert got == ([] if done[i] else nb[i].tolist())


def test_estimate_says_which_grouping_and_bounds_the_default(db):
    """A catalog of the sscd model (default grouping: bounded): retained is for components, the output
    says so, and its lower bound holds for the bounded dedup (which splits components)."""
    from neardup.dedup import dedup

    c = seed_shaped(800, 24, seed=5)
    X = canon(c.vectors)
    with Catalog(db) as cat:
        cat.put_embeddings("sscd", c.ids, X, images=c.meta_table())
        bounded = dedup(cat, 0.95, dry_run=True).summary
        comps = dedup(cat, 0.95, dry_run=True, mode="components").summary
        e = estimate(cat, 0.95, sample=800)
    assert e["grouping"] == "components" and e["default_grouping"].startswith("bounded")
    assert e["retained"] == comps["retained"]                  # full sample: exact, for components
    assert e["retained_default_grouping_at_least"] == e["retained_low"] <= bounded["retained"]
    assert bounded["retained"] >= comps["retained"]
    r = subprocess.run([sys.executable, "-m", "neardup", "estimate", "--threshold", "0.95", "--sample", "100",
                        "--db", str(db)], capture_output=True, text=True)
    assert r.returncode == 0 and "default grouping is bounded" in " ".join(r.stderr.split())
