"""The exact pass with an int8 pre-pass: exact values only where a pair can reach the floor.

Per block of the upper triangle (rows in a locality order, :mod:`.locality`):

0. a ball test on tiles of 64 rows (centre, radius; a pair >= floor is within D of each other)
   drops the column tiles no row of the block can reach (:meth:`Int8Blocks.reachable_tiles`);
1. the int8 GEMM of the rows' codes against the remaining columns (:mod:`.quantized`,
   onnxruntime ``MatMulInteger``, exact int32);
2. one compiled test per pair, ``x^.y^ + u_x + u_y + |e_x||e_y| + MARGIN >= floor`` (the
   near-pair bound, :meth:`.Quantized.near_bound`), marks each tile of ``TILE_ROWS`` x 64 pairs
   that holds a *candidate*; a tile without one holds no pair >= floor (the bound is proven,
   see :mod:`.quantized`);
3. a float32 GEMM over the marked tiles (runs of adjacent tiles, one product each) gives their
   exact similarities (canonical vectors: every float32 dot product is exact);
4. the same histogram + forest filter as the float32 pass scans those exact values.

So the histogram, the forest weights and the components at every threshold are identical to
the float32 pass: every pair >= floor gets its exact value and goes through the same scan.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..jit import nb
from .bitmask import lowest_bit, row_mask
from .exact import visit_hit
from .forest import ceil_f32, hist_edges
from .ortgemm import gemm_nt, int8_gemm
from .quantized import MARGIN, Quantized

TILE_ROWS = 128  # rows per tile; a tile is 64 columns wide (one bit mask per row)
TILE_COLS = 64
DENSE = 0.6      # a block with at least this share of marked tiles gets one full float32 GEMM
GAP = 1          # adjacent runs of marked tiles closer than this many tiles become one product
SUB_ROWS = 512   # rows per int8 GEMM: each sub-block of a block gets the column tiles its balls may reach
BALL = 64        # rows per ball of the coarse test that skips column tiles before the int8 GEMM
BALL_SLACK = 1e-4  # added to the coarse test's distances: far above the float32 Gram's error (< 4e-5)


@nb.njit(cache=True, parallel=True, fastmath=True)
def _flag_tiles(Y, base, toff, sub, rs, ru, rne, cs, cne, cthr, d, mr, flags):  # type: ignore[no-untyped-def]
    """flags[tr, tc] = 1 where tile (tr, tc) of a block holds a candidate pair.

    The block's rows come in sub-blocks of ``sub`` rows (a multiple of ``mr``); sub-block g's
    int8 products are the matrix ``Y[base[g]:]`` of shape (columns, its rows) -- the block
    transposed: the GEMM's left side is the columns' codes, its reachable column tiles one after
    another -- and column tile tc starts at its row ``toff[g, tc]`` (< 0: the tile was skipped,
    it holds no candidate). Pair (r, c) is in the
    upper triangle iff ``c - r > d``; a tile that straddles the diagonal is marked without a
    test, one entirely below it stays 0. Candidate (x = row r, y = column c):
    ``rs_r cs_c (q_x.q_y) + ru_r + rne_r cne_c >= cthr_c``, i.e. x^.y^ + u_x + |e_x| |e_y| >=
    floor - MARGIN - u_y with u = a + D |e| (:meth:`.Quantized.near_bound`), in float32 (its
    rounding is covered by MARGIN).
    """
    R = rs.shape[0]
    C = cs.shape[0]
    ntr = flags.shape[0]
    ntc = flags.shape[1]
    for tc in nb.prange(ntc):
        c_lo = tc * 64
        c_hi = min(C, c_lo + 64)
        state = np.zeros(ntr, np.uint8)  # 0 test, 1 marked, 2 no pair here
        for tr in range(ntr):
            r0 = tr * mr
            r1 = min(R, r0 + mr)
            if toff[r0 // sub, tc] < 0 or c_hi - 1 - r0 <= d:
                state[tr] = 2
            elif c_lo - (r1 - 1) <= d:
                state[tr] = 1
        for c in range(c_lo, c_hi):
            a_ = cs[c]
            b_ = cne[c]
            t_ = cthr[c]
            for tr in range(ntr):
                if state[tr] != 0:
                    continue
                r0 = tr * mr
                r1 = min(R, r0 + mr)
                g = r0 // sub
                q0 = g * sub
                start = base[g] + (toff[g, tc] + c - c_lo) * (min(R, q0 + sub) - q0) + r0 - q0
                # slices indexed from 0 (no negative-index wraparound): plain vector loads
                y_, s_, u_, h_ = Y[start:start + r1 - r0], rs[r0:r1], ru[r0:r1], rne[r0:r1]
                hit = False
                for r in range(y_.shape[0]):  # a boolean OR reduction: vector compares into mask registers
                    hit |= a_ * s_[r] * np.float32(y_[r]) + u_[r] + h_[r] * b_ >= t_
                if hit:
                    state[tr] = 1
        for tr in range(ntr):
            flags[tr, tc] = 1 if state[tr] == 1 else 0


@nb.njit(cache=True, parallel=True)
def _tile_balls(X, t, centers, cn2, radii):  # type: ignore[no-untyped-def]
    """Per tile of ``t`` consecutive rows: a centre (the float32 mean), |centre|^2 and the radius
    max |x - centre| (float64, rounded up), so every row of the tile lies in that ball."""
    n, d = X.shape
    for k in nb.prange(centers.shape[0]):
        r0 = k * t
        r1 = min(n, r0 + t)
        acc = np.zeros(d, np.float64)
        for i in range(r0, r1):
            for j in range(d):
                acc[j] += X[i, j]
        c2 = 0.0
        for j in range(d):
            c = np.float32(acc[j] / (r1 - r0))
            centers[k, j] = c
            c2 += np.float64(c) * np.float64(c)
        cn2[k] = c2
        rmax = 0.0
        for i in range(r0, r1):
            e = 0.0
            for j in range(d):
                v = np.float64(X[i, j]) - np.float64(centers[k, j])
                e += v * v
            rmax = max(rmax, e)
        radii[k] = np.sqrt(rmax) * (1.0 + 2.0**-30) + 2.0**-40


@nb.njit(cache=True, parallel=True)
def _scan_runs(E, run_r, run_nr, run_c, run_len, run_off, g_start, row0, col0, f32floor, edges, levels, lev_of_bin,
               flat, uf, hist, out_src, out_dst, out_w, out_n, t_grp, t_row, t_end):  # type: ignore[no-untyped-def]
    """Histogram and forest filter over the exact values of marked runs (the float32 scan's logic).

    Run k: block rows [run_r[k], +run_nr[k]) x block columns [run_c[k], +run_len[k]), its exact
    values at ``E[run_off[k]:]`` (row-major). Runs of one tile row form a group (runs
    g_start[g] .. g_start[g+1]-1, ascending columns). Thread t owns groups [t_end[t], t_grp[t]]
    and walks them *downwards*: groups from t_grp[t] down to t_end[t], in a group its rows from
    the last (t_row[t] rows left) to the first, in a row the runs left to right. Rows are in a
    locality order, so for a pair (i, j) the rows k between them are scanned before i, and
    with the edges (i, k) seen just before (i, j) the filter finds the path i-k-j (in an
    ascending scan of a chain-like group almost every pair was kept). It stops early when its
    output buffer might overflow. Only pairs with global column > global row count.
    """
    T = t_grp.shape[0]
    cap = out_src.shape[1]
    for t in nb.prange(T):
        cnt = out_n[t]
        g = t_grp[t]
        left = t_row[t]
        full = False
        while g >= t_end[t]:
            k0 = g_start[g]
            k1 = g_start[g + 1]
            width = 0
            for k in range(k0, k1):
                width += run_len[k]
            while left > 0:
                if cnt + width > cap:
                    full = True
                    break
                rr = left - 1
                i = row0 + run_r[k0] + rr
                for k in range(k0, k1):
                    L = run_len[k]
                    off = run_off[k]
                    S = E[off:off + run_nr[k] * L].reshape((run_nr[k], L))
                    cbase = col0 + run_c[k]
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
                            cnt = visit_hit(S[rr, c], i, cbase + c, t, cnt, edges, levels, lev_of_bin, flat, uf,
                                            hist, out_src, out_dst, out_w)
                left -= 1
            if full:
                break
            g -= 1
            if g >= t_end[t]:
                left = run_nr[g_start[g]]
        t_grp[t] = g
        t_row[t] = left
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

    Before the int8 GEMM, a coarser proven test skips whole column tiles: every run of
    ``BALL`` rows lies in a ball (centre c, radius r; :func:`_tile_balls`), and a pair with
    x.y >= floor has |x - y| <= D (:meth:`.Quantized.reach`), so two tiles hold no such pair when
    |c_A - c_B| > r_A + r_B + D (triangle inequality). The GEMM then runs only over the column
    tiles that some row tile of the block may reach (rows in a locality order: a narrow band).
    """

    def __init__(self, Xp: np.ndarray, Q: Quantized, floor: float, threads: int, max_block: int) -> None:
        self.Xp = Xp
        self.Q = Q
        self.threads = threads
        # the tile test's per-row terms (near_bound): rows add u, columns move the threshold by -u
        u = Q.near_shift(floor)
        self.ru = u.astype(np.float32)
        self.cthr = (float(floor) - MARGIN - u).astype(np.float32)
        n = int(Xp.shape[0])
        m = -(-n // BALL)
        self.centers = np.empty((m, Xp.shape[1]), np.float32)
        self.cn2 = np.empty(m)
        self.radii = np.empty(m)
        if n:
            _tile_balls(Xp, BALL, self.centers, self.cn2, self.radii)
        self.D = Q.reach(floor)
        self._bq: tuple[int, int, list[np.ndarray]] | None = None  # the GEMM's right side: this row block's codes
        # one buffer: the int32 products are dead once the tile test has run, before exact values go in
        self.E = np.empty(max_block, np.float32)
        self.Y = self.E.view(np.int32)
        self.pairs_total = 0     # pairs in the blocks
        self.pairs_int8 = 0      # pairs in the int8 GEMM (the rest skipped by the ball test)
        self.pairs_exact = 0     # pairs whose exact value was computed

    def reachable_tiles(self, a: int, b: int, c0: int, c1: int) -> np.ndarray:
        """Per 64-column tile of [c0, c1) (from c0): whether a row of [a, b) may have a pair >= floor in it.

        False is proven (ball test above): the centres' float32 Gram has an error below
        512 * 2**-24 * |c_A| |c_B| < 4e-5 (|c| <= ~1), inside BALL_SLACK.
        """
        t = BALL
        ra, rb, ca, cb = a // t, (b - 1) // t + 1, c0 // t, (c1 - 1) // t + 1
        G = self.centers[ra:rb] @ self.centers[ca:cb].T
        dist2 = self.cn2[ra:rb, None] + self.cn2[None, ca:cb] - 2.0 * G.astype(np.float64) - BALL_SLACK
        reach = self.radii[ra:rb, None] + self.radii[None, ca:cb] + self.D
        keep = (dist2 <= reach * reach).any(axis=0)
        cols = np.repeat(keep, t)[c0 - ca * t:c1 - ca * t]
        ntc = -(-(c1 - c0) // TILE_COLS)
        return np.r_[cols, np.zeros(ntc * TILE_COLS - len(cols), bool)].reshape(ntc, TILE_COLS).any(axis=1)

    def block(self, a: int, b: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        Q, Xp = self.Q, self.Xp
        R, C = b - a, c1 - c0
        S = SUB_ROWS
        if self._bq is None or self._bq[0] != a or self._bq[1] != R:  # per sub-block: its codes, transposed
            self._bq = (a, R, [np.ascontiguousarray((Q.u8[s:min(b, s + S)] ^ np.uint8(128)).view(np.int8).T)
                               for s in range(a, b, S)])
        ntr = -(-R // TILE_ROWS)
        ntc = -(-C // TILE_COLS)
        flags = np.zeros((ntr, ntc), np.uint8)
        nsb = len(self._bq[2])
        toff = np.full((nsb, ntc), -1, np.int64)
        base = np.zeros(nsb, np.int64)
        pos = 0
        for g, s in enumerate(range(a, b, S)):
            e = min(b, s + S)
            tiles = np.flatnonzero(self.reachable_tiles(s, e, c0, c1))
            base[g] = pos
            if len(tiles) == 0:
                continue
            # one int8 GEMM over the column tiles this sub-block may reach, gathered (one call); the
            # products of all sub-blocks one after another, so one tile test serves the block (one
            # parallel region per block: on a loaded machine each region waits for its slowest thread)
            width = np.minimum(C - tiles * TILE_COLS, TILE_COLS)
            toff[g, tiles] = np.r_[0, np.cumsum(width)[:-1]]
            m = int(width.sum())
            if m == C:
                A = Q.u8[c0:c1]
            else:
                cols = (c0 + tiles * TILE_COLS)[:, None] + np.arange(TILE_COLS)[None]
                A = Q.u8[cols[np.arange(TILE_COLS)[None] < width[:, None]]]
            int8_gemm(A, self._bq[2][g], self.threads, out=self.Y[pos:pos + m * (e - s)].reshape(m, e - s))
            pos += m * (e - s)
        if pos:
            _flag_tiles(self.Y, base, toff, S, Q.scale[a:b], self.ru[a:b], Q.ne[a:b], Q.scale[c0:c1], Q.ne[c0:c1],
                        self.cthr[c0:c1], a - c0, TILE_ROWS, flags)
        self.pairs_int8 += pos
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
    """Run :func:`_scan_runs` over one block's runs until done; the kept edges as ``(src, dst, w)`` copies.

    ``runs`` rows are (row0, nrows, col0, ncols, offset), grouped by tile row (as :func:`_runs` and
    the dense path make them: ascending rows, then columns).
    """
    out_src, out_dst, out_w = out
    T = out_src.shape[0]
    if len(runs) == 0:
        return []
    run_r = np.ascontiguousarray(runs[:, 0])
    new_group = np.r_[True, run_r[1:] != run_r[:-1]]
    g_start = np.r_[np.flatnonzero(new_group), len(runs)].astype(np.int64)
    G = len(g_start) - 1
    if int(np.add.reduceat(runs[:, 3], g_start[:-1]).max()) > out_src.shape[1]:
        raise ValueError("output buffers narrower than a tile row's runs")
    work = np.add.reduceat(runs[:, 1] * runs[:, 3], g_start[:-1])
    cum = np.cumsum(work)
    cuts = np.searchsorted(cum, np.linspace(0, cum[-1], T + 1)[1:-1], side="left")
    bounds = np.maximum.accumulate(np.r_[0, cuts, G].astype(np.int64))   # thread t: groups [bounds[t], bounds[t+1])
    t_end = bounds[:-1].copy()
    t_grp = bounds[1:] - 1
    t_row = np.array([runs[g_start[g], 1] if g >= 0 else 0 for g in t_grp.tolist()], dtype=np.int64)
    run_nr = np.ascontiguousarray(runs[:, 1])
    run_c = np.ascontiguousarray(runs[:, 2])
    run_len = np.ascontiguousarray(runs[:, 3])
    run_off = np.ascontiguousarray(runs[:, 4])
    kept: list[tuple[np.ndarray, ...]] = []
    edges = hist_edges(floor)
    f32floor = ceil_f32(floor)
    while True:
        out_n = np.zeros(T, np.int64)
        _scan_runs(E, run_r, run_nr, run_c, run_len, run_off, g_start, row0, col0, f32floor, edges, levels,
                   lev_of_bin, flat, uf, hist, out_src, out_dst, out_w, out_n, t_grp, t_row, t_end)
        for t in range(T):
            k = int(out_n[t])
            if k:
                kept.append((out_src[t, :k].copy(), out_dst[t, :k].copy(), out_w[t, :k].copy()))
        if np.all(t_grp < t_end):
            return kept


ProgressFn = Callable[[int, int], None]

__all__ = ["Int8Blocks", "TILE_COLS", "TILE_ROWS", "scan_runs"]
