"""Forest merge of tiles equals the forest of the whole (against numpy all-pairs + scipy).

The reference never touches neardup's code: all pairs by numpy, components by scipy. Thresholds
are placed between distinct similarities (never within 1e-5 of one), so float32 rounding of a
differently blocked GEMM cannot flip a pair.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neardup.distributed.tiles import TileScanner, tile_forest, upper_tiles
from neardup.similarity.forest import SimilarityForest, hist_bins, merge_forests


def ref_labels(X: np.ndarray, t: float) -> np.ndarray:
    """Connected components of 'cosine >= t' by brute force."""
    S = X.astype(np.float64) @ X.astype(np.float64).T
    i, j = np.nonzero(np.triu(S >= t, k=1))
    n = len(X)
    g = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two labelings describe the same partition (labels may differ)."""
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def safe_thresholds(X: np.ndarray, floor: float, k: int = 5) -> list[float]:
    S = (X.astype(np.float64) @ X.astype(np.float64).T)[np.triu_indices(len(X), 1)]
    v = np.unique(np.r_[S[S >= floor], 1.0])
    cands = [(v[i] + v[i + 1]) / 2 for i in range(len(v) - 1) if v[i + 1] - v[i] > 2e-5]
    cands = [c for c in cands if c - floor > 1e-5]
    if not cands:
        return []
    idx = np.linspace(0, len(cands) - 1, min(k, len(cands))).round().astype(int)
    return [float(cands[i]) for i in np.unique(idx)]


def clustered(seed: int, n: int, d: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 6), d))
    X = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def tiled_forest(X: np.ndarray, floor: float, tr: int, tc: int) -> SimilarityForest:
    fs = []
    for rows, cols in upper_tiles(len(X), tr, tc):
        s, d, w, h = tile_forest(X, floor, rows, cols, block_rows=max(2, tr // 2), col_chunk=max(4, tc // 2))
        assert np.all(s < d) and np.all(w >= np.float32(floor))
        fs.append(SimilarityForest.from_edges(len(X), s, d, w, floor, h))
    return merge_forests(fs, len(X))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), d=st.integers(2, 12),
       spread=st.floats(0.05, 0.6), floor=st.floats(0.5, 0.99), tr=st.integers(4, 24), mult=st.integers(1, 3))
def test_tiles_merge_equals_whole(seed, n, d, spread, floor, tr, mult):
    X = clustered(seed, n, d, spread)
    f = tiled_forest(X, floor, tr, tr * mult)
    # histogram: every pair >= floor counted exactly once over the tiles
    S = (X @ X.T)[np.triu_indices(n, 1)]
    assert f.hist.sum() == int((S >= np.float32(floor)).sum())
    assert len(f.src) <= n - 1
    for t in safe_thresholds(X, floor):
        assert same_partition(f.components(t), ref_labels(X, t)), t


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), parts=st.integers(1, 6))
def test_merge_of_arbitrary_edge_partitions(seed, n, parts):
    """MSF(union) = merge of MSFs of any partition of the pairs (the cycle property)."""
    X = clustered(seed, n, 6, 0.3)
    floor = 0.6
    S = X @ X.T
    i, j = np.nonzero(np.triu(S >= np.float32(floor), k=1))
    which = np.random.default_rng(seed).integers(0, parts, len(i))
    fs = [SimilarityForest.from_edges(n, i[which == p], j[which == p], S[i[which == p], j[which == p]], floor)
          for p in range(parts)]
    m = merge_forests(fs, n)
    for t in safe_thresholds(X, floor):
        assert same_partition(m.components(t), ref_labels(X, t))


def test_scanner_diagonal_and_offdiagonal_cover_a_partition_tile():
    """Members x members (upper) + other rows x members: the ANN tile shape."""
    X = clustered(1, 120, 8, 0.25)
    floor = 0.7
    m = 50
    sc = TileScanner(X, floor, block_rows=16, col_chunk=20)
    sc.scan(0, m, 0, m, diagonal=True)
    sc.scan(m, 120, 0, m, diagonal=False)
    s, d, w = sc.edges()
    sub = np.zeros((120, 120), bool)
    sub[:m, :m] = np.triu(np.ones((m, m), bool), 1)
    sub[m:, :m] = True
    S = X @ X.T
    assert sc.histogram().sum() == int(((S >= np.float32(floor)) & sub).sum())
    assert sc.compared == int(sub.sum())
    # forest of the scanned pairs = components of the scanned graph
    for t in safe_thresholds(X, floor):
        i, j = np.nonzero(sub & (S.astype(np.float64) >= t))
        ref = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(120, 120)), directed=False)[1]
        f = SimilarityForest.from_edges(120, s, d, w, floor)
        assert same_partition(f.components(t), ref)


def test_upper_tiles_cover_each_pair_once():
    n = 37
    seen = np.zeros((n, n), int)
    for (a, b), (c, d) in upper_tiles(n, 4, 12):
        for i in range(a, b):
            for j in range(max(c, i + 1), d):
                seen[i, j] += 1
    assert np.array_equal(seen, np.triu(np.ones((n, n), int), 1))
    with pytest.raises(ValueError):
        upper_tiles(n, 5, 12)


def test_tile_straddling_the_diagonal_is_refused():
    X = clustered(0, 20, 4, 0.3)
    with pytest.raises(ValueError):
        tile_forest(X, 0.9, (0, 10), (5, 15))
    assert hist_bins(0.9) > 0


def test_ray_missing_gives_the_install_hint(monkeypatch):
    """Without Ray, the Ray engine fails with one clear line (no Ray needed for this test)."""
    import builtins
    import sys

    import neardup.distributed as dist

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    X = clustered(0, 10, 4, 0.3)
    with pytest.raises(dist.RayMissingError, match=r"pip install 'neardup\[ray\]'"):
        dist.ray_forest(X, 0.9)
