"""Approximate similarity pass for millions of vectors: balanced k-means partitions + probes.

How it works (faiss-cpu for the k-means, onnxruntime's GEMM, compiled kernels for the rest):

1. Partitions by a two-level quantizer (:func:`two_level_partition`): ~sqrt(N/``target``)
   coarse cells by spherical k-means, every vector assigned to its 3 nearest cells; each cell
   split by its own k-means into ~size/``target`` partitions; partitions over ``split_factor *
   target`` members (k-means lists go lopsided on duplicate-dense data) are cut into pieces by
   median splits, whose centroids join the cell's (pieces that end up over the limit under
   nearest-centroid membership are cut once more). Cost ~N x sqrt(N/target) dot products, not N^2/target.
2. Every vector belongs to its nearest partition among those of its cells and also *probes* the
   next nearest, ``nprobe`` in all, so pairs across a partition boundary are compared
   (SemDeDup-style partitioning loses them). Own partition and probes follow one rule (nearest
   centroids), also for the members of a cut list: that is what lets a probe find a duplicate
   on the other side of a boundary. Partition q's tile is (its members + every vector probing it) x (its members).
3. Each tile is one float32 GEMM (exact on canonical vectors) and the maximum spanning forest
   of its graph (pairs >= floor) by Prim's algorithm on the dense matrix (:func:`_prim_tile`);
   Kruskal over the union of the tile forests gives the forest.
4. Recall is measured (below); while it misses ``recall_goal`` the pass runs again with twice
   the probes (:func:`ann_forest`).

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
#: (vectors, probes, floor, progress) -> the tiles' forest edges (src, dst, weight) and pairs compared
TilesFn = Callable[[np.ndarray, np.ndarray, float, "ProgressFn | None"], tuple[np.ndarray, np.ndarray, np.ndarray, int]]
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


def _top_columns(S: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest values (in no order; all columns when there are at most k)."""
    return np.argpartition(-S, k - 1, axis=1)[:, :k] if S.shape[1] > k else np.broadcast_to(np.arange(S.shape[1]), S.shape)


