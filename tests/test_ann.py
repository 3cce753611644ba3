"""ANN similarity pass vs an independent brute-force reference (numpy blocks + scipy).

Recall is bounded, not asserted equal: the partitioned pass compares only a fraction of the
pairs (asserted, so the test exercises the approximation), yet must keep >= 99.5% of the true
pairs inside one group and agree with the exact groups at ARI >= 0.999.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import comb

from neardup.similarity.ann import ann_forest, estimate_recall, partition
from reference import canonical_f64
from neardup.synthetic import seed_shaped


def ref_pairs(X: np.ndarray, t: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    X = canonical_f64(X)  # exact similarities
    I, J = [], []
    for a in range(0, len(X), block):
        S = X[a:a + block] @ X.T
        i, j = np.nonzero(S >= t)
        keep = j > i + a
        I.append(i[keep] + a)
        J.append(j[keep])
    return np.concatenate(I), np.concatenate(J)


def ref_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return connected_components(coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n)), directed=False)[1]


def ari(a: np.ndarray, b: np.ndarray) -> float:
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    n = len(a)
    sij = comb(np.unique(a * (b.max() + 1) + b, return_counts=True)[1], 2).sum()
    sa, sb = comb(np.bincount(a), 2).sum(), comb(np.bincount(b), 2).sum()
    exp = sa * sb / comb(n, 2)
    mx = (sa + sb) / 2
    return 1.0 if mx == exp else float((sij - exp) / (mx - exp))


@pytest.fixture(scope="module")
def collection():
    X = seed_shaped(8_000, 128, seed=11).vectors
    floor = 0.95
    f = ann_forest(X, floor, target=100, nprobe=4, recall_sample=1500, seed=3)
    return X, floor, f


@pytest.mark.parametrize("t", [0.95, 0.97, 0.98, 0.99])
def test_ann_recall_and_group_agreement(collection, t):
    X, floor, f = collection
    i, j = ref_pairs(X, t)
    ref = ref_labels(len(X), i, j)
    lab = f.components(t)
    recall = float(np.mean(lab[i] == lab[j]))          # true pairs kept inside one ANN group
    assert recall >= 0.995, recall
    assert ari(lab, ref) >= 0.999
    # precision 1 by construction: an ANN group never spans two exact groups
    assert len(np.unique(np.stack([lab, ref], 1), axis=0)) == len(np.unique(lab))
    # the pass's own sample estimate is close to the measured recall
    est = f.meta["recall"]["by_threshold"][f"{t:.4f}"]
    assert abs(est["pair_recall"] - recall) <= 0.01
    assert est["lower_95"] <= est["pair_recall"]
    assert est["rows_complete"] >= 0.99 and est["row_recall_mean"] >= 0.995
    # pair counts: a sample estimate, within 15%
    assert abs(f.pair_count(t) - len(i)) <= 0.15 * len(i)


def test_ann_is_approximate_and_documents_itself(collection):
    X, floor, f = collection
    m = f.meta
    assert m["engine"] == "ann" and m["hist_estimated"] is True
    assert m["compared_fraction"] < 0.5            # it really skipped most pairs
    assert 0.0 <= m["recall"]["pair_recall"] <= 1.0 and m["recall"]["sample"] == 1500
    assert m["recall"]["pair_recall"] == min(r["pair_recall"] for r in m["recall"]["by_threshold"].values())
    assert np.all(f.weight >= floor) and len(f.src) <= len(X) - 1
    # forest weights are true similarities
    C = canonical_f64(X)
    w = np.minimum(np.einsum("ij,ij->i", C[f.src], C[f.dst]), 1.0)  # exact; clamped at 1 like the forest
    assert np.array_equal(w, f.weight.astype(np.float64))


def test_giant_partitions_are_split():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(64)
    tight = base + 0.01 * rng.standard_normal((3000, 64))         # one dense duplicate group
    spread = rng.standard_normal((3000, 64))
    X = np.concatenate([tight, spread])
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    C, probes = partition(X, target=200, nprobe=4, split_factor=3.0)
    sizes = np.bincount(probes[:, 0], minlength=len(C))
    assert sizes.max() <= 3 * 3 * 200  # the 3000-member group no longer sits in one list
    f = ann_forest(X, 0.9, target=200, nprobe=4, recall_sample=500)
    i, j = ref_pairs(X, 0.95)
    lab = f.components(0.95)
    assert np.mean(lab[i] == lab[j]) >= 0.995


def test_small_and_degenerate_inputs():
    X = np.zeros((0, 8), np.float32)
    assert ann_forest(X, 0.9).n == 0
    one = np.ones((1, 8), np.float32) / np.sqrt(8)
    assert len(ann_forest(one, 0.9).src) == 0
    same = np.repeat(one, 50, axis=0)
    f = ann_forest(same, 0.9, target=10, nprobe=2, recall_sample=20)
    assert len(np.unique(f.components(0.99))) == 1
    assert f.meta["recall"]["pair_recall"] == 1.0
    with pytest.raises(ValueError):
        ann_forest(same, 1.5)


def test_estimate_recall_flags_a_missing_edge():
    """A forest with its edges removed has recall 0 on pairs that exist: the estimator sees it."""
    X = seed_shaped(3000, 64, seed=2).vectors
    f = ann_forest(X, 0.97, target=100, nprobe=3, recall_sample=0)
    empty = type(f)(f.n, f.src[:0], f.dst[:0], f.weight[:0], f.floor, f.hist)
    rec, est = estimate_recall(X, empty, sample=300)
    assert rec["pair_recall"] == 0.0
    i, _ = ref_pairs(X, 0.97)
    assert abs(est.sum() - len(i)) <= 0.2 * len(i)


def test_compute_forest_dispatches_to_ann():
    from neardup.dedup import compute_forest

    X = seed_shaped(2000, 64, seed=4).vectors
    f = compute_forest(X, 0.97, index="ann")
    assert f.meta["engine"] == "ann" and "recall" in f.meta
