"""A row order that puts similar vectors next to each other (a principal-direction tree).

The int8 pre-pass (:mod:`.prepass`) leaves a few percent of the pairs as candidates that need
their exact value, and an exact value is cheap only inside a dense GEMM tile. In a random order
the candidates of a 56k-member chained group are spread over every tile; in this order they
fill a narrow band of tiles (seed-shaped 100k at 0.98: 9.6% of the 128 x 64 tiles hold a
candidate, for 7% of the pairs being candidates: the marked tiles are mostly full).

The order only decides speed, never a result: the pass maps its edges back to the input rows.
The tree splits a segment of rows at the median of its projection on the segment's principal
direction (power iterations on a strided sample of the segment), level by level, down to
``leaf`` rows. It reads the int8 codes (a quarter of the float32 bytes).
"""

from __future__ import annotations

import numpy as np

from ..jit import nb
from ..npyfile import chunk_rows, drop_mapped_pages


@nb.njit(cache=True, parallel=True, fastmath=True)
def _split_level(U, scale, order, lo_arr, hi_arr, sample, iters):  # type: ignore[no-untyped-def]
    """Split every segment [lo, hi) of ``order`` at the median of its principal projection."""
    d = U.shape[1]
    for g in nb.prange(lo_arr.shape[0]):
        lo = lo_arr[g]
        hi = hi_arr[g]
        m = hi - lo
        ns = min(m, sample)
        Ys = np.empty((ns, d), np.float32)
        mean = np.zeros(d, np.float32)
        for t in range(ns):
            i = order[lo + (t * m) // ns]
            sc = scale[i]
            for k in range(d):
                y = (np.float32(U[i, k]) - np.float32(128.0)) * sc
                Ys[t, k] = y
                mean[k] += y
        for k in range(d):
            mean[k] /= ns
        best = -1.0
        start = 0
        for t in range(ns):
            acc = 0.0
            for k in range(d):
                Ys[t, k] -= mean[k]
                acc += Ys[t, k] * Ys[t, k]
            if acc > best:
                best = acc
                start = t
        v = Ys[start].copy()
        w = np.empty(ns, np.float32)
        for _ in range(iters):
            for t in range(ns):
                acc = np.float32(0.0)
                for k in range(d):
                    acc += Ys[t, k] * v[k]
                w[t] = acc
            for k in range(d):
                v[k] = 0.0
            for t in range(ns):
                wt = w[t]
                for k in range(d):
                    v[k] += wt * Ys[t, k]
            nv = 0.0
            for k in range(d):
                nv += v[k] * v[k]
            if nv == 0.0:
                break
            nv = np.sqrt(nv)
            for k in range(d):
                v[k] /= nv
        p = np.empty(m, np.float32)
        for t in range(m):
            i = order[lo + t]
            acc = np.float32(0.0)
            for k in range(d):
                acc += (np.float32(U[i, k]) - np.float32(128.0)) * v[k]
            p[t] = acc * scale[i]
        h = m // 2
        med = np.partition(p, h)[h]
        seg = order[lo:hi].copy()
        a = lo
        b = hi - 1
        for t in range(m):  # below the median left, above right, ties fill the middle
            if p[t] < med:
                order[a] = seg[t]
                a += 1
            elif p[t] > med:
                order[b] = seg[t]
                b -= 1
        for t in range(m):
            if p[t] == med:
                order[a] = seg[t]
                a += 1


@nb.njit(cache=True, parallel=True)
def _take_rows(X, order, out):  # type: ignore[no-untyped-def]
    for t in nb.prange(order.shape[0]):
        out[t] = X[order[t]]


@nb.njit(cache=True, parallel=True)
def _put_rows(X, dest, out):  # type: ignore[no-untyped-def]
    for t in nb.prange(dest.shape[0]):
        out[dest[t]] = X[t]


def take_rows(X: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``X[order]`` (``order`` a permutation of X's rows) as a new C-contiguous array, by all threads.

    A memory map is read once, in file order, ~64 MB at a time, each row put where it goes, and
    each chunk's pages leave the resident set once copied: the copy is not held on top of the map.
    """
    n = len(order)
    out = np.empty((n,) + X.shape[1:], dtype=X.dtype)
    if not n:
        return out
    order = np.ascontiguousarray(order, dtype=np.int64)
    step = chunk_rows(X.dtype.itemsize * int(np.prod(X.shape[1:], dtype=np.int64)))
    if n != X.shape[0] or not drop_mapped_pages(X[:min(n, step)]):
        _take_rows(np.ascontiguousarray(X), order, out)
        return out
    dest = np.full(n, -1, np.int64)
    dest[order] = np.arange(n, dtype=np.int64)
    if (order < 0).any() or (dest < 0).any():  # every row has a place: a permutation (no row left unset)
        raise ValueError("order is not a permutation of the rows")
    for a in range(0, n, step):
        b = min(n, a + step)
        _put_rows(np.ascontiguousarray(X[a:b]), dest[a:b], out)
        drop_mapped_pages(X[a:b])
    return out


def locality_order(codes_u8: np.ndarray, scale: np.ndarray, *, leaf: int = 32, sample: int = 256,
                   iters: int = 3) -> np.ndarray:
    """A permutation of the rows with near vectors adjacent, from int8 codes (``q + 128``) and row scales."""
    n = int(codes_u8.shape[0])
    order = np.arange(n, dtype=np.int64)
    segs = [(0, n)] if n > leaf else []
    while segs:
        lo = np.array([s[0] for s in segs], np.int64)
        hi = np.array([s[1] for s in segs], np.int64)
        _split_level(codes_u8, scale.astype(np.float32), order, lo, hi, sample, iters)
        nxt = []
        for a, b in segs:
            h = a + (b - a) // 2
            nxt += [(a, h), (h, b)]
        segs = [(a, b) for a, b in nxt if b - a > leaf]
    return order


__all__ = ["locality_order", "take_rows"]
