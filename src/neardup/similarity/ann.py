"""Approximate similarity pass for millions of vectors: balanced k-means partitions + probes.

How it works (faiss-cpu for k-means and centroid search, the exact tile kernel for the rest):

1. k-means (``faiss.Kmeans``, trained on a sample) splits the vectors into ~N/``target``
   partitions. Partitions larger than ``split_factor * target`` (IVF lists go lopsided on
   duplicate-heavy data: one list of 10,095 against a median of 69 at 1M) are split again by
   k-means, so no partition is a quadratic hot spot.
2. Every vector is *searched* in its ``nprobe`` nearest partitions (by centroid), not only its
   own, so pairs across a partition boundary are compared (SemDeDup-style partitioning loses
   them). Partition q's tile is (its members + every vector probing it) x (its members).
3. Each tile runs the exact kernel (all pairs >= floor in the tile, reduced to the tile's
   maximum spanning forest); Kruskal over the union of the tile forests gives the forest.

Every forest edge is a real, exactly computed similarity, so ANN groups never join images the
exact pass would not join (precision 1 by construction); the only error is a group split in
two. The pass therefore measures **pair recall** on a random sample of query rows: exact
similarities of each sampled row against *all* N vectors (blocked GEMM), and for each threshold
the fraction of true pairs >= t whose two images land in the same ANN group at t. The result is
stored in ``forest.meta["recall"]`` (see :func:`ann_forest`). Pair counts (the histogram) are
estimated from the same sample, scaled to N, and flagged ``meta["hist_estimated"] = True``.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from ..distributed.tiles import TileScanner
from ..jit import nb
from .canonical import canonical_vectors
from .forest import HIST_STEP, SimilarityForest, _hist_bin, ceil_f32, hist_bins, hist_edges

ProgressFn = Callable[[int, int], None]
log = logging.getLogger(__name__)
RECALL_THRESHOLDS = (0.95, 0.96, 0.97, 0.98, 0.99, 0.995)


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def _kmeans(X: np.ndarray, k: int, seed: int, niter: int, max_points_per_centroid: int) -> np.ndarray:
    import faiss

    k = max(1, min(k, len(X)))
    km = faiss.Kmeans(X.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(X, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _nearest(X: np.ndarray, C: np.ndarray, k: int, rows: np.ndarray | None = None, chunk: int = 32768
             ) -> np.ndarray:
    """Indices of the k nearest centroids (inner product) of every row (or ``rows``), in chunks."""
    import faiss

    index = faiss.IndexFlatIP(C.shape[1])
    index.add(C)
    k = min(k, len(C))
    m = len(X) if rows is None else len(rows)
    out = np.empty((m, k), dtype=np.int32)
    for a, b in _chunks(m, chunk):
        Xc = X[a:b] if rows is None else X[rows[a:b]]
        _, I = index.search(np.ascontiguousarray(Xc, dtype=np.float32), k)
        out[a:b] = I
    return out


def partition(X: np.ndarray, *, target: int = 1000, nprobe: int = 8, split_factor: float = 3.0,
              seed: int = 0, niter: int = 12, train_points: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Balanced partitions and probes: (centroids, probes[n, nprobe]); probes[:, 0] is the own partition.

    Partitions bigger than ``split_factor * target`` are split by a second k-means; only the
    vectors that probed a split partition are searched again (against all new centroids).
    """
    n = len(X)
    rng = np.random.default_rng(seed)
    k = max(1, int(round(n / target)))
    ntrain = min(n, max(k * train_points, 10_000))
    sample = np.sort(rng.choice(n, ntrain, replace=False)) if ntrain < n else np.arange(n)
    C = _kmeans(np.asarray(X[sample]), k, seed, niter, train_points)
    probes = _nearest(X, C, nprobe)
    own = probes[:, 0]
    sizes = np.bincount(own, minlength=len(C))
    big = np.flatnonzero(sizes > split_factor * target)
    if len(big):
        keep = np.ones(len(C), bool)
        keep[big] = False
        parts = [C[keep]]
        order = np.argsort(own, kind="stable")
        starts = np.r_[0, np.cumsum(sizes)]
        for p in big:
            members = np.sort(order[starts[p]:starts[p + 1]])
            sub = members if len(members) <= 200_000 else np.sort(rng.choice(members, 200_000, replace=False))
            parts.append(_kmeans(np.asarray(X[sub]), int(np.ceil(sizes[p] / target)), seed + 1 + int(p),
                                 niter, train_points))
        C = np.concatenate(parts)
        remap = np.full(len(keep), -1, np.int32)
        remap[keep] = np.arange(int(keep.sum()), dtype=np.int32)
        affected = np.flatnonzero(np.isin(probes, big).any(axis=1))
        probes = remap[probes]
        probes[affected] = _nearest(X, C, nprobe, rows=affected)
    return C, probes


