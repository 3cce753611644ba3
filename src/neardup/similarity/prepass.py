"""The exact pass with an int8 pre-pass: exact values only where a pair can reach the floor.

Per block of the upper triangle (rows in a locality order, :mod:`.locality`):

1. the int8 GEMM of the rows' codes (:mod:`.quantized`, onnxruntime ``MatMulInteger``, exact
   int32);
2. one compiled test per pair, ``x^.y^ + B(x, y) + MARGIN >= floor``, marks each tile of
   ``TILE_ROWS`` x 64 pairs that holds a *candidate*; a tile without one holds no pair >= floor
   (the bound is proven, see :mod:`.quantized`);
3. a float32 GEMM over the marked tiles (runs of adjacent tiles, one product each) gives their
   exact similarities (canonical vectors: every float32 dot product is exact);
4. the same histogram + forest filter as the float32 pass scans those exact values.

So the histogram, the forest weights and the components at every threshold are identical to
the float32 pass: every pair >= floor gets its exact value and goes through the same scan.
"""

from __future__ import annotations

from typing import Callable

import numba as nb
import numpy as np

from .bitmask import lowest_bit, row_mask
from .forest import _find, _hist_bin, _union, ceil_f32, hist_edges
from .ortgemm import gemm_nt, int8_gemm
from .quantized import MARGIN, Quantized

TILE_ROWS = 128  # rows per tile; a tile is 64 columns wide (one bit mask per row)
TILE_COLS = 64
DENSE = 0.6      # a block with at least this share of marked tiles gets one full float32 GEMM
GAP = 1          # adjacent runs of marked tiles closer than this many tiles become one product


@nb.njit(cache=True, parallel=True, fastmath=True)
def _flag_tiles(Y, rs, rnh, rne, cs, cne, cnhe, thr, d, mr, flags):  # type: ignore[no-untyped-def]
    """flags[tr, tc] = 1 where tile (tr, tc) of the int32 block ``Y`` holds a candidate pair.

    Pair (r, c) of the block is in the upper triangle iff ``c - r > d``; a tile that straddles
    the diagonal is marked without a test, one entirely below it stays 0.
    Candidate: ``rs_r cs_c Y[r, c] + rnh_r cne_c + rne_r cnhe_c >= thr`` (float32; the bound's
    rounding is covered by MARGIN in ``thr``).
    """
    R, C = Y.shape
    ntr = flags.shape[0]
    ntc = flags.shape[1]
    for tr in nb.prange(ntr):
        r0 = tr * mr
        r1 = min(R, r0 + mr)
        state = np.zeros(ntc, np.uint8)  # 0 test, 1 marked, 2 no pair here
        for tc in range(ntc):
            c_lo = tc * 64
            c_hi = min(C, c_lo + 64)
            if c_hi - 1 - r0 <= d:
                state[tc] = 2
            elif c_lo - (r1 - 1) <= d:
                state[tc] = 1
        for r in range(r0, r1):
            a_ = rs[r]
            b_ = rnh[r]
            e_ = rne[r]
            Yr = Y[r]
            for tc in range(ntc):
                if state[tc] != 0:
                    continue
                c_lo = tc * 64
                c_hi = min(C, c_lo + 64)
                # slices indexed from 0 (no negative-index wraparound): plain vector loads
                y_, s_, n_, h_ = Yr[c_lo:c_hi], cs[c_lo:c_hi], cne[c_lo:c_hi], cnhe[c_lo:c_hi]
                hit = np.int32(0)
                for c in range(y_.shape[0]):  # an OR reduction: vectorises (a max reduction did not)
                    v = a_ * s_[c] * np.float32(y_[c]) + b_ * n_[c] + e_ * h_[c]
                    hit |= np.int32(v >= thr)
                if hit:
                    state[tc] = 1
        for tc in range(ntc):
            flags[tr, tc] = 1 if state[tc] == 1 else 0