def _top_centroids(X: np.ndarray, C: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Indices of each row's k most similar centroids, most similar first (onnxruntime GEMM per row chunk;
    this faiss build's flat search is ~20x slower here)."""
    from .ortgemm import gemm_nt

    T = max(1, int(nb.get_num_threads()))
    Cc = np.ascontiguousarray(C, dtype=np.float32)
    out = np.empty((len(X), k), np.int32)
    for a, b in _chunks(len(X), chunk):
        S = gemm_nt(np.ascontiguousarray(X[a:b], dtype=np.float32), Cc, T)
        top = _top_columns(S, k)
        srt = np.argsort(-np.take_along_axis(S, top, axis=1), axis=1, kind="stable")
        out[a:b] = np.take_along_axis(top, srt, axis=1)
    return out


def _balanced_labels(Y: np.ndarray, target: int) -> np.ndarray:
    """Pieces of 0.75-1.5x ``target`` rows by recursive median cuts along each segment's principal
    direction (:func:`.locality.locality_order` on int8 codes, compiled and threaded)."""
    from .locality import locality_order
    from .quantized import Quantized

    n = len(Y)
    leaf = max(2, int(1.5 * target))
    Q = Quantized(Y, 127)
    order = locality_order(Q.u8, Q.scale, leaf=leaf)
    lab = np.empty(n, np.int64)
    segs, g = [(0, n)], 0
    while segs:                       # the same halving locality_order does: its leaves, in order
        lo, hi = segs.pop()
        if hi - lo <= leaf:
            lab[order[lo:hi]] = g
            g += 1
        else:
            h = lo + (hi - lo) // 2
            segs += [(h, hi), (lo, h)]
    return lab


def _normalized_means(Xm: np.ndarray, lab: np.ndarray, g: int) -> np.ndarray:
    """Unit-norm mean of the rows of each label 0..g-1 (every label non-empty)."""
    cen = np.stack([Xm[lab == k].sum(axis=0) for k in range(g)])  # (a one-hot product is 10x slower in OpenBLAS)
    return (cen / np.maximum(np.linalg.norm(cen, axis=1, keepdims=True), 1e-30)).astype(np.float32)


def _pieces(Xm: np.ndarray, target: int) -> np.ndarray:
    """Unit centroids of ~size/``target`` pieces of one oversized partition's members, by median cuts
    along principal directions (:func:`_balanced_labels`; k-means goes lopsided again on chained,
    duplicate-dense members)."""
    lab = _balanced_labels(Xm, target)
    return _normalized_means(Xm, lab, int(lab.max()) + 1)


def two_level_partition(X: np.ndarray, *, target: int = 1000, nprobe: int = 2, cells_probed: int = 3,
                        split_factor: float = 2.0, seed: int = 0, niter: int = 10, train_points: int = 32,
                        chunk: int = 65536, rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Partitions and probes by a two-level quantizer: (centroids, probes[n, nprobe]); probes[:, 0] is the own partition.

    ~sqrt(N / target) coarse cells (spherical k-means on a sample), every vector assigned to its
    ``cells_probed`` nearest cells; each cell split by its own k-means into ~size / ``target``
    partitions. A vector's partitions are the ``nprobe`` nearest centroids among those of its
    cells, the nearest being its own (its member list). k-means lists go lopsided where a cell
    mixes a dense chained group with diffuse vectors (k-means spends its centroids on the dense
    part and leaves lists of 10k diffuse vectors beside a median of ~800): every list over
    ``split_factor * target`` members is cut into pieces (:func:`_pieces`), the pieces' centroids
    replace its centroid in its cell, every vector that had the list among its probes is
    assigned again, by the same nearest-centroid rule, against its cells' centroids, and every
    other vector of those cells merges the pieces into its probes (a piece may be nearer than
    its own partition). A vector's own
    partition is therefore always the first of its probes, everywhere, which is what lets a probe
    find a near-duplicate across a boundary (issue 14: when a cut list's members kept the median
    cut's slab as their own partition, diffuse near-duplicates landed in slabs whose centroids
    ranked 2nd-10th for each other; at 1M 0.6% of the sampled images with a duplicate, 2.3% of
    those in small groups, lost one). Nearest-centroid membership makes the pieces uneven, so
    pieces that grew past the limit are cut again (``rounds`` rounds of cuts in all; at 1M the
    second round takes the tiles' pairs -11%, a third changes nothing). Re-ranking after a cut is
    cheap (:func:`_reassign`): every row keeps 2 spare candidates, so only the pieces' product is
    computed, except for the few rows that lose more than their spares.
    Cost ~ N x (sqrt(N / target) x (1 + cells_probed)) dot products, plus the products of the
    cells' rows with their pieces; the vectors are read in sequential row chunks (a
    memory-mapped store is streamed, never held).
    """
    n = int(X.shape[0])
    rng = np.random.default_rng(seed)
    k = max(1, int(round(n / target)))
    k1 = max(1, int(round(np.sqrt(k))))
    ntrain = min(n, max(k1 * 256, 20_000))
    sample = np.sort(rng.choice(n, ntrain, replace=False)) if ntrain < n else np.arange(n)
    C1 = _kmeans(np.asarray(X[sample]), k1, seed, niter, 256)
    c = max(1, min(cells_probed, len(C1)))
    cells = _top_centroids(X, C1, c, chunk)
    own_cell = cells[:, 0]
    order = np.argsort(own_cell, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(own_cell, minlength=len(C1)))]
    fine, cell_parts, nxt = [], [], 0
    for j in range(len(C1)):
        mem = order[starts[j]:starts[j + 1]]
        if len(mem):
            kj = max(1, int(round(len(mem) / target)))
            m_train = kj * train_points
            sub = mem if len(mem) <= m_train else np.sort(rng.choice(mem, m_train, replace=False))
            fine.append(_kmeans(np.asarray(X[sub]), kj, seed + 1 + j, niter, train_points))
            cell_parts.append(np.arange(nxt, nxt + len(fine[-1]), dtype=np.int64))
            nxt += len(fine[-1])
        else:
            cell_parts.append(np.zeros(0, np.int64))
    C = np.concatenate(fine)
    from .blas import single_threaded_blas

    with single_threaded_blas():   # small products: OpenBLAS's threads cost more than they give (2-10x under load)
        npr = max(1, min(nprobe, len(C)))
        probes, vals = _assign(X, C, cells, cell_parts, npr + _SPARE, chunk)
        depth = np.full(n, probes.shape[1], np.int64)     # leading entries known to be each row's true nearest
        for _ in range(rounds):
            big = np.flatnonzero(np.bincount(probes[:, 0], minlength=len(C)) > split_factor * target)
            if not len(big):
                break
            C, cell_parts, new_parts = _split(X, C, probes, big, cell_parts, target)
            probes, vals, depth = _reassign(X, C, cells, cell_parts, new_parts, big, probes, vals, depth, npr, chunk)
        probes = np.ascontiguousarray(probes[:, :npr])
    short = np.flatnonzero((probes < 0).any(axis=0))     # a row short of npr partitions (tiny inputs)
    if len(short):
        probes = np.ascontiguousarray(probes[:, :max(1, int(short[0]))])
    return C, probes


def _split(X: np.ndarray, C: np.ndarray, probes: np.ndarray, big: np.ndarray, cell_parts: list[np.ndarray],
           target: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Cut each list in ``big`` into pieces: (centroids, cell_parts, each cell's pieces).

    The first piece keeps the list's id, the others are appended; each piece joins the cell of
    its list (members are then assigned by nearest centroid: see :func:`two_level_partition`).
    """
    own = probes[:, 0]
    order = np.argsort(own, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(own, minlength=len(C)))]
    cell_of = np.full(len(C), -1, np.int64)
    for j, ps in enumerate(cell_parts):
        cell_of[ps] = j
    C = np.array(C)
    new_parts = [np.zeros(0, np.int64) for _ in cell_parts]
    extra, nxt = [], len(C)
    for p in big.tolist():
        mem = np.sort(order[starts[p]:starts[p + 1]])
        cen = _pieces(np.asarray(X[mem], dtype=np.float32), target)
        C[p] = cen[0]
        extra.append(cen[1:])
        j = int(cell_of[p])
        ids = np.r_[p, np.arange(nxt, nxt + len(cen) - 1)].astype(np.int64)
        cell_parts[j] = np.r_[cell_parts[j], ids[1:]]
        new_parts[j] = np.r_[new_parts[j], ids]
        nxt += len(cen) - 1
    return np.concatenate([C, *extra]), cell_parts, new_parts


#: Candidates kept per row beyond ``nprobe``, so that cutting a list re-ranks a row's partitions with
#: the pieces' product only (:func:`_reassign`) instead of all its cells' centroids again.
_SPARE = 2


def _reassign(X: np.ndarray, C: np.ndarray, cells: np.ndarray, cell_parts: list[np.ndarray],
              new_parts: list[np.ndarray], big: np.ndarray, probes: np.ndarray, vals: np.ndarray,
              depth: np.ndarray, npr: int, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows' nearest partitions after the lists ``big`` were cut into ``new_parts``: (probes, vals, depth).

    Exact, by the same nearest-centroid rule as :func:`_assign` against all centroids of a row's cells:
    a row's first ``depth`` candidates are its true nearest; dropping the cut lists leaves the
    survivors as the nearest unchanged partitions, so when at least ``npr`` survive, merging the
    pieces of its cells (one product with the pieces only) gives its true nearest down to the last
    survivor; rows with fewer survivors are assigned again against all their cells' centroids.
    """
    K = probes.shape[1]
    cols = np.arange(K)
    cut = np.isin(probes, big) | (cols >= depth[:, None])
    has_new = np.flatnonzero([len(q) > 0 for q in new_parts])
    rows = np.flatnonzero(np.isin(cells, has_new).any(axis=1))   # every row with a cut list among its candidates is here
    probes, vals = probes.copy(), vals.copy()
    probes[cut], vals[cut] = -1, -np.inf
    alive = probes[rows] >= 0
    surv = alive.sum(axis=1)
    full, part = rows[surv < npr], rows[surv >= npr]
    last = np.where(alive, vals[rows], np.inf).min(axis=1)[surv >= npr]   # the last survivor's similarity
    if len(part):
        p_i, p_v = _assign(X, C, cells, new_parts, K, chunk, rows=part, init=(vals[part], probes[part]))
        probes[part], vals[part] = p_i, p_v
        depth[part] = (p_v >= last[:, None]).sum(axis=1)
    if len(full):
        probes[full], vals[full] = _assign(X, C, cells, cell_parts, K, chunk, rows=full)
        depth[full] = K
    return probes, vals, depth


def _assign(X: np.ndarray, C: np.ndarray, cells: np.ndarray, cell_parts: list[np.ndarray], npr: int, chunk: int,
            rows: np.ndarray | None = None, init: tuple[np.ndarray, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's (or each of ``rows``') ``npr`` nearest partitions among those of its coarse cells:
    (partitions, similarities), nearest first (-1: fewer); ``init`` (similarities, partitions) to merge into."""
    from .ortgemm import gemm_nt

    m = int(X.shape[0]) if rows is None else len(rows)
    if init is None:
        best_v = np.full((m, npr), -np.inf, np.float32)
        best_i = np.full((m, npr), -1, np.int32)
    else:                                   # sorted, nearest first (the merge keeps that order)
        srt = np.argsort(-np.asarray(init[0], np.float32), axis=1, kind="stable")
        best_v = np.ascontiguousarray(np.take_along_axis(np.asarray(init[0], np.float32), srt, axis=1))
        best_i = np.ascontiguousarray(np.take_along_axis(np.asarray(init[1], np.int32), srt, axis=1))
    Cp = [np.ascontiguousarray(C[ps]) if len(ps) else None for ps in cell_parts]
    ids = [np.asarray(ps, np.int32) for ps in cell_parts]

    def one(a: int, b: int) -> None:       # rows a..b: disjoint slices of best_v / best_i
        tc = cells[a:b] if rows is None else cells[rows[a:b]]
        flat = tc.ravel()
        by_cell = np.argsort(flat, kind="stable")      # (row, cell) slots grouped by cell
        bounds = np.r_[0, np.cumsum(np.bincount(flat, minlength=len(cell_parts)))]
        for j in np.flatnonzero(np.diff(bounds)).tolist():
            if Cp[j] is None:
                continue
            sel = by_cell[bounds[j]:bounds[j + 1]] // tc.shape[1]
            g = sel + a if rows is None else rows[sel + a]     # ascending: one read of each row it needs
            S = gemm_nt(np.asarray(X[g], dtype=np.float32), Cp[j], 1)
            _merge_into(best_v, best_i, sel + a, S, ids[j])

    T = max(1, int(nb.get_num_threads()))
    if T == 1 or m <= chunk:
        for a, b in _chunks(m, chunk):
            one(a, b)
    else:                                  # the product and the merge release the GIL
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(T) as pool:
            list(pool.map(lambda ab: one(*ab), list(_chunks(m, chunk))))
    return best_i, best_v


@nb.njit(cache=True, nogil=True)
def _merge_into(best_v, best_i, rows, S, ids):
    """Fold S (len(rows) x len(ids) similarities) into rows' running top-k, kept sorted nearest first (in place)."""
    K = best_v.shape[1]
    for r in range(S.shape[0]):
        i = rows[r]
        for c in range(S.shape[1]):
            s = S[r, c]
            if s > best_v[i, K - 1]:
                k = K - 1
                while k > 0 and best_v[i, k - 1] < s:
                    best_v[i, k] = best_v[i, k - 1]
                    best_i[i, k] = best_i[i, k - 1]
                    k -= 1
                best_v[i, k] = s
                best_i[i, k] = ids[c]


@nb.njit(cache=True, nogil=True)
def _prim_tile(A, Bt, f32floor, out_src, out_dst, out_w):
    """Maximum spanning forest of one partition's tile graph by Prim's algorithm on its dense matrix.

    Nodes 0..m-1 are the partition's members, m..L-1 the vectors probing it. ``A[v, u]`` (m x L)
    is the exact similarity of member v with node u, ``Bt[o - m, v]`` ((L-m) x m) that of probing
    node o with member v; probing nodes are not compared with one another. Edges < ``f32floor``
    are absent. Writes the forest (local indices) to out_*; returns its edge count.
    """
    m, L = A.shape
    NEG = np.float32(-np.inf)
    key = np.full(L, np.float32(-2.0))     # -2: not reached yet (below any similarity); -inf: in the forest
    par = np.zeros(L, np.int64)
    nb_ = (L + 63) >> 6
    bmax = np.full(nb_, np.float32(-2.0))  # per 64-node block: max key (an upper bound, exact after a refresh)
    cnt = 0
    for step in range(L):
        bb = 0
        best = bmax[0]
        for b in range(1, nb_):
            if bmax[b] > best:
                best = bmax[b]
                bb = b
        if best == NEG:
            break
        lo = bb << 6
        hi = min(L, lo + 64)
        v = lo
        for u in range(lo + 1, hi):
            if key[u] > key[v]:
                v = u
        kv = key[v]
        if kv >= f32floor:
            out_src[cnt] = par[v]
            out_dst[cnt] = v
            out_w[cnt] = kv
            cnt += 1
        key[v] = NEG
        nm = NEG
        for u in range(lo, hi):
            if key[u] > nm:
                nm = key[u]
        bmax[bb] = nm
        if v < m:
            row = A[v]
            for u in range(L):
                w = row[u]
                k = key[u]
                if w >= f32floor and w > k and k != NEG:
                    key[u] = w
                    par[u] = v
                    if w > bmax[u >> 6]:
                        bmax[u >> 6] = w
        else:
            row = Bt[v - m]
            for u in range(m):
                w = row[u]
                k = key[u]
                if w >= f32floor and w > k and k != NEG:
                    key[u] = w
                    par[u] = v
                    if w > bmax[u >> 6]:
                        bmax[u >> 6] = w
    return cnt


#: Tiles up to this many similarities (members x tile nodes, float32: 128 MB) take the dense path
#: (one GEMM + :func:`_prim_tile`); larger ones the blocked scan of :class:`TileScanner`.
DENSE_TILE_MAX = 32 * 2**20


def _tile_nodes(rows_of: np.ndarray, is_own: np.ndarray, seg: slice) -> np.ndarray:
    """A partition's tile nodes as global rows: its members first, then the vectors probing it."""
    return np.concatenate([rows_of[seg][is_own[seg]], rows_of[seg][~is_own[seg]]])


def _gather(X: np.ndarray, glob: np.ndarray) -> np.ndarray:
    """Rows ``glob`` of X as float32, read in ascending order (memory-map friendly)."""
    srt = np.argsort(glob, kind="stable")
    out = np.empty((len(glob), X.shape[1]), np.float32)
    out[srt] = np.asarray(X[glob[srt]], dtype=np.float32)
    return out


def _dense_tile(X: np.ndarray, glob: np.ndarray, m: int, f32floor: np.float32
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One tile's maximum spanning forest (global edges) by one float32 GEMM and Prim; pairs compared."""
    from .ortgemm import gemm_nt

    Xl = _gather(X, glob)
    L = len(glob)
    A = gemm_nt(Xl[:m], Xl, threads=1)        # m x L, exact on canonical vectors
    Bt = np.ascontiguousarray(A[:, m:].T)
    s, d, w = np.empty(L, np.int64), np.empty(L, np.int64), np.empty(L, np.float32)
    k = _prim_tile(A, Bt, f32floor, s, d, w)
    return glob[s[:k]], glob[d[:k]], w[:k], m * (m - 1) // 2 + m * (L - m)


def _partition_forest(X: np.ndarray, probes: np.ndarray, floor: float, progress: ProgressFn | None,
                      only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Run the exact tile kernel on every partition's tile (or those in ``only``).

    A tile is (members + vectors probing the partition) x members. Tiles up to
    :data:`DENSE_TILE_MAX` similarities run on ``nb.get_num_threads()`` worker threads, each one
    tile at a time: a single-threaded GEMM of the whole tile, then its maximum spanning forest by
    Prim's algorithm on the dense matrix (:func:`_prim_tile`: ~1 ns per pair, where the blocked
    scan's histogram + level filter costs ~10 ns per pair >= floor; ANN's histogram comes from the
    recall sample anyway). Larger tiles run the blocked scan (:class:`TileScanner`).
    Returns the union of the tiles' forests as global edges (src, dst, weight) and the number
    of pairs compared.
    """
    from concurrent.futures import ThreadPoolExecutor

    n, npr = probes.shape
    P = int(probes.max()) + 1
    flat_q = probes.ravel()
    order = np.argsort(flat_q, kind="stable")            # grouped by partition, then by row
    starts = np.r_[0, np.cumsum(np.bincount(flat_q, minlength=P))]
    rows_of = order // npr
    is_own = (order % npr) == 0
    own_sizes = np.bincount(probes[:, 0], minlength=P).astype(np.int64)
    tot_sizes = np.diff(starts)
    qs = np.arange(P) if only is None else np.asarray(only, dtype=np.int64)
    qs = qs[own_sizes[qs] > 0]
    work = int((own_sizes[qs] * tot_sizes[qs]).sum())
    f32floor = ceil_f32(floor)
    dense = own_sizes[qs] * tot_sizes[qs] <= DENSE_TILE_MAX
    small = qs[dense][np.argsort(-(own_sizes[qs] * tot_sizes[qs])[dense], kind="stable")]  # largest first
    done = 0
    srcs, dsts, ws = [], [], []
    compared = 0

    def step(q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        return _dense_tile(X, _tile_nodes(rows_of, is_own, slice(starts[q], starts[q + 1])), int(own_sizes[q]),
                           f32floor)

    T = max(1, int(nb.get_num_threads()))
    with ThreadPoolExecutor(T) as pool:
        for q, (s, d, w, c) in zip(small.tolist(), pool.map(step, small.tolist())):
            srcs.append(s)
            dsts.append(d)
            ws.append(w)
            compared += c
            done += int(own_sizes[q] * tot_sizes[q])
            if progress is not None:
                progress(done, work)
    hist = None
    for q in qs[~dense].tolist():
        glob = _tile_nodes(rows_of, is_own, slice(starts[q], starts[q + 1]))
        Xl = _gather(X, glob)
        m = int(own_sizes[q])
        sc = TileScanner(Xl, floor, hist=hist)
        hist = sc.hist
        sc.scan(0, m, 0, m, diagonal=True)
        if len(glob) > m:
            sc.scan(m, len(glob), 0, m, diagonal=False)
        s, d, w = sc.edges()
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
    from .ortgemm import gemm_nt

    T = max(1, int(nb.get_num_threads()))
    S = np.empty((s, min(n, col_chunk)), np.float32)
    for a, b in _chunks(n, col_chunk):
        S = gemm_nt(Xs, np.ascontiguousarray(X[a:b], dtype=np.float32), T, out=S[:, :b - a] if b - a == S.shape[1] else None)
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


def _recall_ok(recall: dict, goal: float) -> bool:
    """Every threshold's pair recall (95% lower bound) and share of complete sampled rows reach ``goal``."""
    return all(r["lower_95"] >= goal and r["rows_complete"] >= goal for r in recall["by_threshold"].values())


def ann_forest(vectors: np.ndarray, floor: float, *, progress: ProgressFn | None = None, target: int = 1000,
               nprobe: int = 2, split_factor: float = 2.0, recall_sample: int = 2000, seed: int = 0,
               recall_goal: float = 0.99, max_nprobe: int = 8, tiles: TilesFn | None = None) -> SimilarityForest:
    """Approximate maximum spanning forest of the pairs >= ``floor`` (see the module docstring).

    Starts with ``nprobe`` probes; when the measured recall misses ``recall_goal`` (at any
    threshold: the pair recall's 95% lower bound or the share of sampled rows with every true
    neighbour in their group), the pass runs again with twice the probes, up to ``max_nprobe``;
    the recall of the forest returned is the one measured on it (``meta["tries"]`` lists each
    try). ``tiles`` runs the partitions' tiles (default :func:`_partition_forest`, in this
    process; the Ray engine passes one that runs them as tasks). ``meta`` records: ``engine="ann"``, the parameters, timings, ``compared_fraction``
    (pairs actually compared / all pairs), ``recall`` = {"pair_recall", "pair_recall_lower_95",
    "sample", "by_threshold": {t: {...}}, "method"} and ``hist_estimated=True`` (pair counts
    are a sample estimate). ``recall_sample=0`` skips the estimate (histogram then empty; no
    retry).
    """
    if not (0.0 < floor <= 1.0):
        raise ValueError(f"floor {floor} is outside (0, 1]")
    X = canonical_vectors(vectors)
    n = int(X.shape[0])
    meta: dict = {"engine": "ann", "method": "two-level k-means partitions+probes, Prim per tile", "target": target,
                  "nprobe": nprobe, "split_factor": split_factor}
    if n < 2:
        return SimilarityForest(n, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                                float(floor), np.zeros(hist_bins(floor), np.int64), meta)
    tries: list[dict] = []
    while True:
        t0, c0 = time.perf_counter(), time.process_time()
        C, probes = two_level_partition(X, target=target, nprobe=nprobe, split_factor=split_factor, seed=seed)
        t1, c1 = time.perf_counter(), time.process_time()
        log.info("ann: %d partitions (largest %d), %d probes, in %.1f s", int(probes.max()) + 1,
                 int(np.bincount(probes[:, 0]).max()), probes.shape[1], t1 - t0)
        src, dst, w, compared = (tiles or _partition_forest)(X, probes, float(floor), progress)
        sizes = np.bincount(probes[:, 0], minlength=len(C))
        del probes
        t2, c2 = time.perf_counter(), time.process_time()
        forest = SimilarityForest.from_edges(n, src, dst, w, floor)
        del src, dst, w
        t3, c3 = time.perf_counter(), time.process_time()
        log.info("ann: tiles %.1f s, merge %.1f s, %d forest edges", t2 - t1, t3 - t2, len(forest.src))
        run = {"nprobe": nprobe, "compared_fraction": float(compared / (n * (n - 1) / 2)),
               "seconds": {"partition": round(t1 - t0, 2), "tiles": round(t2 - t1, 2), "merge": round(t3 - t2, 2)},
               "cpu_seconds": {"partition": round(c1 - c0, 2), "tiles": round(c2 - c1, 2), "merge": round(c3 - c2, 2)}}
        if recall_sample > 0:
            recall, est = estimate_recall(X, forest, sample=recall_sample, seed=seed + 7)
            run["seconds"]["recall"] = round(time.perf_counter() - t3, 2)
            run["cpu_seconds"]["recall"] = round(time.process_time() - c3, 2)
            run["pair_recall"] = recall["pair_recall"]
            run["rows_complete"] = min(r["rows_complete"] for r in recall["by_threshold"].values())
        tries.append(run)
        if recall_sample <= 0 or _recall_ok(recall, recall_goal) or nprobe >= max_nprobe:
            break
        log.info("ann: recall %.6f (rows complete %.4f) below %g with %d probes: again with %d",
                 run["pair_recall"], run["rows_complete"], recall_goal, nprobe, min(max_nprobe, 2 * nprobe))
        nprobe = min(max_nprobe, 2 * nprobe)
    meta.update(nprobe=nprobe, partitions=int(len(C)), largest_partition=int(sizes.max()),
                median_partition=float(np.median(sizes[sizes > 0])), compared_fraction=run["compared_fraction"],
                seconds={k: round(sum(t["seconds"].get(k, 0.0) for t in tries), 2)
                         for k in ("partition", "tiles", "merge", "recall")},
                cpu_seconds={k: round(sum(t["cpu_seconds"].get(k, 0.0) for t in tries), 2)
                             for k in ("partition", "tiles", "merge", "recall")},
                tries=tries, recall_goal=recall_goal)
    if recall_sample > 0:
        forest.hist = est
        meta["recall"] = recall
        meta["hist_estimated"] = True
        meta["hist_method"] = f"scaled from {recall['sample']} sampled rows x all rows (exact)"
    else:
        meta["hist_estimated"] = True
        meta["hist_method"] = "none (recall_sample=0): pair counts unknown, histogram is zero"
    forest.meta = meta
    return forest


__all__ = ["ann_forest", "estimate_recall", "partition", "two_level_partition", "RECALL_THRESHOLDS", "HIST_STEP"]
