"""Approximate match for large catalogs: each query is compared only with the catalog partitions nearest it.

How it works (faiss-cpu for k-means and the centroid search, the exact tile kernel for the rest):

1. The catalog is split into k balanced partitions by k-means (:func:`.ann.partition`, which also
   splits the lopsided partitions that duplicate-heavy data makes); each catalog row belongs to
   the partition of its nearest centroid.
2. Each query probes its ``nprobe`` nearest centroids; it is compared, exactly, with every member
   of those partitions (one task per partition tile and the queries probing it, on the threads
   of :mod:`.matchscan`).
3. Cost: the centroid search for the catalog (n x k) plus each query against ~nprobe/k of the
   catalog. k defaults to sqrt(n_queries * nprobe), which balances the two terms.

Every reported similarity is an exact dot product, so a reported match is a true match; what ANN
can miss is a catalog image >= t that lies in a partition the query did not probe, and a best
match there. So the result carries its **recall**, measured: a random sample of queries is also
matched exactly against the whole catalog, and the share of their true matches >= t that ANN
found (with a bootstrap 95% lower bound over the sampled queries), and the share of sampled
queries whose best match ANN found, are reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .ann import _nearest, partition
from .incremental import RowSource
from .matchscan import Task, match_matrix, run_tasks

ProgressFn = Callable[[int, int], None]


@dataclass
class AnnMatch:
    """Pairs >= t found (q, c, s), each query's best match found, the measured recall and the run's facts."""

    q: np.ndarray
    c: np.ndarray
    s: np.ndarray
    best_c: np.ndarray
    best_v: np.ndarray
    recall: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def default_partitions(n: int, nq: int, nprobe: int) -> int:
    """k ~ sqrt(nq * nprobe): the catalog's centroid search (n*k) and the probes (nq*nprobe*n/k) cost alike."""
    k = int(round(np.sqrt(max(1, nq) * max(1, nprobe))))
    return int(min(max(1, n // 64), max(16, k)))


def measure_recall(ann_q: np.ndarray, ann_c: np.ndarray, ann_best_v: np.ndarray, sample: np.ndarray,
                   exact_q: np.ndarray, exact_c: np.ndarray, exact_best_v: np.ndarray, nq: int, *, seed: int = 0,
                   boot: int = 400) -> dict[str, Any]:
    """Recall of an ANN match on the sampled queries, against their exact match.

    ``exact_q`` indexes ``sample`` (the exact run's queries were ``Q[sample]``); ``ann_*`` index all
    queries. ``hit_recall`` = share of the sampled queries' true pairs >= t that ANN reported
    (one-sided 95% lower bound by a bootstrap over the sampled queries, whose pairs are
    correlated); ``query_recall`` = share of the sampled queries with a true match >= t for which
    ANN reported at least one (so "is this image already in the catalog?" is answered);
    ``best_found`` = share of sampled queries whose best similarity ANN found
    (one-sided exact Clopper-Pearson 95% lower bound).
    """
    from scipy.stats import beta

    s = len(sample)
    pos = np.full(nq, -1, np.int64)
    pos[sample] = np.arange(s)
    sel = pos[ann_q] >= 0
    width = int(max(ann_c.max(initial=0), exact_c.max(initial=0))) + 1
    found = np.isin(exact_q.astype(np.int64) * width + exact_c, pos[ann_q[sel]] * width + ann_c[sel])
    true_per = np.bincount(exact_q, minlength=s)
    hit_per = np.bincount(exact_q[found], minlength=s)
    total, hits = int(true_per.sum()), int(hit_per.sum())
    rng = np.random.default_rng(seed)
    if total and s:
        idx = rng.integers(0, s, (boot, s))
        bt, bh = true_per[idx].sum(1), hit_per[idx].sum(1)
        lower = float(np.quantile(np.where(bt > 0, bh / np.maximum(bt, 1), 1.0), 0.05))
    else:
        lower = 1.0
    best_ok = int((ann_best_v[sample] >= exact_best_v).sum()) if s else 0
    has = true_per > 0  # sampled queries with a true match >= t: did ANN report at least one?
    q_ok, q_all = int((hit_per[has] > 0).sum()), int(has.sum())
    best_low = float(beta.ppf(0.05, best_ok, s - best_ok + 1)) if best_ok else 0.0
    return dict(hit_recall=hits / total if total else 1.0, hit_recall_lower_95=min(lower, hits / total if total else 1.0),
                true_pairs=total, found_pairs=hits, query_recall=q_ok / q_all if q_all else 1.0,
                queries_with_match=q_all, best_found=best_ok / s if s else 1.0,
                best_found_lower_95=best_low if s else 1.0,
                sample=int(s),
                method=("a random sample of queries matched exactly against the whole catalog; hit_recall = share "
                        "of their true matches >= t that ANN reported; query_recall = share of those with a true match "
                        "for which ANN reported one; best_found = share whose best similarity ANN found"))


def ann_match_matrix(queries: np.ndarray, catalog: RowSource, keys: np.ndarray, threshold: float, *,
                     nprobe: int = 8, partitions: int | None = None, recall_sample: int = 300, seed: int = 0,
                     query_block: int = 1024, col_chunk: int = 2048, threads: int | None = None,
                     progress: ProgressFn | None = None) -> AnnMatch:
    """Approximate :func:`.matchscan.match_matrix`: queries against their ``nprobe`` nearest partitions.

    Same arrays (catalog columns in ``catalog``'s working order), plus the measured recall on
    ``recall_sample`` random queries (0: not measured) and ``meta`` (partitions, compared share,
    seconds per stage).
    """
    t0 = time.perf_counter()
    Q = np.ascontiguousarray(queries, dtype=np.float32)
    nq, n = len(Q), catalog.n
    X = catalog.X if catalog.order is None else catalog.take(0, n)
    k = int(partitions) if partitions else default_partitions(n, nq, nprobe)
    k = max(1, min(k, n))
    C, probes = partition(X, target=max(1, -(-n // k)), nprobe=1, seed=seed)
    own = probes[:, 0]
    nprobe = max(1, min(int(nprobe), len(C)))
    qprobe = _nearest(Q, C, nprobe) if nq else np.zeros((0, nprobe), np.int32)
    t1 = time.perf_counter()
    P = len(C)
    order = np.argsort(own, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(own, minlength=P))]
    flat = qprobe.ravel()
    qorder = np.argsort(flat, kind="stable")        # by partition, then by query (ascending)
    qstarts = np.r_[0, np.cumsum(np.bincount(flat, minlength=P))]
    tasks: list[Task] = []
    for p in range(P):
        a, b = int(starts[p]), int(starts[p + 1])
        qa, qb = int(qstarts[p]), int(qstarts[p + 1])
        if a == b or qa == qb:
            continue
        qidx = (qorder[qa:qb] // nprobe).astype(np.int64)
        tasks += [(qidx, c0, min(b, c0 + col_chunk)) for c0 in range(a, b, col_chunk)]
    tasks.sort(key=lambda t: -(len(t[0]) * (t[2] - t[1])))  # largest first: the threads finish together
    compared = sum(len(t[0]) * (t[2] - t[1]) for t in tasks)
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    q, c, s, best_c, best_v = run_tasks(Q, RowSource(X, order), keys[order], threshold, tasks,
                                        query_block=query_block, col_chunk=col_chunk, threads=threads,
                                        progress=progress)
    c = order[c]
    best_c = np.where(best_c >= 0, order[np.maximum(best_c, 0)], -1)
    t2 = time.perf_counter()
    recall: dict[str, Any] = {}
    if recall_sample > 0 and nq:
        rng = np.random.default_rng(seed + 7)
        sample = np.sort(rng.choice(nq, min(nq, int(recall_sample)), replace=False))
        eq, ec, _, _, ebv = match_matrix(Q[sample], catalog, keys, threshold, query_block=query_block,
                                         col_chunk=col_chunk, threads=threads)
        recall = measure_recall(q, c, best_v, sample, eq, ec, ebv, nq, seed=seed)
    t3 = time.perf_counter()
    sizes = np.diff(starts)
    meta = dict(index="ann", partitions=int(P), nprobe=int(nprobe), largest_partition=int(sizes.max()) if P else 0,
                compared_fraction=float(compared / max(1, nq * n)),
                seconds={"partition": round(t1 - t0, 2), "match": round(t2 - t1, 2), "recall": round(t3 - t2, 2)})
    return AnnMatch(q, c, s, best_c, best_v, recall, meta)


__all__ = ["AnnMatch", "ann_match_matrix", "default_partitions", "measure_recall"]
