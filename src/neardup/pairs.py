"""Example pairs in a similarity band, so a user can *see* what "0.97 to 0.98" means.

``sample_pairs(cat, (0.97, 0.98), sample=20)`` scans every pair of the scope (the whole
collection, one cluster, or an id list) exactly, with blocked float32 GEMMs over the upper
triangle, and never materialises the pairs: one compiled scan per block counts the pairs in the
band and keeps a *bottom-k* sample, i.e. the ``sample`` in-band pairs whose hash of
``(row i, row j, seed)`` is smallest. That is a uniform sample without replacement, the same for
the same seed whatever the block sizes or thread count, in O(N·d + block) memory.

The band is half-open, ``lo <= sim < hi``, on the exact similarities of canonical vectors (see
:mod:`neardup.similarity.canonical`); a band ending at 1 includes 1 (and canonical similarities
just above it).
Cost: the whole collection is an all-pairs pass (like an exact dedup: ~26 s at 100k here), a
2,000-image cluster a few milliseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .catalog import Catalog
from .errors import InputError
from .jit import nb
from .similarity.canonical import canonical_vectors
from .similarity.exact import thread_row_bounds, upper_triangle_blocks
from .similarity.forest import ceil_f32

ProgressFn = Callable[[int, int], None]
MAX_SAMPLE = 10_000


def parse_band(text: str | Sequence[float]) -> tuple[float, float]:
    """``"0.97:0.98"`` -> ``(0.97, 0.98)``; needs -1 <= lo < hi <= 1."""
    if isinstance(text, str):
        parts = text.split(":")
        if len(parts) != 2:
            raise InputError(f"band {text!r}: give it as LOW:HIGH, e.g. 0.97:0.98")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise InputError(f"band {text!r}: LOW and HIGH must be numbers, e.g. 0.97:0.98") from None
    else:
        lo, hi = (float(v) for v in text)
    if not (np.isfinite(lo) and np.isfinite(hi)) or not (-1.0 <= lo < hi <= 1.0):
        raise InputError(f"band {lo:g}:{hi:g}: need -1 <= LOW < HIGH <= 1")
    return lo, hi


def default_bands(catalog: Catalog, model: str | None = None) -> list[tuple[float, float]]:
    """The two bands either side of the default threshold for this catalog and model.

    Their width is the gap to the nearest threshold of the model's default sweep (0.05 on SSCD's
    scale, 0.01 on CLIP's), so ``pairs`` shows what lies just below and just above the default.
    """
    from .sweep import default_thresholds

    ts, t = default_thresholds(catalog, model)
    gaps = [abs(v - t) for v in ts if abs(v - t) > 1e-9]
    w = min(gaps) if gaps else 0.01
    lo = round(max(-1.0, t - w), 6)
    hi = round(min(1.0, t + w), 6)
    return [(lo, round(t, 6)), (round(t, 6), hi)] if t < 1.0 else [(lo, 1.0)]


# --------------------------------------------------------------------------------------------
# the compiled scan
# --------------------------------------------------------------------------------------------
@nb.njit(cache=True, inline="always")
def _key(i: int, j: int, seed: np.uint64) -> np.uint64:
    """splitmix64 of (i, j, seed): the pair's random sort key."""
    z = ((np.uint64(i) << np.uint64(32)) ^ np.uint64(j)) + seed * np.uint64(0x9E3779B97F4A7C15)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(cache=True, inline="always")
def _sift_down(key: np.ndarray, hi_: np.ndarray, hj: np.ndarray, hs: np.ndarray, m: int) -> None:
    """Restore the max-heap (largest key at 0) after the root was replaced."""
    p = 0
    while True:
        c = 2 * p + 1
        if c >= m:
            break
        if c + 1 < m and key[c + 1] > key[c]:
            c += 1
        if key[c] <= key[p]:
            break
        key[p], key[c] = key[c], key[p]
        hi_[p], hi_[c] = hi_[c], hi_[p]
        hj[p], hj[c] = hj[c], hj[p]
        hs[p], hs[c] = hs[c], hs[p]
        p = c


@nb.njit(cache=True, inline="always")
def _sift_up(key: np.ndarray, hi_: np.ndarray, hj: np.ndarray, hs: np.ndarray, c: int) -> None:
    while c > 0:
        p = (c - 1) // 2
        if key[p] >= key[c]:
            break
        key[p], key[c] = key[c], key[p]
        hi_[p], hi_[c] = hi_[c], hi_[p]
        hj[p], hj[c] = hj[c], hj[p]
        hs[p], hs[c] = hs[c], hs[p]
        c = p


@nb.njit(cache=True, inline="always")
def _offer(key: np.ndarray, hi_: np.ndarray, hj: np.ndarray, hs: np.ndarray, m: int, k: int,
           pair_key: np.uint64, i: int, j: int, s: float) -> int:
    """Offer pair (i, j) to a bottom-k heap holding m entries (largest key at 0); returns its new size."""
    if m < k:
        key[m] = pair_key
        hi_[m] = i
        hj[m] = j
        hs[m] = s
        _sift_up(key, hi_, hj, hs, m)
        return m + 1
    if pair_key < key[0]:
        key[0] = pair_key
        hi_[0] = i
        hj[0] = j
        hs[0] = s
        _sift_down(key, hi_, hj, hs, m)
    return m