def _partition_forest(X: np.ndarray, probes: np.ndarray, floor: float, progress: ProgressFn | None,
                      only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Run the exact tile kernel on every partition's tile (or those in ``only``).

    Returns the union of the tiles' forests as global edges (src, dst, weight) and the number
    of pairs compared.
    """
    n, npr = probes.shape
    P = int(probes.max()) + 1
    flat_q = probes.ravel()
    order = np.argsort(flat_q, kind="stable")            # grouped by partition, then by row
    starts = np.r_[0, np.cumsum(np.bincount(flat_q, minlength=P))]
    rows_of = order // npr
    is_own = (order % npr) == 0
    own_sizes = np.bincount(probes[:, 0], minlength=P).astype(np.int64)
    tot_sizes = np.diff(starts)
    sel = slice(None) if only is None else np.asarray(only, dtype=np.int64)
    work = int((own_sizes[sel] * tot_sizes[sel]).sum())
    done = 0
    hist = None
    srcs, dsts, ws = [], [], []
    compared = 0
    for q in (range(P) if only is None else (int(x) for x in only)):
        seg = slice(starts[q], starts[q + 1])
        members = rows_of[seg][is_own[seg]]
        if len(members) == 0:
            continue
        others = rows_of[seg][~is_own[seg]]
        glob = np.concatenate([members, others])
        Xl = np.asarray(X[np.sort(glob)], dtype=np.float32)  # sorted read: memory-map friendly
        Xl = Xl[np.argsort(np.argsort(glob))]
        m = len(members)
        sc = TileScanner(Xl, floor, hist=hist)
        hist = sc.hist
        sc.scan(0, m, 0, m, diagonal=True)
        if len(others):
            sc.scan(m, len(glob), 0, m, diagonal=False)
        s, d, w = sc.edges()
        if len(s):
            srcs.append(glob[s])
            dsts.append(glob[d])
            ws.append(w)
        compared += sc.compared
        done += m * len(glob)
        if progress is not None:
            progress(done, work)
    if not srcs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), compared
    return np.concatenate(srcs), np.concatenate(dsts), np.concatenate(ws), compared


@nb.njit(cache=True, parallel=True)
def _sample_scan(S, rows, col0, f32floor, edges, ths32, labels, hist, tot, hit):
    """Sample rows x column chunk: histogram (self excluded) and per-row true/joined pair counts.

    Thread t of ``hist.shape[0]`` owns a contiguous range of sampled rows and its own hist row.
    """
    ns = S.shape[0]
    nc = S.shape[1]
    nth = ths32.shape[0]
    T = hist.shape[0]
    for t in nb.prange(T):
        for r in range(t * ns // T, (t + 1) * ns // T):
            i = rows[r]
            for c in range(nc):
                j = col0 + c
                if j == i:
                    continue
                s = S[r, c]
                if s < f32floor:
                    continue
                b, sd = _hist_bin(s, edges)
                hist[t, b] += 1
                for k in range(nth):
                    if s >= ths32[k]:
                        tot[r, k] += 1
                        if labels[k, i] == labels[k, j]:
                            hit[r, k] += 1


def estimate_recall(X: np.ndarray, forest: SimilarityForest, *, sample: int = 2000, seed: int = 0,
                    thresholds: tuple[float, ...] = RECALL_THRESHOLDS, col_chunk: int = 32768
                    ) -> tuple[dict, np.ndarray]:
    """Pair recall of ``forest`` against exact similarities of ``sample`` random rows vs all rows.

    Returns (recall dict, estimated histogram). Recall at t = (true pairs >= t among sampled rows
    whose ends share an ANN group at t) / (true pairs >= t among sampled rows). A 95% lower bound
    comes from a bootstrap over the sampled rows (pairs of one row are correlated). Per image as
    well: ``row_recall_mean`` (mean over sampled rows that have a true pair) and
    ``rows_complete`` (share of those rows whose every true neighbour is in their ANN group),
    which a giant group cannot dominate.
    """
    n = len(X)
    floor = forest.floor
    rng = np.random.default_rng(seed)
    s = min(sample, n)
    rows = np.sort(rng.choice(n, s, replace=False)).astype(np.int64)
    ths = np.array(sorted({float(floor), *[t for t in thresholds if t >= floor]}), dtype=np.float64)
    labels = np.stack([forest.components(t) for t in ths]).astype(np.int64)
    Xs = np.ascontiguousarray(X[rows], dtype=np.float32)
    hist = np.zeros((max(1, int(nb.get_num_threads())), hist_bins(floor)), dtype=np.int64)
    tot = np.zeros((s, len(ths)), np.int64)
    hit = np.zeros((s, len(ths)), np.int64)
    edges, f32floor = hist_edges(floor), ceil_f32(floor)
    ths32 = np.array([ceil_f32(t) for t in ths], dtype=np.float32)
    for a, b in _chunks(n, col_chunk):
        S = Xs @ np.asarray(X[a:b], dtype=np.float32).T
        _sample_scan(S, rows, a, f32floor, edges, ths32, labels, hist, tot, hit)
    T, H = tot.sum(0), hit.sum(0)
    boot = rng.integers(0, s, (200, s))
    by_t = {}
    for k, t in enumerate(ths):
        bt, bh = tot[boot, k].sum(1), hit[boot, k].sum(1)
        lo = float(np.quantile(np.where(bt > 0, bh / np.maximum(bt, 1), 1.0), 0.025))
        has = tot[:, k] > 0
        by_t[f"{t:.4f}"] = {"pairs_in_sample": int(T[k]), "pair_recall": float(H[k] / T[k]) if T[k] else 1.0,
                           "lower_95": lo,
                           # per image, so small groups weigh as much as the giant one:
                           "rows_with_pairs": int(has.sum()),
                           "row_recall_mean": float(np.mean(hit[has, k] / tot[has, k])) if has.any() else 1.0,
                           "rows_complete": float(np.mean(hit[has, k] == tot[has, k])) if has.any() else 1.0}
    worst = min(by_t.values(), key=lambda r: r["pair_recall"])
    recall = {"pair_recall": worst["pair_recall"], "pair_recall_lower_95": worst["lower_95"],
              "sample": int(s), "by_threshold": by_t,
              "method": ("exact similarities of a random sample of rows against all rows; recall at t = "
                         "fraction of true pairs >= t whose images share an ANN group at t; headline = "
                         "worst threshold")}
    est = np.rint(hist.sum(0).astype(np.float64) * (n / s) / 2.0).astype(np.int64)
    return recall, est


def ann_forest(vectors: np.ndarray, floor: float, *, progress: ProgressFn | None = None, target: int = 1000,
               nprobe: int = 8, split_factor: float = 3.0, recall_sample: int = 2000, seed: int = 0
               ) -> SimilarityForest:
    """Approximate maximum spanning forest of the pairs >= ``floor`` (see the module docstring).

    ``meta`` records: ``engine="ann"``, the parameters, timings, ``compared_fraction`` (pairs
    actually compared / all pairs), ``recall`` = {"pair_recall", "pair_recall_lower_95",
    "sample", "by_threshold": {t: {...}}, "method"} and ``hist_estimated=True`` (pair counts
    are a sample estimate). ``recall_sample=0`` skips the estimate (histogram then empty).
    """
    if not (0.0 < floor <= 1.0):
        raise ValueError(f"floor {floor} is outside (0, 1]")
    X = canonical_vectors(vectors)
    n = int(X.shape[0])
    meta: dict = {"engine": "ann", "method": "kmeans-partitions+probes", "target": target, "nprobe": nprobe,
                  "split_factor": split_factor}
    if n < 2:
        return SimilarityForest(n, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                                float(floor), np.zeros(hist_bins(floor), np.int64), meta)
    t0 = time.perf_counter()
    C, probes = partition(X, target=target, nprobe=nprobe, split_factor=split_factor, seed=seed)
    t1 = time.perf_counter()
    log.info("ann: %d partitions (largest %d) in %.1f s", int(probes.max()) + 1,
             int(np.bincount(probes[:, 0]).max()), t1 - t0)
    src, dst, w, compared = _partition_forest(X, probes, float(floor), progress)
    t2 = time.perf_counter()
    forest = SimilarityForest.from_edges(n, src, dst, w, floor)
    t3 = time.perf_counter()
    log.info("ann: tiles %.1f s, merge %.1f s, %d forest edges", t2 - t1, t3 - t2, len(forest.src))
    sizes = np.bincount(probes[:, 0], minlength=len(C))
    meta.update(partitions=int(len(C)), largest_partition=int(sizes.max()),
                median_partition=float(np.median(sizes[sizes > 0])),
                compared_fraction=float(compared / (n * (n - 1) / 2)),
                seconds={"partition": round(t1 - t0, 2), "tiles": round(t2 - t1, 2), "merge": round(t3 - t2, 2)})
    if recall_sample > 0:
        recall, est = estimate_recall(X, forest, sample=recall_sample, seed=seed + 7)
        forest.hist = est
        meta["recall"] = recall
        meta["hist_estimated"] = True
        meta["hist_method"] = f"scaled from {recall['sample']} sampled rows x all rows (exact)"
        meta["seconds"]["recall"] = round(time.perf_counter() - t3, 2)
    else:
        meta["hist_estimated"] = True
        meta["hist_method"] = "none (recall_sample=0): pair counts unknown, histogram is zero"
    forest.meta = meta
    return forest


__all__ = ["ann_forest", "estimate_recall", "partition", "RECALL_THRESHOLDS", "HIST_STEP"]