@nb.njit(cache=True, parallel=True)
def _scan_runs(E, run_r, run_nr, run_c, run_len, run_off, row0, col0, f32floor, edges, levels, lev_of_bin,
               flat, uf, hist, out_src, out_dst, out_w, out_n, t_run, t_row, t_end):  # type: ignore[no-untyped-def]
    """Histogram and forest filter over the exact values of marked runs (the float32 scan's logic).

    Run k: block rows [run_r[k], +run_nr[k]) x block columns [run_c[k], +run_len[k]), its
    exact values at ``E[run_off[k]:]`` (row-major). Thread t owns runs [t_run[t], t_end[t]) and
    resumes at row t_row[t]; it stops early when its output buffer might overflow. Only pairs
    with global column > global row count (the upper triangle).
    """
    T = t_run.shape[0]
    nlev = levels.shape[0]
    cap = out_src.shape[1]
    for t in nb.prange(T):
        cnt = out_n[t]
        k = t_run[t]
        rr = t_row[t]
        full = False
        while k < t_end[t]:
            nr = run_nr[k]
            L = run_len[k]
            off = run_off[k]
            S = E[off:off + nr * L].reshape((nr, L))
            cbase = col0 + run_c[k]
            while rr < nr:
                if cnt + L > cap:
                    full = True
                    break
                i = row0 + run_r[k] + rr
                for c_lo in range(0, L, 64):
                    mask = row_mask(S, rr, c_lo, L, f32floor)
                    lim = i - (cbase + c_lo)  # bits 0..lim are columns j <= i
                    if lim >= 63:
                        mask = np.uint64(0)
                    elif lim >= 0:
                        mask &= ~((np.uint64(1) << np.uint64(lim + 1)) - np.uint64(1))
                    while mask:
                        c = c_lo + lowest_bit(mask)
                        mask &= mask - np.uint64(1)
                        s = S[rr, c]
                        b, sd = _hist_bin(s, edges)
                        hist[t, b] += 1
                        la = lev_of_bin[b]
                        j = cbase + c
                        if flat[la, i] == flat[la, j]:
                            continue
                        if _find(uf[t, la], i) == _find(uf[t, la], j):
                            continue
                        out_src[t, cnt] = i
                        out_dst[t, cnt] = j
                        out_w[t, cnt] = sd
                        cnt += 1
                        lv = la
                        while lv < nlev and levels[lv] > sd:
                            lv += 1
                        while lv < nlev and _union(uf[t, lv], i, j):
                            lv += 1
                rr += 1
            if full:
                break
            k += 1
            rr = 0
        t_run[t] = k
        t_row[t] = rr
        out_n[t] = cnt


def _runs(flags: np.ndarray, R: int, C: int, mr: int) -> list[tuple[int, int, int, int]]:
    """Marked tiles as runs (row0, nrows, col0, ncols): per tile row, adjacent tiles joined."""
    out = []
    for tr in range(flags.shape[0]):
        tcs = np.flatnonzero(flags[tr])
        if len(tcs) == 0:
            continue
        r0 = tr * mr
        nr = min(R, r0 + mr) - r0
        breaks = np.flatnonzero(np.diff(tcs) > GAP + 1)
        starts = np.r_[tcs[0], tcs[breaks + 1]]
        ends = np.r_[tcs[breaks], tcs[-1]] + 1
        for s, e in zip(starts.tolist(), ends.tolist()):
            c0 = s * TILE_COLS
            out.append((r0, nr, c0, min(C, e * TILE_COLS) - c0))
    return out


