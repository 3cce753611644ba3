"""Update a similarity forest when rows are added, changed or removed, without a full pass.

The forest is the maximum spanning forest (MSF) of the graph "similarity >= floor", plus the
histogram of every pair >= floor. Two exact updates:

* **Add rows** (:func:`extend_forest`): put the unchanged rows first and the new rows last;
  scan only the new rows against every row (new x old, and new x new once: the upper
  triangle of the new rows), with the same compiled filter as the full pass; Kruskal-merge the
  kept edges into the forest (the MSF of a union is the MSF of the union of MSFs). The pairs
  scanned are exactly the pairs that did not exist before, so their histogram is added.
* **Remove rows** (:func:`remove_nodes`; a changed row is a removal plus an addition): a forest
  cannot drop edges, but it tells which part of the graph a removal can touch. Every pair
  >= floor lies inside one component of the forest at the floor, so only the components
  holding a removed row change. Inside one, the forest minus the removed rows falls into
  *pieces*; an edge that was not in the forest stays out unless its forest path went through a
  removed row, i.e. unless it joins two different pieces. So the new MSF is Kruskal over the
  surviving forest edges plus every edge between pieces -- and each such edge has an endpoint
  outside the largest piece. That is the "add rows" scan again, with the largest piece as the
  old rows and the other pieces as the new ones: |C| x (|C| - |largest piece|) pairs at most,
  never more than recomputing the component. The histogram loses exactly the pairs with a
  removed row, which all lie in that row's component, computed from the vectors the forest
  was built on.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..jit import nb
from .exact import (_refresh_labels, filter_levels, level_of_bin, merge_kept_edges, scan_kept_edges,
                    thread_row_bounds)
from .forest import _hist_bin, _labels, ceil_f32, hist_bins, hist_edges

Edges = tuple[np.ndarray, np.ndarray, np.ndarray]
ProgressFn = Callable[[int, int], None]


class RowSource:
    """Rows of a (memory-mapped) matrix in a working order: ``take(a, b)`` = ``X[order[a:b]]``."""

    def __init__(self, X: np.ndarray, order: np.ndarray | None = None) -> None:
        self.X = X
        self.order = None if order is None else np.asarray(order, dtype=np.int64)
        if self.order is not None and len(self.order) == len(X) and np.array_equal(self.order, np.arange(len(X))):
            self.order = None  # identity: plain slices, no gather
        self.n = len(X) if self.order is None else len(self.order)

    def take(self, a: int, b: int) -> np.ndarray:
        if self.order is None:
            return np.ascontiguousarray(self.X[a:b], dtype=np.float32)
        idx = self.order[a:b]
        return np.ascontiguousarray(self.X[idx], dtype=np.float32)

    def take_rows(self, nodes: np.ndarray) -> np.ndarray:
        """Rows ``nodes`` of the working order (any order, float32, contiguous)."""
        idx = np.asarray(nodes, dtype=np.int64)
        return np.ascontiguousarray(self.X[idx if self.order is None else self.order[idx]], dtype=np.float32)


def empty_edges() -> Edges:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def _blocks(n: int, m: int, block_rows: int, col_chunk: int) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """Row blocks of [m, n) and, for each, its column chunks: the old rows [0, m) in full, then [a, n)
    as a triangle (so a pair of two new rows is scanned once, in the block of the first)."""
    for a in range(m, n, block_rows):
        b = min(n, a + block_rows)
        cols = [(c0, min(c0 + col_chunk, m)) for c0 in range(0, m, col_chunk)]
        cols += [(c0, min(c0 + col_chunk, n)) for c0 in range(a, n, col_chunk)]
        yield a, b, cols


def extend_forest(rows: RowSource, m: int, forest: Edges, floor: float, *, block_rows: int = 2048,
                  col_chunk: int = 8192, progress: ProgressFn | None = None) -> tuple[Edges, np.ndarray]:
    """The MSF after adding rows ``[m, n)`` of ``rows`` to a graph whose MSF over ``[0, m)`` is ``forest``.

    Scans the pairs (i, j) with i in [m, n) and j < i -- each new pair once -- and returns the
    merged forest (src, dst, weight; heaviest first; working indices) and the histogram of the
    scanned pairs >= floor (the same binning as the full pass).
    """
    n = rows.n
    nbins = hist_bins(floor)
    levels = filter_levels(floor)
    lob = level_of_bin(floor, levels)
    T = max(1, int(nb.get_num_threads()))
    hist = np.zeros((T, nbins), dtype=np.int64)
    if n - m <= 0 or n < 2:
        return forest, hist.sum(axis=0)
    flat = np.empty((len(levels), n), dtype=np.int32)
    _refresh_labels(n, forest[0], forest[1], forest[2].astype(np.float64), levels, flat, 0)
    cap = 8 * col_chunk + 4096
    out = (np.empty((T, cap), np.int64), np.empty((T, cap), np.int64), np.empty((T, cap), np.float32))
    total = (n - m) * m + (n - m) * (n - m - 1) // 2
    done = 0
    for a, b, cols in _blocks(n, m, block_rows, col_chunk):
        Xr = rows.take(a, b)
        uf = np.repeat(flat[None], T, axis=0)
        kept: list[tuple[np.ndarray, ...]] = []
        for c0, c1 in cols:
            S = Xr @ rows.take(c0, c1).T
            diagonal = c0 >= a
            kept += scan_kept_edges(S, a, c0, diagonal, floor, levels, lob, flat, uf, hist,
                                    out, thread_row_bounds(b - a, c1 - c0, diagonal, T))
        forest = merge_kept_edges(n, forest, kept)
        _refresh_labels(n, forest[0], forest[1], forest[2].astype(np.float64), levels, flat, 0)
        done += (b - a) * m + (b - a) * (n - a) - (b - a) * (b - a + 1) // 2
        if progress is not None:
            progress(done, total)
    return forest, hist.sum(axis=0)


@nb.njit(cache=True)
def _bin_counts(vals: np.ndarray, edges: np.ndarray, out: np.ndarray) -> None:
    for k in range(vals.shape[0]):
        b, _ = _hist_bin(vals[k], edges)
        out[b] += 1


def _piece_labels(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return _labels(n, src, dst, len(src)) if n else np.zeros(0, np.int64)


def remove_nodes(old_rows: RowSource, forest: Edges, floor: float, removed: np.ndarray, *,
                 batch: int = 4096, block_rows: int = 2048, col_chunk: int = 8192) -> tuple[Edges, np.ndarray, dict]:
    """The MSF and histogram change after removing the ``removed`` nodes (boolean mask).

    ``old_rows`` gives the vectors the forest was computed on (node order). Returns the forest
    over the same node numbering with no edge touching a removed node, the histogram of the
    old pairs >= floor that had a removed node (to subtract), and counts of the work done.
    """
    n = old_rows.n
    nbins = hist_bins(floor)
    src, dst, w = forest
    lost = np.zeros(nbins, dtype=np.int64)
    removed = np.asarray(removed, dtype=bool)
    stats = dict(components_touched=0, rows_rescanned=0)
    if not removed.any():
        return forest, lost, stats
    labels = _labels(n, src, dst, len(src))                  # components at the floor
    aff_lab = np.unique(labels[removed])
    aff = np.isin(labels, aff_lab)
    stats["components_touched"] = int(len(aff_lab))
    # -- histogram: old pairs >= floor with a removed endpoint, all inside the removed row's component
    R = np.flatnonzero(removed)
    order = np.argsort(labels[R], kind="stable")
    R = R[order]
    members = np.flatnonzero(aff)
    members = members[np.argsort(labels[members], kind="stable")]
    m_lab = labels[members]
    r_lab = labels[R]
    f32 = ceil_f32(floor)  # similarities are exact float32 values: s >= floor iff s >= f32
    edges = hist_edges(floor)
    for i0, i1 in _label_batches(m_lab, batch):
        ms = np.sort(members[i0:i1])
        lo = int(np.searchsorted(r_lab, m_lab[i0], side="left"))
        hi = int(np.searchsorted(r_lab, m_lab[i1 - 1], side="right"))
        rs = R[lo:hi]
        Xm = old_rows.X[old_rows.order[ms]] if old_rows.order is not None else np.asarray(old_rows.X[ms])
        Xm = np.ascontiguousarray(Xm, dtype=np.float32)
        pos = np.searchsorted(ms, rs)
        lab_m = labels[ms]
        rem_m = removed[ms]
        for s in range(0, len(rs), 256):
            p = pos[s:s + 256]
            S = Xm[p] @ Xm.T
            same = lab_m[None, :] == lab_m[p][:, None]
            # each pair once: a removed row pairs with every survivor, and with removed rows after it
            later = ~rem_m[None, :] | (np.arange(len(ms))[None, :] > p[:, None])
            hit = (S >= f32) & same & later
            _bin_counts(S[hit], edges, lost)
    # -- forest: survivors' edges; pieces; rescan each touched component's smaller pieces
    keep_e = ~removed[src] & ~removed[dst]
    s_src, s_dst, s_w = src[keep_e], dst[keep_e], w[keep_e]
    untouched_e = ~aff[s_src]
    parts: list[Edges] = [(s_src[untouched_e], s_dst[untouched_e], s_w[untouched_e])]
    surv = np.flatnonzero(aff & ~removed)
    surv = surv[np.argsort(labels[surv], kind="stable")]
    sv_lab = labels[surv]
    for i0, i1 in _label_batches(sv_lab, batch):
        nodes = np.sort(surv[i0:i1])
        if len(nodes) < 2:
            continue
        local = np.full(n, -1, dtype=np.int64)
        local[nodes] = np.arange(len(nodes))
        e = ~untouched_e
        e_src, e_dst, e_w = s_src[e], s_dst[e], s_w[e]
        inside = (local[e_src] >= 0) & (local[e_dst] >= 0)
        l_src, l_dst, l_w = local[e_src[inside]], local[e_dst[inside]], e_w[inside]
        piece = _piece_labels(len(nodes), l_src, l_dst)
        comp = labels[nodes]
        # per component, its largest piece stays "old"; every other piece is rescanned
        sizes = np.bincount(piece, minlength=len(nodes))
        key = np.lexsort((-sizes[piece], comp))
        first = np.r_[True, comp[key][1:] != comp[key][:-1]]
        big_of_comp = dict(zip(comp[key][first].tolist(), piece[key][first].tolist()))
        big_piece = np.fromiter((big_of_comp[c] == p for c, p in zip(comp.tolist(), piece.tolist())),
                                dtype=bool, count=len(nodes))
        work = np.r_[np.flatnonzero(big_piece), np.flatnonzero(~big_piece)]
        m = int(big_piece.sum())
        if m == len(nodes):
            parts.append((nodes[l_src], nodes[l_dst], l_w))
            continue
        inv = np.empty(len(nodes), dtype=np.int64)
        inv[work] = np.arange(len(nodes))
        o = np.argsort(-l_w, kind="stable")
        seed = (inv[l_src[o]], inv[l_dst[o]], l_w[o])
        src_rows = RowSource(old_rows.X, nodes[work] if old_rows.order is None else old_rows.order[nodes[work]])
        (f_src, f_dst, f_w), _ = extend_forest(src_rows, m, seed, floor, block_rows=block_rows, col_chunk=col_chunk)
        stats["rows_rescanned"] += len(nodes) - m
        parts.append((nodes[work[f_src]], nodes[work[f_dst]], f_w))
    out_src = np.concatenate([p[0] for p in parts])
    out_dst = np.concatenate([p[1] for p in parts])
    out_w = np.concatenate([p[2] for p in parts]).astype(np.float32)
    o = np.argsort(-out_w, kind="stable")
    return (out_src[o], out_dst[o], out_w[o]), lost, stats


def _label_batches(sorted_labels: np.ndarray, batch: int) -> Iterator[tuple[int, int]]:
    """Index ranges [i0, i1) of a sorted label array: whole components, about ``batch`` nodes each."""
    if len(sorted_labels) == 0:
        return
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ends = np.r_[starts[1:], len(sorted_labels)]
    i0 = 0
    for k in range(len(starts)):
        if ends[k] - i0 >= batch or k == len(starts) - 1:
            yield int(i0), int(ends[k])
            i0 = int(ends[k])


__all__ = ["RowSource", "empty_edges", "extend_forest", "remove_nodes"]
