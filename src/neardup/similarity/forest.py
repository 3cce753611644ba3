"""The similarity forest: one pass over the pairs serves every threshold.

Connected components of the graph "cosine >= t" are exactly the components of a *maximum
spanning forest* of that graph restricted to edges >= t (single linkage). So a similarity pass
keeps at most N-1 weighted edges (plus a histogram of pair similarities for pair counts), and
every threshold >= its floor is then answered in O(N log N): groups, group sizes, the weakest
link holding a group together, and the sweep table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..jit import nb

HIST_STEP = 1e-5  # histogram bin width: pair counts are exact at thresholds on this grid


# --------------------------------------------------------------------------------------------
# union-find primitives (numba): shared by the exact pass, the merge and the cut
# --------------------------------------------------------------------------------------------
@nb.njit(cache=True, inline="always")
def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@nb.njit(cache=True, inline="always")
def _hist_bin(s: float, edges: np.ndarray) -> tuple[int, float]:
    """Histogram bin of a similarity (clamped to 1.0, which canonical vectors can pass) and the clamped value.

    Bin b holds ``edges[b] <= s < edges[b + 1]``, decided by exact float64 comparisons with the
    one edge table every pass uses, so exact, ANN and Ray histograms agree bin for bin.
    """
    sd = np.float64(s)
    if sd > 1.0:
        sd = 1.0
    nbins = edges.shape[0] - 1
    b = int((sd - edges[0]) * 1e5)
    if b >= nbins:
        b = nbins - 1
    elif b < 0:
        b = 0
    while b + 1 < nbins and edges[b + 1] <= sd:
        b += 1
    while b > 0 and edges[b] > sd:
        b -= 1
    return b, sd


@nb.njit(cache=True, inline="always")
def _union(parent: np.ndarray, x: int, y: int) -> bool:
    """Join the sets of x and y (the smaller root index becomes the root); False if already joined."""
    a = _find(parent, x)
    b = _find(parent, y)
    if a == b:
        return False
    if a < b:
        parent[b] = a
    else:
        parent[a] = b
    return True


@nb.njit(cache=True)
def _kruskal(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Keep mask of a spanning forest of edges given heaviest first."""
    parent = np.arange(n, dtype=np.int64)
    keep = np.zeros(src.shape[0], dtype=np.bool_)
    for e in range(src.shape[0]):
        keep[e] = _union(parent, src[e], dst[e])
    return keep


@nb.njit(cache=True)
def _labels(n: int, src: np.ndarray, dst: np.ndarray, k: int) -> np.ndarray:
    """Component label (smallest member index) of every node using the first k edges."""
    parent = np.arange(n, dtype=np.int64)
    for e in range(k):
        _union(parent, src[e], dst[e])
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = _find(parent, i)
    return out


@nb.njit(cache=True)
def _sweep_stats(n: int, src: np.ndarray, dst: np.ndarray, cut_at: np.ndarray) -> np.ndarray:
    """For each prefix length in ``cut_at`` (ascending): components>=2, largest size.

    One union-find pass over the forest (heaviest first) for every threshold at once.
    """
    parent = np.arange(n, dtype=np.int64)
    size = np.ones(n, dtype=np.int64)
    groups = 0
    largest = 1 if n > 0 else 0
    out = np.zeros((cut_at.shape[0], 2), dtype=np.int64)
    e = 0
    for c in range(cut_at.shape[0]):
        while e < cut_at[c]:
            a = _find(parent, src[e])
            b = _find(parent, dst[e])
            if a != b:
                sa = size[a]
                sb = size[b]
                if sa >= 2 and sb >= 2:
                    groups -= 1
                elif sa == 1 and sb == 1:
                    groups += 1
                if sa < sb:
                    a, b = b, a
                parent[b] = a
                size[a] = sa + sb
                if sa + sb > largest:
                    largest = sa + sb
            e += 1
        out[c, 0] = groups
        out[c, 1] = largest
    return out


def hist_bins(floor: float) -> int:
    """Number of histogram bins between ``floor`` and 1 (the last bin also holds rounding above 1)."""
    return int(np.ceil((1.0 - floor) / HIST_STEP)) + 1


def hist_edges(floor: float) -> np.ndarray:
    """Lower edges of the histogram bins (float64), then +inf: ``hist_bins(floor) + 1`` values.

    Edge b is ``floor + b * HIST_STEP``. When the floor has at most five decimals the edges are
    the float64 values of those decimals (``(F + b) / 1e5``, correctly rounded), so a threshold
    typed with five decimals or fewer *is* an edge and its pair count is exact.
    """
    nb_ = hist_bins(floor)
    F = floor * 1e5
    if abs(F - round(F)) < 1e-6:
        lower = (round(F) + np.arange(nb_, dtype=np.float64)) / 1e5
    else:
        lower = floor + np.arange(nb_, dtype=np.float64) * HIST_STEP
    lower[0] = floor
    return np.r_[lower, np.inf]


def ceil_f32(x: float) -> np.float32:
    """The smallest float32 >= x: for a float32 similarity s, ``s >= x`` iff ``s >= ceil_f32(x)``."""
    f = np.float32(x)
    return f if float(f) >= x else np.nextafter(f, np.float32(np.inf))