class Int8Blocks:
    """Exact similarities of the pairs >= floor of an upper-triangle block, via the int8 pre-pass.

    ``Xp`` (canonical float32) and ``Q`` (its codes) are in the same row order. ``block(a, b,
    c0, c1)`` returns ``(E, runs)``: the exact values of the marked runs of rows [a, b) x
    columns [c0, c1) (see :func:`_scan_runs`), which hold every pair >= floor of the block.
    """

    def __init__(self, Xp: np.ndarray, Q: Quantized, floor: float, threads: int, max_block: int) -> None:
        self.Xp = Xp
        self.Q = Q
        self.thr = np.float32(float(floor) - MARGIN)
        self.threads = threads
        self.qT = np.ascontiguousarray(Q.codes().T)  # the GEMM's right side, columns sliced per block
        self.E = np.empty(max_block, np.float32)
        self.Y = np.empty(max_block, np.int32)
        self.pairs_total = 0     # pairs in the blocks
        self.pairs_exact = 0     # pairs whose exact value was computed

    def block(self, a: int, b: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        Q, Xp = self.Q, self.Xp
        R, C = b - a, c1 - c0
        Y = int8_gemm(Q.u8[a:b], np.ascontiguousarray(self.qT[:, c0:c1]), self.threads,
                      out=self.Y[:R * C].reshape(R, C))
        ntr = -(-R // TILE_ROWS)
        flags = np.zeros((ntr, -(-C // TILE_COLS)), np.uint8)
        d = a - c0 if c0 <= a else -(R + C)
        _flag_tiles(Y, Q.scale[a:b], Q.nh[a:b], Q.ne[a:b], Q.scale[c0:c1], Q.ne[c0:c1], Q.nhe[c0:c1],
                    self.thr, d, TILE_ROWS, flags)
        Xr = Xp[a:b]
        if flags.mean() >= DENSE:
            gemm_nt(Xr, Xp[c0:c1], self.threads, out=self.E[:R * C].reshape(R, C))
            runs = [(r0, min(R, r0 + TILE_ROWS) - r0, 0, C) for r0 in range(0, R, TILE_ROWS)]
            arr = np.array([(r0, nr, c, L, r0 * C) for r0, nr, c, L in runs], dtype=np.int64).reshape(-1, 5)
            self.pairs_exact += R * C
        else:
            runs = _runs(flags, R, C, TILE_ROWS)
            arr = np.empty((len(runs), 5), np.int64)
            off = 0
            for k, (r0, nr, cc, L) in enumerate(runs):
                gemm_nt(Xr[r0:r0 + nr], Xp[c0 + cc:c0 + cc + L], self.threads, out=self.E[off:off + nr * L].reshape(nr, L))
                arr[k] = (r0, nr, cc, L, off)
                off += nr * L
            self.pairs_exact += off
        self.pairs_total += R * C
        return self.E, arr


def scan_runs(E: np.ndarray, runs: np.ndarray, row0: int, col0: int, floor: float, levels: np.ndarray,
              lev_of_bin: np.ndarray, flat: np.ndarray, uf: np.ndarray, hist: np.ndarray,
              out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """Run :func:`_scan_runs` over one block's runs until done; the kept edges as ``(src, dst, w)`` copies."""
    out_src, out_dst, out_w = out
    T = out_src.shape[0]
    if len(runs) == 0:
        return []
    work = np.cumsum(runs[:, 1] * runs[:, 3])
    cuts = np.searchsorted(work, np.linspace(0, work[-1], T + 1)[1:-1], side="right")
    bounds = np.r_[0, cuts, len(runs)].astype(np.int64)
    bounds = np.maximum.accumulate(bounds)
    t_run, t_end = bounds[:-1].copy(), bounds[1:].copy()
    t_row = np.zeros(T, np.int64)
    run_r = np.ascontiguousarray(runs[:, 0])
    run_nr = np.ascontiguousarray(runs[:, 1])
    run_c = np.ascontiguousarray(runs[:, 2])
    run_len = np.ascontiguousarray(runs[:, 3])
    run_off = np.ascontiguousarray(runs[:, 4])
    kept: list[tuple[np.ndarray, ...]] = []
    edges = hist_edges(floor)
    f32floor = ceil_f32(floor)
    while True:
        out_n = np.zeros(T, np.int64)
        _scan_runs(E, run_r, run_nr, run_c, run_len, run_off, row0, col0, f32floor, edges, levels, lev_of_bin,
                   flat, uf, hist, out_src, out_dst, out_w, out_n, t_run, t_row, t_end)
        for t in range(T):
            k = int(out_n[t])
            if k:
                kept.append((out_src[t, :k].copy(), out_dst[t, :k].copy(), out_w[t, :k].copy()))
        if np.all(t_run >= t_end):
            return kept


ProgressFn = Callable[[int, int], None]

__all__ = ["Int8Blocks", "TILE_COLS", "TILE_ROWS", "scan_runs"]
