"""Queries against catalog rows, exactly: every pair >= t and each query's best match, in one pass.

The work is a list of *tasks* (a set of query rows x a range of catalog columns). T threads take
tasks in turn; for each, a thread multiplies a block of its queries by the catalog tile with a
single-threaded float32 GEMM into its own cache-sized buffer and scans that buffer at once with
one compiled pass that keeps each query's best match and collects every hit >= t (64
similarities compared at once into a bit mask). So the similarities are never written to memory
and read back, and no thread waits for another between GEMM and scan. Each thread keeps its own
best match per query; the bests are merged at the end by (similarity desc, key asc), so the
result does not depend on which thread took which task.

The exact match is one task per catalog tile with every query (each catalog row read once); the
ANN match (:mod:`.ann_match`) is one task per (partition tile, the queries probing it); the
estimate (:mod:`neardup.estimate`) is the sampled rows against all rows. Vectors are canonical,
so every similarity is an exact float32 value whatever the tiling or thread count.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Sequence

import numpy as np

from ..jit import nb
from .bitmask import lowest_bit, row_mask
from .blas import single_threaded_blas
from .forest import ceil_f32
from .incremental import RowSource

ProgressFn = Callable[[int, int], None]
Task = tuple[np.ndarray | None, int, int]  # (query rows, or None for all; catalog columns [c0, c1))
MatchArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@nb.njit(cache=True, nogil=True)
def _scan_tile(S, qidx, a, col0, t32, key, best_v, best_k, best_c, out_q, out_c, out_s, cnt, r):
    """One pass over a tile of similarities (rows: queries ``qidx[a:]``; columns: catalog col0..):
    per row, update the query's best match (ties: smaller key) and collect every hit >= t.

    Each chunk of 64 is compared at once against min(best so far, t): the set bits are the hits
    and the candidates for a new best (past a row's first chunks, almost never one below t).
    Starts at row ``r`` with ``cnt`` hits in the buffers; stops before a row that might not fit and
    returns ``(next row, cnt)`` -- the caller empties the buffers and calls again.
    """
    nrows, ncols = S.shape
    cap = out_q.shape[0]
    while r < nrows:
        if cnt + ncols > cap:
            break
        q = qidx[a + r]
        bv = best_v[q]
        bk = best_k[q]
        bc = best_c[q]
        for c_lo in range(0, ncols, 64):
            lim = bv if bv < t32 else t32
            mask = row_mask(S, r, c_lo, ncols, lim)
            while mask:
                c = c_lo + lowest_bit(mask)
                mask &= mask - np.uint64(1)
                v = S[r, c]
                if v >= bv:
                    k = key[col0 + c]
                    if v > bv or k < bk:
                        bv = v
                        bk = k
                        bc = col0 + c
                if v >= t32:
                    out_q[cnt] = q
                    out_c[cnt] = col0 + c
                    out_s[cnt] = v
                    cnt += 1
        best_v[q] = bv
        best_k[q] = bk
        best_c[q] = bc
        r += 1
    return r, cnt


class _Worker:
    """One thread's share: tasks taken from a shared counter, GEMM + scan per query block."""

    def __init__(self, Q: np.ndarray, catalog: RowSource, keys: np.ndarray, t32: np.float32, query_block: int,
                 col_chunk: int, hit_capacity: int | None = None) -> None:
        nq = len(Q)
        self.Q, self.catalog, self.keys, self.t32 = Q, catalog, keys, t32
        self.qb, self.cb = max(1, query_block), max(1, col_chunk)
        self.all_q = np.arange(nq, dtype=np.int64)
        self.best_v = np.full(nq, -np.inf, dtype=np.float32)
        self.best_k = np.full(nq, np.iinfo(np.int64).max, dtype=np.int64)
        self.best_c = np.full(nq, -1, dtype=np.int64)
        # rows with thousands of hits (a dense group) need room; at least one row's worth
        cap = max(self.cb, 32 * self.cb + 4096 if hit_capacity is None else int(hit_capacity))
        self.out_q, self.out_c = np.empty(cap, np.int64), np.empty(cap, np.int64)
        self.out_s = np.empty(cap, np.float32)
        self.cnt = 0
        self.hits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.done = 0  # work finished (query rows x catalog columns)

    def _flush(self) -> None:
        k = self.cnt
        if k:
            self.hits.append((self.out_q[:k].copy(), self.out_c[:k].copy(), self.out_s[:k].copy()))
        self.cnt = 0

    def run(self, tasks: Sequence[Task], next_task: Callable[[], int], stop: threading.Event,
            on_task: Callable[[], None] | None = None) -> None:
        Q = self.Q
        buf = np.empty(self.qb * self.cb, dtype=np.float32)
        while not stop.is_set():
            i = next_task()
            if i >= len(tasks):
                break
            qsel, c0, c1 = tasks[i]
            Xt = self.catalog.take(c0, c1).T
            qidx = self.all_q if qsel is None else qsel
            for a in range(0, len(qidx), self.qb):
                b = min(len(qidx), a + self.qb)
                S = buf[: (b - a) * (c1 - c0)].reshape(b - a, c1 - c0)
                np.matmul(Q[a:b] if qsel is None else Q[qsel[a:b]], Xt, out=S)
                r = 0
                while True:
                    r, self.cnt = _scan_tile(S, qidx, a, c0, self.t32, self.keys, self.best_v, self.best_k,
                                             self.best_c, self.out_q, self.out_c, self.out_s, self.cnt, r)
                    if r >= b - a:
                        break
                    self._flush()
            self.done += len(qidx) * (c1 - c0)
            if on_task is not None:
                on_task()
        self._flush()


def merge_best(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the best of the threads' bests ``(value, key, column)``: highest value, then smallest key.

    Returns ``(column, value)``; a query no thread saw keeps -1 / -inf.
    """
    best_v, best_k, best_c = parts[0]
    for v, k, c in parts[1:]:
        better = (v > best_v) | ((v == best_v) & (k < best_k))
        best_v = np.where(better, v, best_v)
        best_k = np.where(better, k, best_k)
        best_c = np.where(better, c, best_c)
    return best_c, best_v


def run_tasks(Q: np.ndarray, catalog: RowSource, keys: np.ndarray, threshold: float, tasks: Sequence[Task], *,
              query_block: int = 1024, col_chunk: int = 2048, threads: int | None = None,
              hit_capacity: int | None = None, progress: ProgressFn | None = None) -> MatchArrays:
    """Run ``tasks`` (each: query rows x catalog columns, at most ``col_chunk`` columns) on T threads.

    ``hit_capacity``: hits a thread buffers before copying them out (tests make it tiny).

    Returns ``(q, c, s)`` for every computed pair with similarity >= threshold, and per query its
    best catalog column and similarity among the computed pairs (-1 / -inf where none).
    """
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    nq = len(Q)
    t32 = ceil_f32(threshold)  # exact float32 similarities: s >= t iff s >= t32
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    total = sum((nq if qs is None else len(qs)) * (c1 - c0) for qs, c0, c1 in tasks)
    want = max(1, int(nb.get_num_threads()) if threads is None else int(threads))
    with contextlib.ExitStack() as stack:
        # one thread: its GEMMs may use every core; more: each runs its own single-threaded GEMMs
        T = max(1, min(want, len(tasks)))
        if T > 1 and not stack.enter_context(single_threaded_blas()):
            T = 1  # no way to hold the BLAS to one thread: one worker, threaded GEMM
        workers = [_Worker(Q, catalog, keys, t32, query_block, col_chunk, hit_capacity) for _ in range(T)]
        counter = itertools.count()
        stop = threading.Event()
        if T == 1:
            w0 = workers[0]
            w0.run(tasks, counter.__next__, stop, None if progress is None else lambda: progress(w0.done, total))
        else:
            pool = ThreadPoolExecutor(T, thread_name_prefix="neardup-match")
            futures = [pool.submit(w.run, tasks, counter.__next__, stop) for w in workers]
            try:
                while True:
                    finished, pending = wait(futures, timeout=0.25)
                    if progress is not None:
                        progress(min(total, sum(w.done for w in workers)), total)
                    for f in finished:
                        f.result()  # a worker's exception, at once
                    if not pending:
                        break
            except BaseException:
                stop.set()  # Ctrl-C or a failed worker: the others stop after their current task
                wait(futures)
                raise
            finally:
                pool.shutdown(wait=True)
    best_c, best_v = merge_best([(w.best_v, w.best_k, w.best_c) for w in workers])
    hits = [h for w in workers for h in w.hits]
    if hits:
        q, c, s = (np.concatenate([h[i] for h in hits]) for i in range(3))
    else:
        q, c, s = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return q, c, s, best_c, best_v


def match_matrix(queries: np.ndarray, catalog: RowSource, keys: np.ndarray, threshold: float, *,
                 query_block: int = 1024, col_chunk: int = 2048, threads: int | None = None,
                 hit_capacity: int | None = None, progress: ProgressFn | None = None) -> MatchArrays:
    """Exact matching of unit-norm ``queries`` against every row of ``catalog``.

    ``keys[j]`` orders tied catalog rows (smaller first). Returns ``(q, c, s)`` for every pair
    with similarity >= threshold, and per query its best catalog row and similarity. One task
    per catalog tile of ``col_chunk`` rows, each against every query (each catalog row read once).
    """
    n, cb = catalog.n, max(1, col_chunk)
    tasks: list[Task] = [(None, c0, min(n, c0 + cb)) for c0 in range(0, n, cb)]
    return run_tasks(queries, catalog, keys, threshold, tasks, query_block=query_block, col_chunk=cb,
                     threads=threads, hit_capacity=hit_capacity, progress=progress)


__all__ = ["match_matrix", "merge_best", "run_tasks"]
