"""The exact similarity forest against numpy all-pairs + scipy connected components."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import all_pair_sims, clustered_vectors, min_margin, reference_groups, same_partition

from neardup.similarity.exact import exact_forest, filter_levels
from neardup.similarity.forest import SimilarityForest, merge_forests
from neardup.synthetic import seed_shaped


@pytest.fixture(scope="module")
def seed_small():
    return seed_shaped(3000, 64, seed=3)


@pytest.mark.parametrize("t", [0.99, 0.98, 0.97, 0.95])
def test_seed_shaped_groups_equal_reference(seed_small, t):
    X = seed_small.vectors
    ref, ref_pairs = reference_groups(X, t)
    forest = exact_forest(X, 0.95, block_rows=512, col_chunk=1024)
    assert same_partition(forest.components(t), ref)
    # pair counts come from a 1e-5 histogram: exact up to pairs within one bin of t
    assert abs(forest.pair_count(t) - ref_pairs) <= max(5, ref_pairs * 1e-3)


def test_sweep_matches_reference_counts(seed_small):
    X = seed_small.vectors
    forest = exact_forest(X, 0.95)
    for row in forest.sweep([0.99, 0.98, 0.97, 0.95]):
        labels, _ = reference_groups(X, row["threshold"])
        sizes = np.bincount(labels)
        assert row["groups"] == int((sizes >= 2).sum())
        assert row["retained"] == len(sizes)
        assert row["suppressed"] == len(X) - len(sizes)
        assert row["largest_group"] == int(sizes.max())


def test_block_sizes_do_not_change_the_forest(seed_small):
    X = seed_small.vectors
    a = exact_forest(X, 0.97, block_rows=128, col_chunk=256)
    b = exact_forest(X, 0.97, block_rows=4096, col_chunk=8192)
    for t in (0.97, 0.975, 0.985, 0.995):
        assert same_partition(a.components(t), b.components(t))
    assert np.array_equal(a.hist, b.hist)


def test_chain_groups_transitively():
    # A~B and B~C above 0.9, A~C below: one group of three
    a = np.array([1.0, 0.0, 0.0])
    c = np.array([np.cos(0.8), np.sin(0.8), 0.0])
    b = np.array([np.cos(0.4), np.sin(0.4), 0.0])
    X = np.stack([a, b, c, [0.0, 0.0, 1.0]]).astype(np.float32)
    assert float(X[0] @ X[2]) < 0.9 < float(X[0] @ X[1])
    f = exact_forest(X, 0.9)
    lab = f.components(0.9)
    assert lab[0] == lab[1] == lab[2] != lab[3]
    S = all_pair_sims(X)
    assert f.weakest_links(0.9)[int(lab[0])] == min(S[0, 1], S[1, 2])  # exact, no tolerance


def test_levels_cover_floor_to_one():
    lv = filter_levels(0.9)
    assert lv[0] == 1.0 and lv[-1] == pytest.approx(0.9)
    assert np.all(np.diff(lv) < 0)


def test_forest_merge_of_row_partitions_equals_whole(seed_small):
    X = seed_small.vectors[:800]
    whole = exact_forest(X, 0.95)
    # split the pairs into: within first half, within second half, across (cross via full pass edges)
    S = X @ X.T
    i, j = np.nonzero(np.triu(S >= 0.95, 1))
    w = S[i, j]
    parts = [SimilarityForest.from_edges(len(X), i[m], j[m], w[m], 0.95) for m in
             (i < 300, (i >= 300) & (j < 600), (i >= 300) & (j >= 600))]
    merged = merge_forests(parts, len(X))
    for t in (0.95, 0.97, 0.99):
        assert same_partition(merged.components(t), whole.components(t))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(2, 160), dim=st.sampled_from([3, 8, 32]),
       centers=st.integers(1, 6), spread=st.floats(0.02, 0.4), t=st.sampled_from([0.9, 0.95, 0.98, 0.99]))
def test_property_components_equal_reference(seed, n, dim, centers, spread, t):
    rng = np.random.default_rng(seed)
    X = clustered_vectors(rng, n, dim, centers, spread)
    assume(min_margin(X, t) > 1e-5)
    ref, _ = reference_groups(X, t)
    f = exact_forest(X, t, block_rows=32, col_chunk=48)
    assert same_partition(f.components(t), ref)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 120))
def test_property_raising_threshold_only_splits(seed, n):
    rng = np.random.default_rng(seed)
    X = clustered_vectors(rng, n, 16, 3, 0.15)
    f = exact_forest(X, 0.9)
    prev = None
    for t in (0.9, 0.93, 0.96, 0.99):
        lab = f.components(t)
        if prev is not None:
            # every group at the higher threshold lies inside one group at the lower one
            for g in np.unique(lab):
                assert len(np.unique(prev[lab == g])) == 1
        prev = lab


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 120))
def test_property_permutation_invariant(seed, n):
    rng = np.random.default_rng(seed)
    X = clustered_vectors(rng, n, 16, 3, 0.12)
    assume(min_margin(X, 0.97) > 1e-5)
    perm = rng.permutation(n)
    a = exact_forest(X, 0.97).components(0.97)
    b = exact_forest(X[perm], 0.97).components(0.97)
    inv = np.empty(n, int)
    inv[perm] = np.arange(n)
    assert same_partition(a, b[inv])


def test_threshold_outside_range_rejected(seed_small):
    f = exact_forest(seed_small.vectors[:50], 0.9)
    for bad in (0.0, 1.5, -1.0, 0.5):
        with pytest.raises(ValueError):
            f.components(bad)
