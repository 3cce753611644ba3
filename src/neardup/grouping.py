"""Grouping: the similarity forest cut at a threshold -> groups and their masters, in one of three modes.

- ``components`` (the seed's rule): the connected components of "similarity >= t", transitive:
  A~B and B~C group A, B and C even when A and C look nothing alike (chains).
- ``bounded``: the same components, each split at its weakest link (the lowest edge of the
  maximum spanning forest, i.e. a cut of the single-linkage tree) until every member of every
  group is within ``bound`` of its group's master. A group is therefore always a component at
  some threshold >= t, and a chain (fixed-camera frames drifting into a hand entering the view,
  look-alike photos of one place) stops where a member would fall below the bound to its master.
- ``leader``: non-transitive; in master-priority order each kept image takes every remaining
  image within t of itself.

Bounded grouping also reads capture times (``images.captured_at``: EXIF DateTimeOriginal at
scan, or the ``captured_at`` column of imported metadata) when a *time window* is set (the
model's default, or ``--window``/``--window-link``): two images captured more than ``window_s``
seconds apart link only from similarity ``window_link`` on (a fixed camera's frames seconds
apart with someone new in view, photos of one place taken at other moments), while images
captured within the window -- and any pair where an image has no capture time -- link from
the threshold as before. The groups are then cut from the maximum spanning forest of those
links (:func:`time_link_forest`), exactly as without times.

Masters are the best-ranked member of each group (``rank``: lower is better). Every mode returns
each node's group label, its master node, its similarity to that master, and the label of its
transitive component at t, so a caller can say whether a group was split out of a larger one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import InputError
from .jit import nb
from .policy import select_masters
from .similarity.forest import SimilarityForest, _find, ceil_f32

MODES = ("components", "bounded", "leader")


@dataclass
class Grouping:
    """Groups of one cut: per node its group label, master node, similarity to the master, component."""

    labels: np.ndarray      # group label per node (a node index; equal labels = one group)
    master: np.ndarray      # master node per node
    sim: np.ndarray         # similarity of each node to its master (1.0 for masters), float32
    component: np.ndarray   # transitive component label per node at the threshold
    mode: str
    threshold: float
    bound: float | None = None
    window_s: float | None = None      # capture-time window (bounded only; None: not used)
    window_link: float | None = None   # similarity from which images captured further apart link
    links: SimilarityForest | None = None  # the forest the groups were cut from (time-aware links)

    def split_groups(self) -> np.ndarray:
        """Per node: True when its group is a proper part of its transitive component (the chain was cut)."""
        n = len(self.labels)
        gsize = np.bincount(self.labels, minlength=n)[self.labels]
        csize = np.bincount(self.component, minlength=n)[self.component]
        return gsize < csize


def check_bound(bound: float) -> float:
    """A bound is a cosine similarity in (0, 1]."""
    b = float(bound)
    if np.isnan(b) or not (0.0 < b <= 1.0):
        raise InputError(f"bound {bound} is outside (0, 1]")
    return b


def default_grouping(model: str, mode: str | None = None, bound: float | None = None) -> tuple[str, float | None]:
    """The mode and bound a run on ``model`` uses: the given ones, else the model's calibrated defaults.

    A registered model carries ``default_mode`` / ``default_bound`` (docs/models.md says how they
    were measured); imported vectors of an unknown model default to ``components``. Mode
    ``bounded`` without a bound, on a model that has none, is refused with one line.
    """
    from .embed import registered_grouping

    dm, db = registered_grouping(model)
    mode = mode or dm
    if mode not in MODES:
        raise InputError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    if mode != "bounded":
        return mode, None
    if bound is None:
        bound = db
    if bound is None:
        raise InputError(f"mode bounded needs --bound: model {model!r} has no default bound")
    return mode, check_bound(bound)


def default_window(model: str, mode: str, window_s: float | None = None,
                   window_link: float | None = None) -> tuple[float | None, float | None]:
    """The capture-time window a run on ``model`` uses: ``(seconds, link similarity)`` or ``(None, None)``.

    Only mode ``bounded`` uses one. Given values win; else the model's measured default
    (``default_window`` in the registry, docs/models.md). ``window_s`` 0 turns it off.
    """
    from .embed import registered_window

    if mode != "bounded":
        if window_s or window_link is not None:
            raise InputError(f"--window applies to mode bounded, not {mode}")
        return None, None
    dw, dl = registered_window(model)
    w = dw if window_s is None else float(window_s)
    link = dl if window_link is None else check_bound(window_link)
    if w is None or w <= 0 or np.isnan(w):
        if window_s is not None and (np.isnan(float(window_s)) or float(window_s) < 0):
            raise InputError(f"window {window_s}: give seconds >= 0 (0 turns the capture-time window off)")
        return None, None
    if link is None:
        raise InputError(f"--window needs --window-link: model {model!r} has no default link similarity")
    return float(w), float(link)


def group_weakest_links(forest: SimilarityForest, threshold: float, labels: np.ndarray) -> dict[int, float]:
    """Per group label: the lowest forest edge (>= threshold) inside the group — its weakest link.

    For components and bounded groups (subtrees of the single-linkage tree) these edges span the
    group, so below that similarity the group would fall apart.
    """
    src, dst, w = forest.edges_at(threshold)
    inside = labels[src] == labels[dst]
    lab, w = labels[src][inside], w[inside]
    if len(lab) == 0:
        return {}
    low = np.full(len(labels), np.inf)
    np.minimum.at(low, lab, w.astype(np.float64))
    keys = np.unique(lab)
    return {int(k): float(low[k]) for k in keys}


def rowwise_dot(X: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``X[a[i]] . X[b[i]]`` for every i, in float32 blocks (memory stays O(block))."""
    out = np.empty(len(a), dtype=np.float32)
    step = 1 << 16
    for s in range(0, len(a), step):
        out[s:s + step] = np.einsum("ij,ij->i", X[a[s:s + step]], X[b[s:s + step]])
    return out


