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


# ---- the tile kernel and the two-level partition -------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from neardup.similarity.ann import _prim_tile, two_level_partition  # noqa: E402
from neardup.similarity.canonical import canonical_vectors  # noqa: E402
from neardup.similarity.forest import SimilarityForest, ceil_f32  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(m=st.integers(1, 70), extra=st.integers(0, 90), levels=st.integers(2, 40), seed=st.integers(0, 2**31 - 1),
       floor=st.sampled_from([0.5, 0.8, 0.95]))
def test_prim_tile_is_a_maximum_spanning_forest_of_the_tile_graph(m, extra, levels, seed, floor):
    """Prim on a tile (members x all nodes; probing nodes not joined to each other) against Kruskal
    (SimilarityForest.from_edges) over the same edges: same weights, same components at every level.
    Few distinct weights, so ties are the rule."""
    rng = np.random.default_rng(seed)
    L = m + extra
    G = (rng.integers(0, levels, (L, L)) / (levels - 1)).astype(np.float32)
    G = np.triu(G, 1)
    G = G + G.T
    A, Bt = np.ascontiguousarray(G[:m]), np.ascontiguousarray(G[m:, :m])
    s, d, w = np.empty(L, np.int64), np.empty(L, np.int64), np.empty(L, np.float32)
    f32 = ceil_f32(floor)                           # as the pass does: s >= floor iff s >= f32
    k = _prim_tile(A, Bt, f32, s, d, w)
    i, j = np.nonzero(np.triu(G >= f32, 1))
    keep = i < m                                    # edges touch a member
    i, j = i[keep], j[keep]
    ref = SimilarityForest.from_edges(L, i, j, G[i, j], floor)
    got = SimilarityForest.from_edges(L, s[:k], d[:k], w[:k], floor)
    assert k == len(ref.src)
    assert np.array_equal(G[s[:k], d[:k]], w[:k]) and np.all(np.minimum(s[:k], d[:k]) < m)
    assert np.array_equal(np.sort(got.weight), np.sort(ref.weight))
    for t in sorted(set(np.r_[floor, ref.weight.astype(float)])):
        if t >= floor:
            assert np.array_equal(got.components(t), ref.components(t))


def test_two_level_partition_probes_are_distinct_and_balanced():
    X = seed_shaped(20_000, 64, seed=5).vectors          # a chained giant group of ~11k
    C, probes = two_level_partition(X, target=200, nprobe=3, split_factor=2.0)
    assert probes.shape == (len(X), 3) and probes.min() >= 0 and probes.max() < len(C)
    assert np.all(np.sort(probes, axis=1)[:, 1:] != np.sort(probes, axis=1)[:, :-1])  # no partition twice in a row
    sizes = np.bincount(probes[:, 0], minlength=len(C))
    assert sizes.max() <= 2 * 200                         # lopsided k-means lists were cut
    # a vector's other probes are near partitions: each within the 10 nearest centroids of all
    S = X[:2000] @ C.T
    rank = (S > S[np.arange(2000)[:, None], probes[:2000, 1:]][:, :, None].min(axis=1)).sum(axis=1)
    assert np.quantile(rank, 0.99) < 10


def test_recall_below_goal_runs_again_with_more_probes():
    X = seed_shaped(6_000, 64, seed=8).vectors
    f = ann_forest(X, 0.95, target=300, nprobe=1, recall_goal=0.9999, max_nprobe=4, recall_sample=800)
    tries = f.meta["tries"]
    assert [t["nprobe"] for t in tries][0] == 1 and f.meta["nprobe"] == tries[-1]["nprobe"]
    assert len(tries) >= 2 and tries[-1]["nprobe"] in (2, 4)
    assert f.meta["recall"]["pair_recall"] == tries[-1]["pair_recall"]
    # finer than exact, never coarser: every ANN group lies inside one exact group
    i, j = ref_pairs(X, 0.95)
    ref = ref_labels(len(X), i, j)
    lab = f.components(0.95)
    assert len(np.unique(np.stack([lab, ref], 1), axis=0)) == len(np.unique(lab))


def test_cli_recall_line_names_the_share_of_complete_images(capsys):
    """Pair recall is dominated by the largest group; the line also says how many sampled images kept all duplicates."""
    from types import SimpleNamespace

    from neardup.cli.core import _print_recall

    at = {"pair_recall": 0.9999999, "lower_95": 0.9999998, "rows_with_pairs": 1712, "rows_complete": 0.9959}
    f = SimpleNamespace(meta={"recall": {"pair_recall": 0.9999989, "pair_recall_lower_95": 0.999998, "sample": 2000,
                                         "by_threshold": {"0.9800": at}}, "hist_estimated": True})
    _print_recall(f, 0.98)
    err = " ".join(capsys.readouterr().err.split())
    assert "pair recall 1.0000 at 0.98" in err
    assert "99.59% of the 1,712 sampled images with a duplicate have every one of them in their group" in err