@nb.njit(cache=True, parallel=True)
def _scan_bands(S: np.ndarray, row0: int, col0: int, diagonal: bool, los: np.ndarray, his: np.ndarray,
                seed: np.uint64, k: int, hkey: np.ndarray, hi_: np.ndarray, hj: np.ndarray, hs: np.ndarray,
                hn: np.ndarray, counts: np.ndarray, row_lo: np.ndarray, row_hi: np.ndarray) -> None:
    """Count pairs with los[b] <= s < his[b] in block S and offer each to thread t's bottom-k heap of band b."""
    T = row_lo.shape[0]
    B = los.shape[0]
    lo_min = los.min()
    hi_max = his.max()
    for t in nb.prange(T):
        for r in range(row_lo[t], row_hi[t]):
            gi = row0 + r
            c_start = r + 1 if diagonal else 0
            for c in range(c_start, S.shape[1]):
                s = S[r, c]
                if s < lo_min or s >= hi_max:
                    continue
                key = _key(gi, col0 + c, seed)
                for bb in range(B):
                    if s >= los[bb] and s < his[bb]:
                        counts[t, bb] += 1
                        if k == 0:
                            continue
                        hn[t, bb] = _offer(hkey[t, bb], hi_[t, bb], hj[t, bb], hs[t, bb], hn[t, bb], k,
                                           key, gi, col0 + c, s)


BandResult = tuple[int, np.ndarray, np.ndarray, np.ndarray]


def bands_pairs(vectors: np.ndarray, bands: Sequence[tuple[float, float]], sample: int = 20, *, seed: int = 0,
                block_rows: int = 2048, col_chunk: int = 8192,
                progress: ProgressFn | None = None) -> list[BandResult]:
    """:func:`band_pairs` for several bands (they may overlap) in one pass over the pairs."""
    bands = [parse_band(b) for b in bands]
    if not bands:
        raise InputError("no band given")
    if not (0 <= int(sample) <= MAX_SAMPLE):
        raise InputError(f"sample {sample}: give 0 to {MAX_SAMPLE:,} pairs")
    k = int(sample)
    X = canonical_vectors(vectors)
    n = int(X.shape[0])
    B = len(bands)
    # float32 similarities are exact: s >= x iff s >= the smallest float32 >= x
    los = np.array([ceil_f32(lo) for lo, _ in bands], dtype=np.float32)
    his = np.array([np.inf if hi >= 1.0 else ceil_f32(hi) for _, hi in bands], dtype=np.float32)
    seed64 = np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)
    T = max(1, int(nb.get_num_threads()))
    kk = max(k, 1)
    hkey = np.zeros((T, B, kk), np.uint64)
    hi_ = np.zeros((T, B, kk), np.int64)
    hj = np.zeros((T, B, kk), np.int64)
    hs = np.zeros((T, B, kk), np.float32)
    hn = np.zeros((T, B), np.int64)
    counts = np.zeros((T, B), np.int64)
    total = n * (n - 1) // 2
    done = 0
    for a, c0, S in upper_triangle_blocks(X, block_rows, col_chunk):
        rb, cc = S.shape
        bounds = thread_row_bounds(rb, cc, c0 == a, T)
        _scan_bands(S, a, c0, c0 == a, los, his, seed64, k, hkey, hi_, hj, hs, hn, counts,
                    bounds[:-1].copy(), bounds[1:].copy())
        if c0 + cc >= n:
            done += rb * (n - a) - rb * (rb + 1) // 2
            if progress is not None:
                progress(done, total)
    out: list[BandResult] = []
    for bb in range(B):
        # merge the per-thread heaps: the k smallest keys overall
        sel_key = np.concatenate([hkey[t, bb, :hn[t, bb]] for t in range(T)])
        sel_i = np.concatenate([hi_[t, bb, :hn[t, bb]] for t in range(T)])
        sel_j = np.concatenate([hj[t, bb, :hn[t, bb]] for t in range(T)])
        sel_s = np.concatenate([hs[t, bb, :hn[t, bb]] for t in range(T)])
        keep = np.argsort(sel_key, kind="stable")[:k]
        sel_i, sel_j, sel_s = sel_i[keep], sel_j[keep], sel_s[keep]
        order = np.lexsort((sel_j, sel_i, -sel_s))
        out.append((int(counts[:, bb].sum()), sel_i[order], sel_j[order], sel_s[order]))
    return out


def band_pairs(vectors: np.ndarray, lo: float, hi: float, sample: int = 20, *, seed: int = 0,
               block_rows: int = 2048, col_chunk: int = 8192, progress: ProgressFn | None = None) -> BandResult:
    """Exact count of pairs i < j with ``lo <= sim < hi`` (``hi >= 1``: no upper limit) and a seeded sample.

    Returns ``(count, i, j, sim)``: the sampled pairs' rows (i < j) and similarities, most similar first.
    """
    return bands_pairs(vectors, [(lo, hi)], sample, seed=seed, block_rows=block_rows, col_chunk=col_chunk,
                       progress=progress)[0]


