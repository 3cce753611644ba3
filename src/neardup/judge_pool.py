"""What judging pairs needs from the whole collection, computed once per model version, not per answer.

Choosing the next pair to judge needs pairs at given similarities, and refitting needs the
histogram of every pair's similarity; both come from all N^2/2 pairs. Done for every answer,
that is an all-pairs pass per answer (minutes at 100k). Here they are computed once:

* :func:`candidate_pool`: one exact pass over the pairs keeps, for each of :data:`BINS` equal
  similarity bins over the sampling range, a seeded uniform sample of up to :data:`PER_BIN` of its
  pairs (bottom-k of a hash of the pair, as :mod:`neardup.pairs` does) and the bin's exact pair
  count. Drawing a pair of a band from the pool with weight count/kept per bin is a uniform draw
  from the band's pairs. Kept in memory and in the catalog's side folder
  (``<db>.d/judge/<model>-v<version>-lo<lo>.npz``), so a restart does not pay for it again; a new
  embedding version makes a new pool.
* :func:`population`: the fit's histogram and forest, kept in memory per model version and floor.

After that an answer costs the fit (a bootstrap over the judgments, independent of N) and a
filter over the pool (at most BINS x PER_BIN pairs).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .catalog import Catalog
from .jit import nb
from .pairs import _key, _offer
from .similarity.canonical import canonical_vectors
from .similarity.exact import thread_row_bounds, upper_triangle_blocks

#: Equal similarity bins of the pool over [lo, 1].
BINS = 256
#: Pairs kept per bin (a uniform sample of the bin's pairs).
PER_BIN = 48
#: Pools and populations kept in memory (most recent first out when full).
_MEMORY = 8

_lock = threading.Lock()
_pools: dict[tuple[Any, ...], "CandidatePool"] = {}
_populations: dict[tuple[Any, ...], tuple[Any, Any]] = {}


@nb.njit(cache=True, parallel=True)
def _scan_bins(S: np.ndarray, row0: int, col0: int, diagonal: bool, lo: float, inv_w: float, B: int,
               seed: np.uint64, k: int, hkey: np.ndarray, hi_: np.ndarray, hj: np.ndarray, hs: np.ndarray,
               hn: np.ndarray, counts: np.ndarray, row_lo: np.ndarray, row_hi: np.ndarray) -> None:
    """Count the pairs of block S in each bin and offer each to thread t's bottom-k heap of its bin."""
    T = row_lo.shape[0]
    for t in nb.prange(T):
        for r in range(row_lo[t], row_hi[t]):
            gi = row0 + r
            c_start = r + 1 if diagonal else 0
            for c in range(c_start, S.shape[1]):
                s = S[r, c]
                if s < lo:
                    continue
                bb = int((s - lo) * inv_w)
                if bb >= B:
                    bb = B - 1
                counts[t, bb] += 1
                key = _key(gi, col0 + c, seed)
                hn[t, bb] = _offer(hkey[t, bb], hi_[t, bb], hj[t, bb], hs[t, bb], hn[t, bb], k,
                                   key, gi, col0 + c, s)