@dataclass
class SimilarityForest:
    """A maximum spanning forest of the pairs with cosine >= ``floor``, heaviest edge first.

    ``hist[b]`` counts pairs with similarity in ``[edges[b], edges[b + 1])`` (:func:`hist_edges`).
    Weights are exact (canonical vectors, see :mod:`neardup.similarity.canonical`); which of
    several equal-weight edges a pass keeps may differ, but the components at every threshold,
    the sorted weights and the histogram do not.
    Node indices refer to rows of the embedding matrix the pass ran on.
    """

    n: int
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    floor: float
    hist: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = np.argsort(-self.weight, kind="stable")
        if not np.all(order == np.arange(len(order))):
            self.src, self.dst, self.weight = self.src[order], self.dst[order], self.weight[order]
        self.src = np.ascontiguousarray(self.src, dtype=np.int64)
        self.dst = np.ascontiguousarray(self.dst, dtype=np.int64)
        self.weight = np.ascontiguousarray(self.weight, dtype=np.float32)

    @classmethod
    def from_edges(cls, n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, floor: float,
                   hist: np.ndarray | None = None, meta: dict | None = None) -> "SimilarityForest":
        """Maximum spanning forest of any edge list (edges below ``floor`` are dropped)."""
        weight = np.asarray(weight, dtype=np.float32)
        keep = weight.astype(np.float64) >= floor
        src, dst, weight = np.asarray(src)[keep], np.asarray(dst)[keep], weight[keep]
        order = np.argsort(-weight, kind="stable")
        src, dst, weight = src[order].astype(np.int64), dst[order].astype(np.int64), weight[order]
        k = _kruskal(n, src, dst) if len(src) else np.zeros(0, bool)
        if hist is None:
            hist = np.zeros(hist_bins(floor), dtype=np.int64)
        return cls(n, src[k], dst[k], weight[k], float(floor), hist, dict(meta or {}))

    # -- threshold queries -----------------------------------------------------------------
    def _check(self, t: float) -> None:
        if not (0.0 < t <= 1.0):
            raise ValueError(f"threshold {t} is outside (0, 1]")
        if t < self.floor - 1e-12:
            raise ValueError(f"threshold {t} is below this forest's floor {self.floor}")

    def n_edges_at(self, t: float) -> int:
        """How many forest edges have weight >= t (= images suppressed at t)."""
        self._check(t)
        return int(np.searchsorted(-self.weight.astype(np.float64), -float(t), side="right"))

    def components(self, t: float) -> np.ndarray:
        """Component label per node at threshold t (the smallest node index in its component)."""
        return _labels(self.n, self.src, self.dst, self.n_edges_at(t))

    def edges_at(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = self.n_edges_at(t)
        return self.src[:k], self.dst[:k], self.weight[:k]

    def weakest_links(self, t: float, labels: np.ndarray | None = None) -> dict[int, float]:
        """Per component (label) of size >= 2: the lowest forest edge holding it together at t.

        This is the bottleneck similarity of the group: below it, the group splits in two.
        """
        if labels is None:
            labels = self.components(t)
        src, _, w = self.edges_at(t)
        if len(src) == 0:
            return {}
        lab = labels[src]
        order = np.lexsort((w, lab))
        first = np.r_[True, lab[order][1:] != lab[order][:-1]]
        return {int(a): float(b) for a, b in zip(lab[order][first], w[order][first])}

    def pair_count(self, t: float) -> int:
        """Pairs with similarity >= t: exact when t is a bin edge (five decimals above a
        five-decimal floor), else it also counts the pairs in [edge below t, t)."""
        self._check(t)
        edges = hist_edges(self.floor)
        b = int(np.searchsorted(edges, float(t), side="left"))  # first edge >= t
        if b >= len(edges) - 1 or edges[b] != float(t):
            b = max(b - 1, 0)  # t inside bin b-1: resolved to the bin
        return int(self.hist[b:].sum())

    def sweep(self, thresholds: Iterable[float]) -> list[dict]:
        """pairs, groups, suppressed, retained and largest group at each threshold, in one pass."""
        ts = [float(t) for t in thresholds]
        for t in ts:
            self._check(t)
        order = np.argsort(-np.asarray(ts)) if ts else np.zeros(0, int)
        cuts = np.array([self.n_edges_at(ts[i]) for i in order], dtype=np.int64)
        stats = _sweep_stats(self.n, self.src, self.dst, cuts) if len(cuts) else np.zeros((0, 2), np.int64)
        rows: dict[int, dict] = {}
        for pos, i in enumerate(order):
            suppressed = int(cuts[pos])
            rows[int(i)] = dict(threshold=ts[i], pairs=self.pair_count(ts[i]), groups=int(stats[pos, 0]),
                                suppressed=suppressed, retained=self.n - suppressed,
                                largest_group=int(stats[pos, 1]))
        return [rows[i] for i in range(len(ts))]

    # -- combine / persist -----------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        import json
        np.savez(path, n=self.n, src=self.src, dst=self.dst, weight=self.weight, floor=self.floor,
                 hist=self.hist, meta=json.dumps(self.meta))

    @classmethod
    def load(cls, path: str | Path) -> "SimilarityForest":
        import json
        with np.load(path) as z:
            return cls(int(z["n"]), z["src"], z["dst"], z["weight"], float(z["floor"]), z["hist"],
                       json.loads(str(z["meta"])))


def merge_forests(forests: Sequence[SimilarityForest], n: int | None = None) -> SimilarityForest:
    """Maximum spanning forest of the union of several forests (Kruskal over their edges).

    Exact: the MSF of a graph equals the MSF of the union of MSFs of any edge partition. Used to
    combine tiles (Ray) or partitions (ANN). Histograms are added (their floors must match).
    """
    if not forests:
        raise ValueError("nothing to merge")
    floor = forests[0].floor
    if any(abs(f.floor - floor) > 1e-12 for f in forests):
        raise ValueError("forests have different floors")
    n = max(f.n for f in forests) if n is None else n
    hist = np.sum([f.hist for f in forests], axis=0)
    return SimilarityForest.from_edges(
        n, np.concatenate([f.src for f in forests]), np.concatenate([f.dst for f in forests]),
        np.concatenate([f.weight for f in forests]), floor, hist)
