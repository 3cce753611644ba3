"""Exact similarity pass: blocked float32 GEMM over the upper triangle, reduced to a forest.

The matrix product is not the cost to beat; pair extraction is (a 55k-member group has ~1e9
pairs above 0.98). So each block of similarities goes through one compiled scan that

* adds every pair >= floor to the histogram (pair counts for any threshold), and
* keeps an edge only if it can still matter for the maximum spanning forest: an edge (i, j, w)
  is dropped when i and j are already joined by a path whose every edge is >= a level L >= w
  (cycle property). Connectivity is tracked per level in union-find arrays (a ladder of ~20
  levels from 1.0 down to the floor), refreshed from the forest after each row block and
  updated online inside the scan, so a dense group stops producing edges after a few rows.

Kept edges are merged into the forest with Kruskal after each row block. Memory is
O(N * levels + block). The vectors are canonical (:mod:`.canonical`), so every float32 dot
product is exact whatever the BLAS kernel, block shape or thread count: the forest's weights,
the components at every threshold and the histogram are a function of the vectors alone.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..jit import nb
from .bitmask import lowest_bit, row_mask
from .canonical import canonical_vectors
from .forest import SimilarityForest, _find, _hist_bin, _union, ceil_f32, hist_bins, hist_edges

ProgressFn = Callable[[int, int], None]
LEVEL_RATIO = 1.15  # consecutive levels' gaps (1 - level) differ by this factor


def filter_levels(floor: float) -> np.ndarray:
    """Descending ladder of connectivity levels: 1.0, then geometric in (1 - s) down to ``floor``."""
    gap = 1.0 - floor
    if gap <= 1e-5:
        return np.array([1.0, floor], dtype=np.float64) if floor < 1.0 else np.array([1.0])
    gaps = np.geomspace(1e-5, gap, num=max(2, int(np.ceil(np.log(gap / 1e-5) / np.log(LEVEL_RATIO))) + 1))
    levels = np.concatenate([[1.0], 1.0 - gaps])
    levels[-1] = floor
    return levels


def level_of_bin(floor: float, levels: np.ndarray) -> np.ndarray:
    """For each histogram bin, the index of the lowest level that is >= the bin's upper edge."""
    upper = np.minimum(hist_edges(floor)[1:], 1.0)  # every similarity in bin b is < upper[b] (or = 1.0)
    # levels are descending; count levels >= upper, minus one = last index with level >= upper
    idx = np.searchsorted(-levels, -upper, side="right") - 1
    return np.maximum(idx, 0).astype(np.int64)


@nb.njit(cache=True)
def _refresh_labels(n: int, src: np.ndarray, dst: np.ndarray, w: np.ndarray, levels: np.ndarray,
                    flat: np.ndarray, start: int = 0) -> None:
    """flat[l, i] = root of i in the forest restricted to edges >= levels[l], for i >= start.

    Entries below ``start`` (rows already done) keep older roots: still valid ancestors, since
    components only merge and a root stays the smallest index of its component.
    """
    parent = np.arange(n, dtype=np.int64)
    e = 0
    for lv in range(levels.shape[0]):
        while e < w.shape[0] and w[e] >= levels[lv]:
            _union(parent, src[e], dst[e])
            e += 1
        for i in range(start, n):
            flat[lv, i] = _find(parent, i)


