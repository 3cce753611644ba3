"""Rows against all rows, stopping each row at its first neighbour ranked above a target.

For the estimate (:mod:`neardup.estimate`): a sampled image is its group's master unless some
member of its group ranks better, and usually one of its own neighbours does. So each query row
``g`` (the vector of catalog row ``node[g]``) is scanned against every catalog row for neighbours
>= t (itself excluded) only until one ranks better than ``target[g]``; then the row is *done*
and leaves the product. Rows that never find one collect their whole neighbour list (the caller
explores further from it).

One streaming pass over the catalog, in *waves* of column tiles: before each wave the rows still
open are gathered into one query matrix, so the GEMM shrinks as rows finish (most finish in the
first waves). Within a wave T threads take tiles in turn and run a single-threaded GEMM into a
cache-sized buffer, scanned at once (as :mod:`.matchscan`). ``has`` (the row has a neighbour >= t)
and ``done`` are per-row flags that threads only ever set, so concurrent writes agree.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from ..jit import nb
from .bitmask import lowest_bit, row_mask
from .blas import single_threaded_blas
from .forest import ceil_f32
from .incremental import RowSource

ProgressFn = Callable[[int, int], None]


@nb.njit(cache=True, nogil=True)
def _scan_better(S, rows, col0, t32, node, target, rank, has, done, out_g, out_c, cnt, r):
    """Rows of one tile: flag a neighbour >= t, stop at one ranked below ``target``, else collect hits.

    Returns ``(next row, cnt)``; stops before a row whose hits might not fit the buffers.
    """
    nrows, ncols = S.shape
    cap = out_g.shape[0]
    while r < nrows:
        if cnt + ncols > cap:
            break
        g = rows[r]
        if done[g] == 0:
            me = node[g]
            tg = target[g]
            for c_lo in range(0, ncols, 64):
                mask = row_mask(S, r, c_lo, ncols, t32)
                while mask:
                    c = c_lo + lowest_bit(mask)
                    mask &= mask - np.uint64(1)
                    j = col0 + c
                    if j == me:
                        continue
                    has[g] = 1
                    if rank[j] < tg:
                        done[g] = 1
                        break
                    out_g[cnt] = g
                    out_c[cnt] = j
                    cnt += 1
                if done[g] != 0:
                    break
        r += 1
    return r, cnt


def scan_better(catalog: RowSource, node: np.ndarray, target: np.ndarray, rank: np.ndarray, threshold: float, *,
                first_wave: int = 8192, max_wave: int = 65536, col_chunk: int = 2048, query_block: int = 1024,
                threads: int | None = None, progress: ProgressFn | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """For each query row g (the vector of catalog row ``node[g]``): ``has[g]`` (a neighbour >= t other
    than itself), ``done[g]`` (a neighbour ranked below ``target[g]``), and for rows not done their
    neighbours ``(g, j)``; plus the query-row x catalog-row products computed.

    Hits of rows that finish later are dropped, so a row's list is complete exactly when it is
    not done.
    """
    n, m = catalog.n, len(node)
    node = np.ascontiguousarray(node, dtype=np.int64)
    target = np.ascontiguousarray(target, dtype=np.int64)
    rank = np.ascontiguousarray(rank, dtype=np.int64)
    has = np.zeros(m, np.uint8)
    done = np.zeros(m, np.uint8)
    t32 = ceil_f32(threshold)
    Q = catalog.take_rows(node) if m else np.zeros((0, catalog.X.shape[1]), np.float32)
    hits: list[tuple[np.ndarray, np.ndarray]] = []
    lock = threading.Lock()
    local = threading.local()
    cap = 32 * col_chunk + 4096
    computed = 0

    def tile(args: tuple[np.ndarray, np.ndarray, int, int]) -> None:
        Qa, open_rows, c0, c1 = args
        if not hasattr(local, "buf"):
            local.buf = np.empty(query_block * col_chunk, np.float32)
            local.out_g, local.out_c = np.empty(cap, np.int64), np.empty(cap, np.int64)
        Xt = catalog.take(c0, c1).T
        cnt = 0
        mine: list[tuple[np.ndarray, np.ndarray]] = []
        for a in range(0, len(open_rows), query_block):
            b = min(len(open_rows), a + query_block)
            S = local.buf[: (b - a) * (c1 - c0)].reshape(b - a, c1 - c0)
            np.matmul(Qa[a:b], Xt, out=S)
            r = 0
            while True:
                r, cnt = _scan_better(S, open_rows[a:b], c0, t32, node, target, rank, has, done,
                                      local.out_g, local.out_c, cnt, r)
                if cnt:
                    mine.append((local.out_g[:cnt].copy(), local.out_c[:cnt].copy()))
                    cnt = 0
                if r >= b - a:
                    break
        with lock:
            hits.extend(mine)

    T = max(1, int(nb.get_num_threads()) if threads is None else int(threads))
    with contextlib.ExitStack() as stack:
        if T > 1 and not stack.enter_context(single_threaded_blas()):
            T = 1
        pool = stack.enter_context(ThreadPoolExecutor(T, thread_name_prefix="neardup-estimate")) if T > 1 else None
        w0, wave = 0, max(col_chunk, first_wave)
        while w0 < n:
            open_rows = np.flatnonzero(done == 0)
            if len(open_rows) == 0:
                break
            w1 = min(n, w0 + wave)
            Qa = Q[open_rows]
            work = [(Qa, open_rows, c0, min(w1, c0 + col_chunk)) for c0 in range(w0, w1, col_chunk)]
            if pool is None:
                for wk in work:
                    tile(wk)
            else:
                for f in [pool.submit(tile, wk) for wk in work]:
                    f.result()
            computed += len(open_rows) * (w1 - w0)
            w0, wave = w1, min(max_wave, wave * 2)
            if progress is not None:
                progress(w0, n)
    if hits:
        g = np.concatenate([h[0] for h in hits])
        c = np.concatenate([h[1] for h in hits])
        keep = done[g] == 0
        g, c = g[keep], c[keep]
    else:
        g, c = np.zeros(0, np.int64), np.zeros(0, np.int64)
    return has.astype(bool), done.astype(bool), g, c, computed


__all__ = ["scan_better"]