# --------------------------------------------------------------------------------------------
# bounded: top-down cut of the single-linkage tree built from the forest
# --------------------------------------------------------------------------------------------
@nb.njit(cache=True)
def _linkage_tree(n: int, src: np.ndarray, dst: np.ndarray, k: int, rank: np.ndarray):  # pragma: no cover - numba
    """Single-linkage tree of the first k forest edges (heaviest first).

    Node ids: leaves 0..n-1, the merge made by edge e is node n+e. Returns per tree node its two
    children (-1 for leaves), its size, its best-ranked leaf, and a leaf order in which every
    node's leaves are the contiguous range ``order[start[node] : start[node] + size[node]]``.
    """
    m = n + k
    left = np.full(m, -1, np.int64)
    right = np.full(m, -1, np.int64)
    size = np.ones(m, np.int64)
    best = np.empty(m, np.int64)
    parent = np.full(m, -1, np.int64)
    for i in range(n):
        best[i] = i
    uf = np.arange(n, dtype=np.int64)
    top = np.arange(n, dtype=np.int64)  # union-find root -> current tree node of that set
    for e in range(k):
        a = _find(uf, src[e])
        b = _find(uf, dst[e])
        node = n + e
        ta, tb = top[a], top[b]
        left[node], right[node] = ta, tb
        parent[ta] = node
        parent[tb] = node
        size[node] = size[ta] + size[tb]
        ba, bb = best[ta], best[tb]
        if rank[bb] < rank[ba] or (rank[bb] == rank[ba] and bb < ba):
            best[node] = bb
        else:
            best[node] = ba
        if a < b:
            uf[b] = a
            top[a] = node
        else:
            uf[a] = b
            top[b] = node
    start = np.zeros(m, np.int64)
    off = 0
    for v in range(m):
        if parent[v] == -1:
            start[v] = off
            off += size[v]
    for v in range(m - 1, n - 1, -1):  # parents are created after their children
        start[left[v]] = start[v]
        start[right[v]] = start[v] + size[left[v]]
    order = np.empty(n, np.int64)
    for i in range(n):
        order[start[i]] = i
    roots = np.flatnonzero(parent == -1)
    return left, right, size, best, start, order, roots