@nb.njit(cache=True)
def _merge_kruskal(n: int, f_src: np.ndarray, f_dst: np.ndarray, f_w: np.ndarray,
                   k_src: np.ndarray, k_dst: np.ndarray, k_w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum spanning forest of two edge lists, each sorted heaviest first (a merge + Kruskal)."""
    parent = np.arange(n, dtype=np.int64)
    cap = min(f_src.shape[0] + k_src.shape[0], max(n - 1, 0))
    o_src = np.empty(cap, np.int64)
    o_dst = np.empty(cap, np.int64)
    o_w = np.empty(cap, np.float32)
    a = 0
    b = 0
    m = 0
    while (a < f_src.shape[0] or b < k_src.shape[0]) and m < cap:
        if b >= k_src.shape[0] or (a < f_src.shape[0] and f_w[a] >= k_w[b]):
            x, y, w = f_src[a], f_dst[a], f_w[a]
            a += 1
        else:
            x, y, w = k_src[b], k_dst[b], k_w[b]
            b += 1
        if _union(parent, x, y):
            o_src[m] = x
            o_dst[m] = y
            o_w[m] = w
            m += 1
    return o_src[:m], o_dst[:m], o_w[:m]


@nb.njit(cache=True)
def _grid_order_desc(w: np.ndarray) -> np.ndarray:
    """Indices sorting ``w`` heaviest first by a counting sort on the 2**-22 grid (similarities of
    canonical vectors lie on it); empty when some weight is off the grid or the range is too wide."""
    m = w.shape[0]
    if m == 0:
        return np.zeros(0, np.int64)
    kmin = np.int64(1) << 40
    kmax = -kmin
    for e in range(m):
        k = np.float64(w[e]) * 4194304.0
        if k != np.floor(k) or abs(k) > 2.0**30:
            return np.zeros(0, np.int64)
        ki = np.int64(k)
        kmin = min(kmin, ki)
        kmax = max(kmax, ki)
    width = kmax - kmin + 1
    if width > 4 * m + 4096:  # sparse keys: a comparison sort is cheaper
        return np.zeros(0, np.int64)
    start = np.zeros(width + 1, np.int64)
    for e in range(m):
        start[kmax - np.int64(np.float64(w[e]) * 4194304.0) + 1] += 1
    for b in range(width):
        start[b + 1] += start[b]
    order = np.empty(m, np.int64)
    for e in range(m):
        b = kmax - np.int64(np.float64(w[e]) * 4194304.0)
        order[start[b]] = e
        start[b] += 1
    return order


def merge_kept_edges(n: int, forest: tuple[np.ndarray, np.ndarray, np.ndarray],
                     kept: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The forest (src, dst, w; heaviest first) updated with a scan's kept edges, heaviest first."""
    if not kept:
        return forest
    src = np.concatenate([e[0] for e in kept])
    dst = np.concatenate([e[1] for e in kept])
    w = np.concatenate([e[2] for e in kept])
    # ties may land in any order: any maximum spanning forest will do
    order = _grid_order_desc(w) if len(w) > 1 else np.arange(len(w))
    if len(order) != len(w):
        order = np.argsort(-w)
    return _merge_kruskal(n, *forest, src[order], dst[order], w[order])


@nb.njit(cache=True, inline="always")
def visit_hit(s, i, j, t, cnt, edges, levels, lev_of_bin, flat, uf, hist, out_src, out_dst, out_w):  # type: ignore[no-untyped-def]
    """One pair (i, j) with similarity ``s`` >= floor, seen by scan thread t: count it in the
    histogram and keep it as an edge unless the level filter shows i and j already joined at a
    level >= s (the forest so far in ``flat``, this thread's unions in ``uf[t]``); a kept edge
    joins i and j at every level <= s. Returns the new count of kept edges (``cnt`` + 0 or 1).
    Shared by the float32 scan and the int8 pass's scan (:mod:`.prepass`).
    """
    b, sd = _hist_bin(s, edges)
    hist[t, b] += 1
    la = lev_of_bin[b]
    if flat[la, i] == flat[la, j]:
        return cnt
    if _find(uf[t, la], i) == _find(uf[t, la], j):
        return cnt
    out_src[t, cnt] = i
    out_dst[t, cnt] = j
    out_w[t, cnt] = sd
    nlev = levels.shape[0]
    lv = la
    while lv < nlev and levels[lv] > sd:
        lv += 1
    # levels are nested: once joined at one level, joined at every level below
    while lv < nlev and _union(uf[t, lv], i, j):
        lv += 1
    return cnt + 1


@nb.njit(cache=True, parallel=True)
def _scan_block(S, row0, col0, diagonal, f32floor, edges, levels, lev_of_bin, flat, uf, hist,
                out_src, out_dst, out_w, out_n, row_lo, row_hi):
    """Histogram and filter one similarity block; thread t owns rows [row_lo[t], row_hi[t]).

    Returns nothing; writes kept edges to out_*[t, :out_n[t]] and advances row_lo[t] to the
    first unprocessed row (it stops early when its output buffer might overflow).
    """
    nthreads = row_lo.shape[0]
    ncols = S.shape[1]
    cap = out_src.shape[1]
    for t in nb.prange(nthreads):
        cnt = out_n[t]
        r = row_lo[t]
        while r < row_hi[t]:
            if cnt + ncols > cap:
                break
            i = row0 + r
            cstart = 0
            if diagonal:
                cstart = i - col0 + 1
                if cstart < 0:
                    cstart = 0
            for c_lo in range(cstart, ncols, 64):
                # most pairs are below the floor, and in dense rows the hits are scattered:
                # compare 64 at once into a bit mask, then visit only the set bits
                mask = row_mask(S, r, c_lo, ncols, f32floor)
                while mask:
                    c = c_lo + lowest_bit(mask)
                    mask &= mask - np.uint64(1)
                    cnt = visit_hit(S[r, c], i, col0 + c, t, cnt, edges, levels, lev_of_bin, flat, uf, hist,
                                    out_src, out_dst, out_w)
            r += 1
        row_lo[t] = r
        out_n[t] = cnt


def scan_kept_edges(S: np.ndarray, row0: int, col0: int, diagonal: bool, floor: float, levels: np.ndarray,
                    lev_of_bin: np.ndarray, flat: np.ndarray, uf: np.ndarray, hist: np.ndarray,
                    out: tuple[np.ndarray, np.ndarray, np.ndarray], bounds: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Run :func:`_scan_block` over one block until every thread's rows are done.

    ``out`` holds per-thread (src, dst, w) buffers; when one could overflow the scan stops
    early and resumes, so the kept edges come back as a list of ``(src, dst, w)`` copies.
    """
    out_src, out_dst, out_w = out
    T = len(bounds) - 1
    row_lo, row_hi = bounds[:-1].copy(), bounds[1:].copy()
    kept: list[tuple[np.ndarray, ...]] = []
    while True:
        out_n = np.zeros(T, np.int64)
        _scan_block(S, row0, col0, diagonal, ceil_f32(floor), hist_edges(floor), levels, lev_of_bin, flat, uf, hist,
                    out_src, out_dst, out_w, out_n, row_lo, row_hi)
        for t in range(T):
            k = int(out_n[t])
            if k:
                kept.append((out_src[t, :k].copy(), out_dst[t, :k].copy(), out_w[t, :k].copy()))
        if np.all(row_lo >= row_hi):
            return kept


def upper_triangle_blocks(X: np.ndarray, block_rows: int = 2048,
                          col_chunk: int = 8192) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(row0, col0, S)`` with ``S = X[row0:row0+rb] @ X[col0:col0+cc].T`` over the upper triangle.

    Row blocks come in order and ``col0 == row0`` starts one (its first chunk holds the
    diagonal). ``S`` lives in one reused buffer: it is overwritten by the next block.
    """
    n = int(X.shape[0])
    buf = np.empty(min(block_rows, max(n, 1)) * min(col_chunk, max(n, 1)), dtype=np.float32)
    for a in range(0, n, block_rows):
        b = min(n, a + block_rows)
        Xr = np.ascontiguousarray(X[a:b], dtype=np.float32)
        for c0 in range(a, n, col_chunk):
            c1 = min(n, c0 + col_chunk)
            S = buf[: (b - a) * (c1 - c0)].reshape(b - a, c1 - c0)
            np.matmul(Xr, np.asarray(X[c0:c1], dtype=np.float32).T, out=S)
            yield a, c0, S


def thread_row_bounds(rows: int, cols: int, diagonal: bool, threads: int) -> np.ndarray:
    """Split a block's rows among threads so each scans about as many pairs.

    In a diagonal block row r only owns the columns right of the diagonal, so top rows weigh more.
    """
    if diagonal:
        w = np.maximum(cols - np.arange(rows) - 1, 0).astype(np.float64)
        cum = np.r_[0.0, np.cumsum(w)]
        bounds = np.searchsorted(cum, np.linspace(0, cum[-1], threads + 1)).clip(0, rows)
        bounds[0], bounds[-1] = 0, rows
    else:
        bounds = np.linspace(0, rows, threads + 1)
    return np.maximum.accumulate(bounds.astype(np.int64))


def _threads() -> int:
    return max(1, int(nb.get_num_threads()))


INT8_MIN_ROWS = 4096  # below this the int8 pass's set-up (order, codes) outweighs its gain


def choose_kernel(n: int, kernel: str | None = None) -> str:
    """The kernel path a pass over ``n`` rows uses: ``kernel`` or ``NEARDUP_KERNEL`` when given,
    else :func:`neardup.similarity.quantized.kernel_path` (float32 below ``INT8_MIN_ROWS`` rows)."""
    import os

    from .quantized import KERNEL_ENV, kernel_path

    forced = kernel or os.environ.get(KERNEL_ENV) or None
    if forced is not None:
        return kernel_path(forced)
    return kernel_path() if n >= INT8_MIN_ROWS else "float32"


def exact_forest(vectors: np.ndarray, floor: float, *, block_rows: int = 2048, col_chunk: int = 8192,
                 progress: ProgressFn | None = None, kernel: str | None = None) -> SimilarityForest:
    """The exact maximum spanning forest of all pairs with cosine >= ``floor``, and their histogram.

    ``vectors`` are unit-norm rows, rounded to canonical vectors here unless they already are
    (the catalog stores them canonical; a memory map is fine: the int8 path reads it chunk by chunk
    into its locality-ordered copy and drops the map's pages from the resident set as it goes, so
    the pass does not hold the vectors twice; the float32 path reads blocks as needed).
    ``progress(done_pairs, total_pairs)`` is called after every row block. ``kernel`` forces a
    kernel path (``int8-vnni``, ``int8-7bit``, ``float32``; see :func:`choose_kernel`): every
    path gives the same histogram, forest weights and components.
    """
    if not (0.0 < floor <= 1.0):
        raise ValueError(f"floor {floor} is outside (0, 1]")
    X = canonical_vectors(vectors)
    n = int(X.shape[0])
    path = choose_kernel(n, kernel)
    levels = filter_levels(floor)
    lob = level_of_bin(floor, levels)
    nlev = len(levels)
    T = _threads()
    flat = np.empty((nlev, n), dtype=np.int32)
    flat[:] = np.arange(n, dtype=np.int32)
    hist = np.zeros((T, hist_bins(floor)), dtype=np.int64)
    forest = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    cap = 8 * col_chunk + 4096
    out = (np.empty((T, cap), np.int64), np.empty((T, cap), np.int64), np.empty((T, cap), np.float32))
    total = n * (n - 1) // 2
    done = 0
    uf = np.empty((T, nlev, n), dtype=np.int32)
    meta: dict = {"engine": "exact", "block_rows": block_rows, "kernel": path}
    order = None
    if path == "float32":
        blocks = None
    else:
        from .locality import locality_order, take_rows
        from .prepass import Int8Blocks
        from .quantized import LEVELS, Quantized

        Q = Quantized(X, LEVELS[path])  # reads a memory map chunk by chunk, its pages leave the resident set
        order = locality_order(Q.u8, Q.scale)
        Q = Q.take(order)  # the unordered codes go before the ordered vectors come (memory)
        X = take_rows(np.asarray(X, dtype=np.float32), order)  # a map's pages are dropped as they are copied
        blocks = Int8Blocks(X, Q, floor, T, min(block_rows, max(n, 1)) * min(col_chunk, max(n, 1)))
        del Q
    buf = np.empty(min(block_rows, max(n, 1)) * min(col_chunk, max(n, 1)), dtype=np.float32) if blocks is None else None
    # the int8 path walks row blocks from the last (see prepass._scan_runs: rows in a locality order)
    starts = range(0, n, block_rows)
    for a in (starts if blocks is None else reversed(starts)):
        b = min(n, a + block_rows)
        rb = b - a
        uf[:] = flat[None]  # per-thread union-finds start from the forest so far (one buffer: no page faults)
        kept: list[tuple[np.ndarray, ...]] = []
        Xr = np.ascontiguousarray(X[a:b], dtype=np.float32) if blocks is None else None
        for c0 in range(a, n, col_chunk):
            c1 = min(n, c0 + col_chunk)
            if blocks is None:
                S = buf[: rb * (c1 - c0)].reshape(rb, c1 - c0)
                np.matmul(Xr, np.asarray(X[c0:c1], dtype=np.float32).T, out=S)
                kept += scan_kept_edges(S, a, c0, c0 == a, floor, levels, lob, flat, uf, hist, out,
                                        thread_row_bounds(rb, c1 - c0, c0 == a, T))
            else:
                from .prepass import scan_runs

                E, runs = blocks.block(a, b, c0, c1)
                kept += scan_runs(E, runs, a, c0, floor, levels, lob, flat, uf, hist, out)
        # end of a row block: merge its kept edges into the forest, refresh the level labels
        forest = merge_kept_edges(n, forest, kept)
        # the next block reads labels from its first row on: a + rb going up, a - block_rows going down
        _refresh_labels(n, forest[0], forest[1], forest[2].astype(np.float64), levels, flat,
                        a + rb if blocks is None else max(0, a - block_rows))
        done += rb * (n - a) - rb * (rb + 1) // 2
        if progress is not None:
            progress(done, total)
    f_src, f_dst, f_w = forest
    if order is not None:
        f_src, f_dst = order[f_src], order[f_dst]
        meta["exact_fraction"] = round(blocks.pairs_exact / max(blocks.pairs_total, 1), 4)
        meta["int8_fraction"] = round(blocks.pairs_int8 / max(blocks.pairs_total, 1), 4)
    return SimilarityForest(n, f_src, f_dst, f_w, float(floor), hist.sum(axis=0), meta)


__all__ = ["choose_kernel", "exact_forest", "filter_levels", "merge_kept_edges", "scan_kept_edges", "thread_row_bounds", "upper_triangle_blocks"]
