"""Tile-level exact similarity scan: the building block of the Ray tiles and the ANN partitions.

A *tile* is a set of rows paired with a set of columns of the embedding matrix. The scan runs
the same compiled kernel as :func:`neardup.similarity.exact.exact_forest` (blocked GEMM, a
histogram of every pair >= floor, and the level-ladder filter that keeps only edges that can
still matter for the maximum spanning forest) but in a *local* index space, so memory is
O(tile) whatever N is, and returns the tile's local forest (at most L-1 edges) mapped back to
global row numbers. Merging tile forests with Kruskal (``merge_forests``) gives the forest of
the union of the tiles' pairs: exactly the whole forest when the tiles cover the upper
triangle.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..similarity.exact import _refresh_labels, _threads, filter_levels, level_of_bin, merge_kept_edges, scan_kept_edges
from ..similarity.forest import hist_bins


@lru_cache(maxsize=8)
def _ladder(floor: float) -> tuple[np.ndarray, np.ndarray]:
    levels = filter_levels(floor)
    return levels, level_of_bin(floor, levels)


class TileScanner:
    """Exact forest + histogram of chosen (row range x column range) pairs of a local matrix.

    ``X`` is the local matrix (L x d, canonical float32: :func:`neardup.similarity.canonical.canonical_vectors`); ``scan(r0, r1, c0, c1, diagonal)`` adds
    the pairs of local rows [r0, r1) with local columns [c0, c1) (only j > i when ``diagonal``,
    which requires the two ranges to be index-aligned: local row i is local column i).
    """

    def __init__(self, X: np.ndarray, floor: float, *, block_rows: int = 2048, col_chunk: int = 8192,
                 hist: np.ndarray | None = None) -> None:
        if not (0.0 < floor <= 1.0):
            raise ValueError(f"floor {floor} is outside (0, 1]")
        self.X = X
        self.L = int(X.shape[0])
        self.floor = float(floor)
        self.levels, self.lob = _ladder(float(floor))
        self.T = _threads()
        self.block_rows = int(block_rows)
        self.col_chunk = int(col_chunk)
        self.flat = np.empty((len(self.levels), self.L), dtype=np.int32)
        self.flat[:] = np.arange(self.L, dtype=np.int32)
        self.hist = np.zeros((self.T, hist_bins(floor)), dtype=np.int64) if hist is None else hist
        self.f_src = np.zeros(0, np.int64)
        self.f_dst = np.zeros(0, np.int64)
        self.f_w = np.zeros(0, np.float32)
        cap = 8 * self.col_chunk + 4096
        self._out = (np.empty((self.T, cap), np.int64), np.empty((self.T, cap), np.int64),
                     np.empty((self.T, cap), np.float32))
        self._buf = np.empty(self.block_rows * self.col_chunk, dtype=np.float32)
        self.compared = 0  # pairs whose similarity was computed

    def scan(self, r0: int, r1: int, c0: int, c1: int, diagonal: bool = False) -> None:
        """Add pairs (rows [r0, r1)) x (columns [c0, c1)); with ``diagonal`` only column > row."""
        X, T = self.X, self.T
        for a in range(r0, r1, self.block_rows):
            b = min(r1, a + self.block_rows)
            rb = b - a
            Xr = np.ascontiguousarray(X[a:b], dtype=np.float32)
            uf = np.repeat(self.flat[None], T, axis=0)
            kept: list[tuple[np.ndarray, ...]] = []
            start = max(c0, a) if diagonal else c0
            for cc0 in range(start, c1, self.col_chunk):
                cc1 = min(c1, cc0 + self.col_chunk)
                S = self._buf[: rb * (cc1 - cc0)].reshape(rb, cc1 - cc0)
                np.matmul(Xr, np.asarray(X[cc0:cc1], dtype=np.float32).T, out=S)
                if diagonal:
                    lo = np.maximum(0, np.minimum(cc1, np.arange(a, b) + 1) - cc0)
                    self.compared += int((cc1 - cc0) * rb - lo.sum())
                else:
                    self.compared += rb * (cc1 - cc0)
                kept += scan_kept_edges(S, a, cc0, diagonal, self.floor, self.levels, self.lob, self.flat, uf,
                                        self.hist, self._out, np.linspace(0, rb, T + 1).astype(np.int64))
            if kept:
                self.f_src, self.f_dst, self.f_w = merge_kept_edges(self.L, (self.f_src, self.f_dst, self.f_w), kept)
                _refresh_labels(self.L, self.f_src, self.f_dst, self.f_w.astype(np.float64), self.levels, self.flat)

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The local forest's edges (local indices), heaviest first."""
        return self.f_src, self.f_dst, self.f_w

    def histogram(self) -> np.ndarray:
        return self.hist.sum(axis=0) if self.hist.ndim == 2 else self.hist


def tile_forest(X: np.ndarray, floor: float, rows: tuple[int, int], cols: tuple[int, int], *,
                block_rows: int = 2048, col_chunk: int = 8192
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forest + histogram of the pairs (i, j), i in rows [a, b), j in cols [c, d), j > i.

    Global row numbers in and out; ``X`` is the whole (memory-mapped or shared) matrix and only
    the tile's rows are read. Tiles must lie on or above the diagonal: either the row range is
    inside the column range (a diagonal tile) or entirely left of it (c >= b).
    Returns (src, dst, weight, hist) with src < dst as global indices.
    """
    a, b = map(int, rows)
    c, d = map(int, cols)
    if c <= a and b <= d:          # diagonal tile: local space = the column range
        Xl = X[c:d]
        sc = TileScanner(Xl, floor, block_rows=block_rows, col_chunk=col_chunk)
        sc.scan(a - c, b - c, 0, d - c, diagonal=True)
        s, t, w = sc.edges()
        return s + c, t + c, w, sc.histogram()
    if c < b:
        raise ValueError(f"tile rows [{a},{b}) x cols [{c},{d}) straddles the diagonal")
    R = b - a
    Xl = np.concatenate([np.asarray(X[a:b], dtype=np.float32), np.asarray(X[c:d], dtype=np.float32)])
    sc = TileScanner(Xl, floor, block_rows=block_rows, col_chunk=col_chunk)
    sc.scan(0, R, R, R + d - c, diagonal=False)
    s, t, w = sc.edges()
    glob = np.concatenate([np.arange(a, b), np.arange(c, d)])
    gs, gt = glob[s], glob[t]
    return np.minimum(gs, gt), np.maximum(gs, gt), w, sc.histogram()


def upper_tiles(n: int, tile_rows: int, tile_cols: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Tiles covering every pair i < j once: row blocks x aligned column blocks on/above the diagonal.

    ``tile_cols`` must be a multiple of ``tile_rows`` so that every row block lies inside one
    column block or entirely left of it.
    """
    if tile_cols % tile_rows:
        raise ValueError("tile_cols must be a multiple of tile_rows")
    out = []
    for a in range(0, n, tile_rows):
        b = min(n, a + tile_rows)
        for c in range((a // tile_cols) * tile_cols, n, tile_cols):
            out.append(((a, b), (c, min(n, c + tile_cols))))
    return out


__all__ = ["TileScanner", "tile_forest", "upper_tiles"]