def pool_pairs(vectors: np.ndarray, lo: float, bins: int = BINS, per_bin: int = PER_BIN, *, seed: int = 0,
               block_rows: int = 2048, col_chunk: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One pass over all pairs: ``(i, j, similarity, bin counts)`` with up to ``per_bin`` pairs kept per bin."""
    X = canonical_vectors(vectors)
    T = max(1, int(nb.get_num_threads()))
    k = max(int(per_bin), 1)
    hkey = np.zeros((T, bins, k), np.uint64)
    hi_ = np.zeros((T, bins, k), np.int64)
    hj = np.zeros((T, bins, k), np.int64)
    hs = np.zeros((T, bins, k), np.float32)
    hn = np.zeros((T, bins), np.int64)
    counts = np.zeros((T, bins), np.int64)
    seed64 = np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)
    inv_w = bins / (1.0 - lo)
    for a, c0, S in upper_triangle_blocks(X, block_rows, col_chunk):
        bounds = thread_row_bounds(S.shape[0], S.shape[1], c0 == a, T)
        _scan_bins(S, a, c0, c0 == a, float(lo), float(inv_w), bins, seed64, k, hkey, hi_, hj, hs, hn, counts,
                   bounds[:-1].copy(), bounds[1:].copy())
    I, J, Sv = [], [], []
    for bb in range(bins):   # merge the per-thread heaps: the k smallest keys of the bin overall
        key = np.concatenate([hkey[t, bb, :hn[t, bb]] for t in range(T)])
        keep = np.argsort(key, kind="stable")[:k]
        I.append(np.concatenate([hi_[t, bb, :hn[t, bb]] for t in range(T)])[keep])
        J.append(np.concatenate([hj[t, bb, :hn[t, bb]] for t in range(T)])[keep])
        Sv.append(np.concatenate([hs[t, bb, :hn[t, bb]] for t in range(T)])[keep])
    return np.concatenate(I), np.concatenate(J), np.concatenate(Sv).astype(np.float64), counts.sum(axis=0)


@dataclass(frozen=True)
class CandidatePool:
    """Pairs to offer: ids ``a`` < ``b``, exact similarity, and the weight (pairs it stands for) of each."""

    lo: float
    a: np.ndarray
    b: np.ndarray
    sims: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return int(len(self.sims))


def _version(cat: Catalog, model: str) -> int:
    row = cat.one("SELECT version FROM embedding_sets WHERE model = ?", [model])
    return -1 if row is None else int(row[0])


def _remember(store: dict, key: tuple[Any, ...], value: Any) -> None:
    store[key] = value
    while len(store) > _MEMORY:
        store.pop(next(iter(store)))


def candidate_pool(cat: Catalog, model: str, lo: float, *, seed: int = 0) -> CandidatePool:
    """The pool of pairs to judge over [lo, 1] for the current embeddings of ``model`` (see module doc)."""
    lo = round(float(lo), 6)
    version = _version(cat, model)
    gone = len(cat.unavailable_ids())
    key = (str(cat.path), model, version, gone, lo, seed)
    with _lock:
        if key in _pools:
            return _pools[key]
    path = cat.sidecar / "judge" / f"{model}-v{version}-g{gone}-lo{lo:.6f}-s{seed}.npz"
    pool = None
    if path.is_file():
        try:
            with np.load(path) as z:
                pool = CandidatePool(lo, z["a"].astype(str), z["b"].astype(str), z["sims"], z["weight"])
        except Exception:   # a damaged cache file is just recomputed
            pool = None
    if pool is None:
        from .dedup import load_scope

        scope = load_scope(cat, model)
        i, j, s, counts = pool_pairs(scope.vectors, lo, seed=seed)
        ids = np.asarray(scope.ids).astype(str)
        a, b = ids[i], ids[j]
        swap = a > b
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        bins = np.minimum(((s - lo) * (BINS / (1.0 - lo))).astype(np.int64), BINS - 1)
        kept = np.bincount(bins, minlength=BINS)
        weight = counts[bins] / np.maximum(kept[bins], 1)
        pool = CandidatePool(lo, a, b, s, weight.astype(np.float64))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for old in path.parent.glob(f"{model}-v*.npz"):
                if not old.name.startswith(f"{model}-v{version}-"):
                    old.unlink(missing_ok=True)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, a=pool.a, b=pool.b, sims=pool.sims, weight=pool.weight)
            tmp.replace(path)
        except OSError:    # a read-only place: the pool lives in memory only
            pass
    with _lock:
        _remember(_pools, key, pool)
    return pool


def population(cat: Catalog, model: str, floor: float) -> tuple[Any, Any]:
    """``(Population over [floor, 1], forest)`` for the current embeddings of ``model``, computed once per version."""
    from .calibration import Population
    from .dedup import similarity_forest
    from .similarity.forest import HIST_STEP

    key = (str(cat.path), model, _version(cat, model), len(cat.unavailable_ids()), round(float(floor), 9))
    with _lock:
        if key in _populations:
            return _populations[key]
    forest = similarity_forest(cat, floor, model=model)
    value = (Population.from_hist(forest.hist, forest.floor, HIST_STEP, floor), forest)
    with _lock:
        _remember(_populations, key, value)
    return value


__all__ = ["BINS", "PER_BIN", "CandidatePool", "candidate_pool", "pool_pairs", "population"]