# --------------------------------------------------------------------------------------------
# catalog level
# --------------------------------------------------------------------------------------------
@dataclass
class PairSample:
    """A seeded sample of pairs in a band, and the exact number of pairs in it."""

    band: tuple[float, float]
    scope: str                 # "all", "cluster 3", "500 ids"
    model: str
    n_images: int
    in_band: int               # exact count of pairs with lo <= sim < hi in the scope
    pairs: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0

    @property
    def total_pairs(self) -> int:
        return self.n_images * (self.n_images - 1) // 2

    def to_dict(self) -> dict[str, Any]:
        return dict(band=list(self.band), scope=self.scope, model=self.model, images=self.n_images,
                    pairs_in_band=self.in_band, total_pairs=self.total_pairs, seed=self.seed,
                    seconds=round(self.seconds, 4), sample=self.pairs)


def _thumb_path(sidecar: Path, sha: str | None) -> str | None:
    if not sha:
        return None
    try:
        from .sources import thumbnail_path
    except Exception:  # pragma: no cover - scanner module not available
        p = Path(sidecar) / "thumbs" / sha[:2] / f"{sha}.jpg"
    else:
        p = thumbnail_path(sidecar, sha)
    return str(p) if p.exists() else None


def sample_pairs(cat: Catalog, band: str | tuple[float, float], sample: int = 20, *, cluster: int | None = None,
                 ids: Sequence[str] | None = None, model: str | None = None, seed: int = 0,
                 progress: ProgressFn | None = None) -> PairSample:
    """Example pairs with similarity in ``band`` for the whole collection, one cluster, or ``ids``.

    Each pair: ``a``, ``b`` (image ids), ``sim``, and ``path_a``/``path_b``, ``thumb_a``/``thumb_b``
    where the catalog knows them (else None).
    """
    return sample_bands(cat, [band], sample, cluster=cluster, ids=ids, model=model, seed=seed, progress=progress)[0]


def sample_bands(cat: Catalog, bands: Sequence[str | tuple[float, float]], sample: int = 20, *,
                 cluster: int | None = None, ids: Sequence[str] | None = None, model: str | None = None,
                 seed: int = 0, progress: ProgressFn | None = None) -> list[PairSample]:
    """:func:`sample_pairs` for several bands at once (one pass over the pairs), one result per band."""
    from .dedup import load_scope

    parsed = [parse_band(b) for b in bands]
    if not parsed:
        raise InputError("no band given")
    if cluster is not None and ids is not None:
        raise InputError("give a cluster or an id list, not both")
    label = "all"
    if cluster is not None:
        from .cluster import cluster_ids

        ids = cluster_ids(cat, cluster)
        label = f"cluster {cluster}"
    elif ids is not None:
        ids = [str(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise InputError("the id list has duplicates")
        label = f"{len(ids)} ids"
    t0 = time.perf_counter()
    scope = load_scope(cat, model, ids)
    results = bands_pairs(scope.vectors, parsed, sample, seed=seed, progress=progress)
    all_ids = sorted({x for _, i, j, _ in results for x in scope.ids[np.r_[i, j]].tolist()})
    info: dict[str, dict] = {}
    if all_ids:
        cols = set(cat.image_columns())
        want = [c for c in ("path", "sha256") if c in cols]
        if want:
            import pyarrow as pa

            t = pa.table({"id": pa.array(all_ids, pa.string())})
            with cat._lock:
                cat.con.register("_pair_ids", t)
                try:
                    rows = cat.con.execute(f"SELECT id, {', '.join(want)} FROM images SEMI JOIN _pair_ids USING (id)").fetchall()
                finally:
                    cat.con.unregister("_pair_ids")
            info = {r[0]: dict(zip(want, r[1:])) for r in rows}
    seconds = time.perf_counter() - t0
    out = []
    for (lo, hi), (count, i, j, s) in zip(parsed, results):
        pairs = []
        for a, b, sim in zip(scope.ids[i].tolist(), scope.ids[j].tolist(), s.tolist()):
            ia, ib = info.get(a, {}), info.get(b, {})
            pairs.append(dict(a=a, b=b, sim=round(float(sim), 6), path_a=ia.get("path"), path_b=ib.get("path"),
                              thumb_a=_thumb_path(cat.sidecar, ia.get("sha256")),
                              thumb_b=_thumb_path(cat.sidecar, ib.get("sha256"))))
        out.append(PairSample(band=(lo, hi), scope=label, model=scope.model, n_images=len(scope), in_band=count,
                              pairs=pairs, seed=int(seed), seconds=seconds))
    return out


__all__ = ["parse_band", "band_pairs", "bands_pairs", "sample_pairs", "sample_bands", "PairSample", "MAX_SAMPLE"]