def _tight_and_diffuse(seed: int, dim: int = 32) -> np.ndarray:
    """A tight cluster of 3,000 (one k-means list, cut into pieces) beside 1,500 diffuse vectors."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(dim)
    base /= np.linalg.norm(base)
    X = np.concatenate([base + 0.05 * rng.standard_normal((3000, dim)), rng.standard_normal((1500, dim))])
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), nprobe=st.integers(1, 3), target=st.sampled_from([60, 100, 150]),
       rounds=st.integers(1, 3))
def test_probes_are_each_vectors_nearest_centroids_also_in_cut_lists(seed, nprobe, target, rounds):
    """Issue 14: own partition and probes follow one rule, also after oversized lists are cut into
    pieces. With every coarse cell a candidate, each vector's probes are its ``nprobe`` most similar
    centroids (float64 brute force), nearest (its own list) first, after every round of cuts (the
    re-ranking after a cut computes only the pieces' similarities: :func:`_reassign`)."""
    X = _tight_and_diffuse(seed)
    C, probes = two_level_partition(X, target=target, nprobe=nprobe, cells_probed=10**6, seed=seed % 1000,
                                    rounds=rounds)
    assert np.bincount(probes[:, 0]).max() < 3000 // 2                # the tight cluster was cut
    S = X.astype(np.float64) @ C.astype(np.float64).T
    best = -np.sort(-S, axis=1)[:, :probes.shape[1]]
    got = np.take_along_axis(S, probes.astype(np.int64), axis=1)
    assert np.all(np.abs(got - best) <= 1e-5)                        # float32 GEMM vs float64; ties either way


@pytest.mark.parametrize("seed", [1, 2])
def test_every_pair_whose_partitions_meet_is_joined(seed):
    """Brute force (float64 pairs >= floor): a pair is compared when one's own partition is among the
    other's probes; every such pair ends in one ANN group, and no ANN group spans two exact groups."""
    from neardup.similarity.ann import _partition_forest

    X = np.concatenate([_tight_and_diffuse(seed, 64)[:2000], seed_shaped(3000, 64, seed=seed).vectors])
    floor = 0.95
    C, probes = two_level_partition(X, target=100, nprobe=2, seed=seed)
    s, d, w, _ = _partition_forest(canonical_vectors(X), probes, floor, None)
    lab = SimilarityForest.from_edges(len(X), s, d, w, floor).components(floor)
    i, j = ref_pairs(X, floor)
    own = probes[:, 0]
    met = (probes[i] == own[j][:, None]).any(axis=1) | (probes[j] == own[i][:, None]).any(axis=1)
    assert met.mean() < 1.0 and met.sum() > 1000                     # some pairs were never compared
    assert np.all(lab[i[met]] == lab[j[met]])
    ref = ref_labels(len(X), i, j)
    assert len(np.unique(np.stack([lab, ref], 1), axis=0)) == len(np.unique(lab))


@pytest.mark.parametrize("seed,rounds", [(3, 1), (4, 2), (5, 3)])
def test_probes_are_nearest_among_own_cells_after_cuts(monkeypatch, seed, rounds):
    """With 2 of the coarse cells per vector (so a cut touches only the rows of its cells), each
    vector's probes are its most similar centroids among its cells' partitions (float64 brute force
    over the cells and partitions the pass recorded), after every round of cuts."""
    from neardup.similarity import ann

    seen: dict = {}
    top, split = ann._top_centroids, ann._split
    monkeypatch.setattr(ann, "_top_centroids", lambda *a, **k: seen.setdefault("cells", top(*a, **k)))

    def spy(*a, **k):
        out = split(*a, **k)
        seen["parts"] = out[1]
        return out

    monkeypatch.setattr(ann, "_split", spy)
    X = _tight_and_diffuse(seed)
    C, probes = ann.two_level_partition(X, target=60, nprobe=2, cells_probed=2, seed=seed, rounds=rounds)
    assert "parts" in seen and np.bincount(probes[:, 0]).max() < 3000 // 2
    S = X.astype(np.float64) @ C.astype(np.float64).T
    for i in range(len(X)):
        cand = np.unique(np.concatenate([seen["parts"][j] for j in seen["cells"][i]]))
        best = -np.sort(-S[i, cand])[:2]
        assert np.all(np.abs(S[i, probes[i].astype(np.int64)] - best) <= 1e-5), i