def bounded_groups(forest: SimilarityForest, vectors: np.ndarray, threshold: float, bound: float,
                   rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Components at ``threshold`` cut at their weakest links until each member is within ``bound`` of its master.

    Returns ``(labels, master)`` per node. Each group is a subtree of the single-linkage tree: the
    largest one, from the top, whose members all have similarity >= ``bound`` to its best-ranked
    member. Cost: one dot product per member of each subtree looked at whose master differs from its
    parent's (a subtree that keeps its parent's master reuses the parent's similarities).
    """
    n = forest.n
    k = forest.n_edges_at(threshold)
    rank = np.asarray(rank, dtype=np.int64)
    left, right, size, best, start, order, roots = _linkage_tree(n, forest.src, forest.dst, k, rank)
    labels = np.arange(n, dtype=np.int64)
    master = np.arange(n, dtype=np.int64)
    b32 = ceil_f32(bound)  # similarities are exact float32 values: s >= bound iff s >= b32
    # (node, its parent's similarities to the parent's master, the parent's leaf-range start): a child
    # with the parent's master reads its similarities from the parent's instead of recomputing them
    stack: list[tuple[int, np.ndarray | None, int]] = [(int(r), None, 0) for r in roots if size[r] >= 2]
    while stack:
        v, psims, pstart = stack.pop()
        st, sz, m = int(start[v]), int(size[v]), int(best[v])
        mem = order[st:st + sz]
        if psims is not None:
            sims = psims[st - pstart:st - pstart + sz]
        elif sz == 2:
            # the one edge is the pair's own similarity
            sims = np.where(mem == m, np.float32(np.inf), forest.weight[v - n]).astype(np.float32)
        else:
            sims = np.asarray(vectors[mem], dtype=np.float32) @ np.asarray(vectors[m], dtype=np.float32)
            sims[mem == m] = np.inf  # the master itself does not count
        if sims.min() >= b32:
            labels[mem] = mem.min()
            master[mem] = m
            continue
        for c in (int(left[v]), int(right[v])):
            if size[c] >= 2:
                stack.append((c, sims if int(best[c]) == m else None, st))
    return labels, master


# --------------------------------------------------------------------------------------------
# capture-time window: the links themselves depend on time
# --------------------------------------------------------------------------------------------
def _block_edges(S: np.ndarray, rows: np.ndarray, cols: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, ...]:
    r, c = np.nonzero(keep)
    return rows[r], cols[c], S[r, c]


class _EdgeSink:
    """Collects candidate edges and keeps only a maximum spanning forest of them (memory O(n + batch))."""

    def __init__(self, n: int, floor: float, limit: int):
        self.n, self.floor, self.limit = n, floor, limit
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.size = 0

    def add(self, src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> None:
        if len(src):
            self.parts.append((src, dst, w))
            self.size += len(src)
            if self.size > self.limit:
                self.parts = [self._msf()]
                self.size = len(self.parts[0][0])

    def _msf(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        f = SimilarityForest.from_edges(self.n, np.concatenate([p[0] for p in self.parts]),
                                        np.concatenate([p[1] for p in self.parts]),
                                        np.concatenate([p[2] for p in self.parts]), self.floor, hist=np.zeros(1, np.int64))
        return f.src, f.dst, f.weight

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._msf()


def time_link_forest(forest: SimilarityForest, vectors: np.ndarray, times: np.ndarray, floor: float,
                     window_s: float, window_link: float, block: int = 256,
                     blocked: np.ndarray | None = None) -> SimilarityForest:
    """Maximum spanning forest of the time-aware links at ``floor``.

    Links: every pair >= ``floor`` whose images were captured at most ``window_s`` seconds apart
    or where either image has no capture time (``times`` NaN), and every pair >= ``window_link``
    whatever its times. The MSF of a union is the MSF of the union of MSFs, so it is built from
    three parts: the similarity forest's own edges >= ``window_link`` (an MSF of those pairs),
    the pairs inside the window (images sorted by time: only neighbours within ``window_s`` are
    compared), and the pairs of each image with no capture time against the rest of its component
    at ``floor`` (none when every image has one; the plain forest when none has). Exact: same float32 dot products of
    canonical vectors as the similarity pass. Cut at any t >= ``floor`` it gives that t's links.

    ``blocked``: pair keys ``min(i, j) * n + max(i, j)`` (int64) left out of the untimed pairs (the
    pairs the geometric check rejected, :func:`verified_link_forest`); with any, the untimed pairs
    are enumerated even when fewer than two images are timed.
    """
    n = forest.n
    floor = max(float(floor), float(forest.floor))
    times = np.asarray(times, dtype=np.float64)
    timed = ~np.isnan(times)
    if window_link <= floor or (timed.sum() < 2 and (blocked is None or not len(blocked))):
        return forest  # no pair is held back: the plain links
    f32 = ceil_f32(floor)
    sink = _EdgeSink(n, floor, limit=max(4 * n, 1 << 20))
    k = forest.n_edges_at(window_link)
    sink.add(forest.src[:k], forest.dst[:k], forest.weight[:k])
    X = vectors
    # pairs inside the window, both images timed: sorted by time, each row against the rows after it within window_s
    idx = np.flatnonzero(timed)
    idx = idx[np.argsort(times[idx], kind="stable")]
    ts = times[idx]
    for a in range(0, len(idx), block):
        b = min(a + block, len(idx))
        hi = int(np.searchsorted(ts, ts[b - 1] + window_s, side="right"))
        R = np.asarray(X[idx[a:b]], dtype=np.float32)
        for c0 in range(a, hi, 1 << 15):
            c1 = min(hi, c0 + (1 << 15))
            S = R @ np.asarray(X[idx[c0:c1]], dtype=np.float32).T
            gi = np.arange(a, b)[:, None]
            gj = np.arange(c0, c1)[None, :]
            keep = (gj > gi) & (S >= f32) & (ts[gj] - ts[gi] <= window_s)
            sink.add(*_block_edges(S, idx[a:b], idx[c0:c1], keep))
    # pairs with an image that has no capture time: its row against the other members of its component at
    # the floor (a pair >= floor never leaves one), so the cost is the untimed images' share of their groups
    untimed = np.flatnonzero(~timed)
    if len(untimed):
        comp = forest.components(floor)
        sizes = np.bincount(comp, minlength=n)
        untimed = untimed[sizes[comp[untimed]] >= 2]
        by_comp = np.argsort(comp, kind="stable")
        comp_sorted = comp[by_comp]
        for c in np.unique(comp[untimed]):
            lo, hi = np.searchsorted(comp_sorted, c, "left"), np.searchsorted(comp_sorted, c, "right")
            members = by_comp[lo:hi]
            rows_c = members[~timed[members]]
            for a in range(0, len(rows_c), block):
                rows = rows_c[a:a + block]
                R = np.asarray(X[rows], dtype=np.float32)
                for c0 in range(0, len(members), 1 << 15):
                    cols = members[c0:c0 + (1 << 15)]
                    S = R @ np.asarray(X[cols], dtype=np.float32).T
                    # an untimed pair once (from the lower index's row), an untimed-timed pair from the untimed row
                    keep = (S >= f32) & (cols[None, :] != rows[:, None]) & (
                        timed[cols][None, :] | (cols[None, :] > rows[:, None]))
                    e_src, e_dst, e_w = _block_edges(S, rows, cols, keep)
                    if blocked is not None and len(blocked) and len(e_src):
                        ok = ~np.isin(np.minimum(e_src, e_dst) * n + np.maximum(e_src, e_dst), blocked)
                        e_src, e_dst, e_w = e_src[ok], e_dst[ok], e_w[ok]
                    sink.add(e_src, e_dst, e_w)
    src, dst, w = sink.edges()
    return SimilarityForest(n, src, dst, w, floor, forest.hist if forest.floor == floor else np.zeros(1, np.int64),
                            {"links": "time window", "window_s": window_s, "window_link": window_link})


def verified_link_forest(forest: SimilarityForest, vectors: np.ndarray, times: np.ndarray, floor: float,
                         window_s: float, window_link: float, reject: Callable[[int, int], bool],
                         max_rounds: int = 64) -> tuple[SimilarityForest, dict[str, int]]:
    """:func:`time_link_forest` where an untimed pair below ``window_link`` links only if ``reject`` does not refuse it.

    A pair whose images carry no capture time (either of them) and whose similarity is in
    [floor, window_link) is what neither time nor similarity can judge; ``reject(i, j)`` (the
    geometric check, :class:`neardup.verify.PairChecker`) is asked about it. Only pairs that
    would be forest edges are asked: build the forest, check its untimed band edges, block the
    rejected ones and build again until every such edge passes (the result is the maximum spanning
    forest of the links less every pair the check would reject). Returns the forest and
    ``{"checked", "rejected", "rounds"}``; after ``max_rounds`` rounds that round's forest is returned as
    it is (the pairs rejected in that round still in it: links kept, never links lost).
    """
    n = forest.n
    times = np.asarray(times, dtype=np.float64)
    untimed = np.isnan(times)
    blocked = np.zeros(0, np.int64)
    asked: set[int] = set()
    rejected = rounds = 0
    link32, floor32 = ceil_f32(window_link), ceil_f32(max(float(floor), float(forest.floor)))
    while True:
        rounds += 1
        # nothing blocked yet: the plain time-aware links (no pair enumeration when no image is timed)
        lf = time_link_forest(forest, vectors, times, floor, window_s, window_link, blocked=blocked)
        band = (lf.weight >= floor32) & (lf.weight < link32) & (untimed[lf.src] | untimed[lf.dst])
        keys = np.minimum(lf.src[band], lf.dst[band]) * n + np.maximum(lf.src[band], lf.dst[band])
        new = [int(k) for k in keys if int(k) not in asked]
        bad = []
        for k in new:
            asked.add(k)
            if reject(k // n, k % n):
                bad.append(k)
        rejected += len(bad)
        if not bad or rounds >= max_rounds:
            return lf, {"checked": len(asked), "rejected": rejected, "rounds": rounds}
        blocked = np.union1d(blocked, np.asarray(bad, dtype=np.int64))


# --------------------------------------------------------------------------------------------
# leader: non-transitive
# --------------------------------------------------------------------------------------------
def leader_groups(X: np.ndarray, labels: np.ndarray, rank: np.ndarray, t: float) -> np.ndarray:
    """Non-transitive grouping: in priority order, each kept image takes every remaining image within t.

    Leader groups never cross components of the transitive graph, so each component is done alone.
    Returns the leader (master) node of every node.
    """
    n = len(labels)
    master = np.arange(n, dtype=np.int64)
    order = np.lexsort((rank, labels))
    lab_sorted = labels[order]
    starts = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    t32 = ceil_f32(t)  # similarities are exact float32 values: s >= t iff s >= t32
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        members = order[s:e]  # sorted by rank within the component
        Xc = np.asarray(X[np.sort(members)], dtype=np.float32)
        pos = np.searchsorted(np.sort(members), members)
        Xc = Xc[pos]
        remaining = np.ones(len(members), dtype=bool)
        k = 0
        while True:
            nxt = np.flatnonzero(remaining[k:])
            if len(nxt) == 0:
                break
            k += int(nxt[0])
            remaining[k] = False
            rest = np.flatnonzero(remaining[k + 1:]) + k + 1
            if len(rest):
                sims = Xc[rest] @ Xc[k]
                took = rest[sims >= t32]
                remaining[took] = False
                master[members[took]] = members[k]
            k += 1
    return master


def group_nodes(forest: SimilarityForest, vectors: np.ndarray, threshold: float, rank: np.ndarray,
                mode: str = "components", bound: float | None = None, *, times: np.ndarray | None = None,
                window_s: float | None = None, window_link: float | None = None,
                links: SimilarityForest | None = None) -> Grouping:
    """Group the forest's nodes at ``threshold`` in ``mode`` (``bound`` only for ``bounded``).

    With ``times`` (capture times in seconds, NaN where unknown), ``window_s`` and
    ``window_link``, bounded groups are cut from the time-aware links (:func:`time_link_forest`;
    pass ``links`` to reuse one built at a lower floor).
    """
    if mode not in MODES:
        raise InputError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    component = forest.components(threshold)
    used = forest
    if mode == "bounded":
        if bound is None:
            raise InputError("mode 'bounded' needs a bound (e.g. --bound 0.85)")
        b = check_bound(bound)
        if window_s is not None and window_link is not None:
            if links is None:
                links = time_link_forest(forest, vectors, times if times is not None else np.full(forest.n, np.nan),
                                         threshold, window_s, window_link)
            used = links
        else:
            window_s = window_link = None
        labels, master = bounded_groups(used, vectors, threshold, b, rank)
    elif mode == "leader":
        master = leader_groups(vectors, component, rank, threshold)
        labels, b = master, None
    else:
        labels, master, b = component, select_masters(component, rank), None
    sims = rowwise_dot(vectors, np.arange(len(master)), master)
    sims[master == np.arange(len(master))] = 1.0
    return Grouping(labels, master, sims, component, mode, float(threshold), b,
                    window_s if mode == "bounded" else None, window_link if mode == "bounded" else None, used)
