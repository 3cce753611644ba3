"""Chains bounded (issue 11): the capture-time window, sweep counts under a run's grouping, `central`
over the groups formed -- each against an independent brute-force reference (dense pair matrix,
BFS components, Prim's spanning tree over the allowed links only)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import same_partition

from neardup import Catalog
from neardup.dedup import dedup, export_table
from neardup.grouping import group_nodes
from neardup.ingest import import_embeddings
from neardup.similarity.forest import SimilarityForest
from neardup.sweep import sweep

SCALE = 2.0 ** -16  # integer vectors * 2^-8: every dot product is an integer * 2^-16, exact in float32 and float64


# ------------------------------------------------------------------------------------------------
# reference: links allowed by the time rule, components by BFS, splits at the weakest MST edge (Prim)
# ------------------------------------------------------------------------------------------------
def ref_links(S: np.ndarray, times: np.ndarray, t: float, window: float | None, link: float | None) -> np.ndarray:
    """Boolean matrix: i and j linked at threshold t under the capture-time rule."""
    L = S >= t
    if window is not None:
        both = ~np.isnan(times)[:, None] & ~np.isnan(times)[None, :]
        far = both & (np.abs(times[:, None] - times[None, :]) > window)
        L &= ~far | (S >= link)
    np.fill_diagonal(L, False)
    return L


def ref_components(L: np.ndarray) -> list[list[int]]:
    n = len(L)
    seen = np.zeros(n, bool)
    out = []
    for s in range(n):
        if seen[s]:
            continue
        comp, todo = [], [s]
        seen[s] = True
        while todo:
            v = todo.pop()
            comp.append(v)
            for w in np.flatnonzero(L[v] & ~seen):
                seen[w] = True
                todo.append(int(w))
        out.append(sorted(comp))
    return out


def ref_split(S: np.ndarray, L: np.ndarray, members: list[int], rank: np.ndarray, bound: float) -> list[list[int]]:
    """Cut ``members`` (connected in L) at the weakest edge of their maximum spanning tree over L's links
    until every part is within ``bound`` of its best-ranked member."""
    master = min(members, key=lambda i: rank[i])
    if len(members) == 1 or all(S[master, j] >= bound for j in members if j != master):
        return [sorted(members)]
    inside, rest, edges = [members[0]], set(members[1:]), []
    while rest:
        a, b = max(((x, y) for x in inside for y in rest if L[x, y]), key=lambda e: S[e[0], e[1]])
        edges.append((S[a, b], a, b))
        inside.append(b)
        rest.remove(b)
    edges.sort()
    adj: dict[int, list[int]] = {v: [] for v in members}
    for _, a, b in edges[1:]:
        adj[a].append(b)
        adj[b].append(a)
    part, todo = {edges[0][1]}, [edges[0][1]]
    while todo:
        v = todo.pop()
        for w in adj[v]:
            if w not in part:
                part.add(w)
                todo.append(w)
    other = [v for v in members if v not in part]
    return ref_split(S, L, sorted(part), rank, bound) + ref_split(S, L, other, rank, bound)


def ref_grouping(S, times, t, bound, rank, window=None, link=None) -> np.ndarray:
    L = ref_links(S, times, t, window, link)
    labels = np.empty(len(S), np.int64)
    k = 0
    for comp in ref_components(L):
        for part in ref_split(S, L, comp, rank, bound):
            labels[part] = k
            k += 1
    return labels


def ref_central_rank(S: np.ndarray, labels: np.ndarray, ids: list[str]) -> np.ndarray:
    """Rank by mean similarity to the rest of one's group (0.002 steps, higher first; singletons last), then id."""
    cen = []
    for i in range(len(S)):
        mem = np.flatnonzero(labels == labels[i])
        cen.append(np.inf if len(mem) < 2 else -np.floor(((S[i, mem].sum() - S[i, i]) / (len(mem) - 1)) / 0.002))
    order = sorted(range(len(S)), key=lambda i: (cen[i], ids[i]))
    rank = np.empty(len(S), np.int64)
    rank[order] = np.arange(len(S))
    return rank


def ref_bounded_central(S: np.ndarray, ids: list[str], t: float, bound: float, passes: int = 4) -> np.ndarray:
    """Bounded groups whose masters are ranked by `central` over the groups formed: first over the
    transitive components, then over the groups that ranking gave, until they no longer change."""
    labels = np.empty(len(S), np.int64)
    for k, comp in enumerate(ref_components(ref_links(S, np.full(len(S), np.nan), t, None, None))):
        labels[comp] = k
    for _ in range(passes):
        new = ref_grouping(S, np.full(len(S), np.nan), t, bound, ref_central_rank(S, labels, ids))
        if same_partition(new, labels):
            break
        labels = new
    return new


def full_forest(V: np.ndarray, floor: float) -> SimilarityForest:
    i, j = np.triu_indices(len(V), 1)
    w = np.einsum("ij,ij->i", V[i].astype(np.float64), V[j].astype(np.float64)).astype(np.float32)
    return SimilarityForest.from_edges(len(V), i, j, w, floor)


def int_vectors(seed: int, n: int, d: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(-100, 101, size=(max(1, n // 4), d))
    X = base[rng.integers(0, len(base), n)] + rng.integers(-25, 26, size=(n, d))
    return np.clip(X, -100, 100).astype(np.float32) / 256.0


# ------------------------------------------------------------------------------------------------
# constructed chains with capture times
# ------------------------------------------------------------------------------------------------
def chain_vectors() -> np.ndarray:
    """A at 0°, B at 20°, C at 45° on a circle: A~B 0.940, B~C 0.906, A~C 0.707 (A~B~C, A not ~ C)."""
    ang = np.radians([0.0, 20.0, 45.0])
    return np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)


@pytest.mark.parametrize("c_time,expect_whole", [(0.9, True), (10.0, False), (np.nan, True)])
def test_time_window_on_a_constructed_chain(c_time, expect_whole):
    """A (t 0 s) ~ B (t 0.5 s) ~ C. Components: one group. Bounded 0.7 (A~C 0.707 passes): one group.
    With a 1 s window linking across it only from 0.95: C captured within 1 s of B stays linked (one
    group); C captured 10 s later is cut off (B~C 0.906 < 0.95); C with no capture time links as
    without a window (one group)."""
    V = chain_vectors()
    rank = np.array([0, 1, 2])
    times = np.array([0.0, 0.5, c_time])
    f = full_forest(V, 0.5)
    comp = group_nodes(f, V, 0.9, rank, "components")
    assert len(set(comp.labels.tolist())) == 1
    plain = group_nodes(f, V, 0.9, rank, "bounded", 0.7)
    assert len(set(plain.labels.tolist())) == 1
    timed = group_nodes(f, V, 0.9, rank, "bounded", 0.7, times=times, window_s=1.0, window_link=0.95)
    assert timed.window_s == 1.0 and timed.window_link == 0.95
    if expect_whole:
        assert len(set(timed.labels.tolist())) == 1 and not timed.split_groups().any()
    else:
        assert timed.labels[0] == timed.labels[1] != timed.labels[2]
        assert timed.master.tolist() == [0, 0, 2]
        assert timed.split_groups().all()                       # said: cut out of a chain of 3
    # a link similarity the far pair meets (0.906 >= 0.90) keeps the chain whatever the times
    lenient = group_nodes(f, V, 0.9, rank, "bounded", 0.7, times=times, window_s=1.0, window_link=0.90)
    assert len(set(lenient.labels.tolist())) == 1


def test_far_apart_frames_chain_through_near_ones():
    """Frames 0.5 s apart chain (each linked to the next within the window) even though the ends
    are 3 s apart and below the window link; a frame as alike but 8 s later does not join."""
    ang = np.radians([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    V = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)   # neighbours 0.985, ends 0.643
    times = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 10.0])
    rank = np.arange(6)
    f = full_forest(V, 0.5)
    g = group_nodes(f, V, 0.95, rank, "bounded", 0.6, times=times, window_s=1.0, window_link=0.99)
    assert same_partition(g.labels, np.array([0, 0, 0, 0, 0, 1]))


def window_case(seed: int, n: int, t_int: int, gap: int, link_gap: int, untimed: float, salt: int):
    """A capture-time-window case from hypothesis' integers: integer vectors V, their exact similarities S,
    threshold t, bound and link similarity half a grid step off any dot product, capture times in tenths of a
    second (some pairs exactly at the window; a share ``untimed`` without one) and the rng that drew them
    (seeded ``seed + salt``). Rejects cases whose pairs >= t tie (the weakest link must be unique)."""
    V = int_vectors(seed, n)
    S = V.astype(np.float64) @ V.T.astype(np.float64)
    t = (t_int + 0.5) * SCALE
    bound = min(1.0, max(SCALE, (t_int + gap + 0.5) * SCALE))
    link = min(1.0, (t_int + link_gap + 0.5) * SCALE)
    iu = np.triu_indices(n, 1)
    above = S[iu][S[iu] >= t]
    assume(len(np.unique(above)) == len(above))   # distinct weights: the weakest link is unique
    rng = np.random.default_rng(seed + salt)
    times = np.round(rng.uniform(0, 6, n), 1)
    times[rng.random(n) < untimed] = np.nan
    return V, S, t, bound, link, times, rng


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(seed=st.integers(0, 10_000), n=st.integers(2, 14), t_int=st.integers(2000, 30000),
       gap=st.integers(-15000, 15000), link_gap=st.integers(0, 20000), window=st.sampled_from([0.5, 1.0, 3.0]),
       untimed=st.floats(0.0, 1.0))
def test_time_window_equals_bruteforce_reference(seed, n, t_int, gap, link_gap, window, untimed):
    V, S, t, bound, link, times, rng = window_case(seed, n, t_int, gap, link_gap, untimed, salt=7)
    rank = rng.permutation(n)
    f = full_forest(V, min(t, 0.01))
    got = group_nodes(f, V, t, rank, "bounded", bound, times=times, window_s=window, window_link=link)
    want = ref_grouping(S, times, t, bound, rank, window, link)
    assert same_partition(got.labels, want)
    for g in np.unique(want):
        mem = np.flatnonzero(want == g)
        assert set(got.master[mem].tolist()) == {int(mem[np.argmin(rank[mem])])}
    # the same links built once at a lower floor and cut at t give the same groups (what sweep does)
    from neardup.grouping import time_link_forest

    low = time_link_forest(f, V, times, min(t, 0.01), window, link)
    again = group_nodes(f, V, t, rank, "bounded", bound, times=times, window_s=window, window_link=link, links=low)
    assert same_partition(again.labels, want)


# ------------------------------------------------------------------------------------------------
# through the catalog: capture times from imported metadata; sweep = what dedup does
# ------------------------------------------------------------------------------------------------
def _frames(seed: int = 3) -> tuple[np.ndarray, list[str], list[dt.datetime | None], np.ndarray]:
    """Three bursts of 6 frames (0.25 s apart; a view turning 3° a frame) 20 s apart, their views 15° off
    a common axis (frames of different bursts ~0.9 alike), and six unrelated images (one without capture time)."""
    rng = np.random.default_rng(seed)
    d = 10
    ids, vecs, times, scores = [], [], [], []
    start = dt.datetime(2024, 5, 1, 12, 0, 0)
    th = np.radians(15.0)
    for b in range(3):
        for k in range(6):
            phi = np.radians(3.0 * k)
            c = np.zeros(d)
            c[0], c[1 + b] = np.cos(th), np.sin(th)
            v = np.cos(phi) * c
            v[4 + b] += np.sin(phi)
            vecs.append(v + 0.01 * rng.normal(size=d))
            ids.append(f"b{b}f{k}")
            times.append(start + dt.timedelta(seconds=20 * b + 0.25 * k))
            scores.append(float(rng.integers(0, 5)))
    for k in range(6):
        vecs.append(rng.normal(size=d))
        ids.append(f"x{k}")
        times.append(None if k == 0 else start + dt.timedelta(hours=k))
        scores.append(float(rng.integers(0, 5)))
    return np.asarray(vecs, dtype=np.float32), ids, times, np.asarray(scores)


def _stored(cat: Catalog, ids: list[str]) -> np.ndarray:
    from reference import canonical_f64

    es = cat.load_embeddings()
    pos = {k: i for i, k in enumerate(es.ids.tolist())}
    return canonical_f64(np.asarray(es.vectors))[[pos[i] for i in ids]]


def _load(db, with_times: bool = True):
    V, ids, times, scores = _frames()
    meta = {"id": ids, "score": pa.array(scores)}
    if with_times:
        meta["captured_at"] = pa.array(times, pa.timestamp("us"))
    with Catalog(db) as cat:
        import_embeddings(cat, V, ids, meta=pa.table(meta))
        X = _stored(cat, ids)
    secs = np.array([np.nan if x is None else (x - dt.datetime(1970, 1, 1)).total_seconds() for x in times])
    return ids, X, secs, scores


def _ref_counts(labels: np.ndarray) -> dict[str, int]:
    n = len(labels)
    sizes = np.bincount(labels, minlength=n)
    groups = int((sizes >= 2).sum())
    return dict(groups=groups, suppressed=n - len(np.unique(labels)), retained=len(np.unique(labels)),
                largest_group=int(sizes.max()))


def _score_rank(ids: list[str], scores: np.ndarray) -> np.ndarray:
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids))
    return rank


@pytest.mark.parametrize("window", [None, 2.0])
def test_sweep_counts_what_dedup_does_against_reference(db, window):
    """Each sweep row (bounded, with or without a capture-time window) equals the brute-force grouping's
    counts at that threshold and the summary of a dedup at it."""
    ids, X, secs, scores = _load(db)
    S = X @ X.T
    rank = _score_rank(ids, scores)
    ts = [0.9, 0.8, 0.7, 0.6, 0.5]
    kw = dict(mode="bounded", bound=0.75, prefer="score", window=window or 0, window_link=0.95 if window else None)
    with Catalog(db) as cat:
        rows = sweep(cat, ts, **kw)
        for r, t in zip(rows, ts):
            want = _ref_counts(ref_grouping(S, secs, t, 0.75, rank, window, 0.95 if window else None))
            assert {k: r[k] for k in want} == want, t
            s = dedup(cat, t, dry_run=True, **kw).summary
            assert {k: s[k] for k in want} == want
            assert r["pairs"] == int((S[np.triu_indices(len(S), 1)] >= t).sum())
        comp = sweep(cat, ts, mode="components", prefer="score")
    # the components sweep is the transitive one: never fewer retained than bounded splits leave
    assert all(c["retained"] <= b["retained"] for c, b in zip(comp, rows))


def test_sweep_defaults_to_the_model_grouping_and_says_so(db, capsys):
    """The CLI sweep counts under the grouping dedup would use and names it in its header."""
    from test_cli_core import run

    ids, X, secs, scores = _load(db)
    code, out, err = run(capsys, "sweep", "--thresholds", "0.8,0.6", "--db", str(db))
    assert code == 0, err
    assert "grouping components" in out                      # imported vectors of an unknown model: components
    code, out, err = run(capsys, "sweep", "--thresholds", "0.8,0.6", "--json", "--db", str(db))
    rows = json.loads(out)
    S = X @ X.T
    for row in rows:
        L = ref_links(S, secs, row["threshold"], None, None)
        comps = ref_components(L)
        assert row["retained"] == len(comps)


def test_window_from_imported_captured_at_through_dedup_and_export(db, tmp_path):
    """captured_at from import metadata drives the window; export's distinct group ids = the summary's groups."""
    ids, X, secs, scores = _load(db)
    S = X @ X.T
    rank = _score_rank(ids, scores)
    with Catalog(db) as cat:
        res = dedup(cat, 0.6, mode="bounded", bound=0.7, window=2.0, window_link=0.97, prefer="score")
        table = export_table(cat, res.run_id).to_pylist()
        runs = cat.runs()
    want = ref_grouping(S, secs, 0.6, 0.7, rank, 2.0, 0.97)
    got = {r["image_id"]: r["group_id"] for r in res.members.to_pylist()}
    assert same_partition(np.array([got[i] for i in ids]), want)
    assert not same_partition(want, ref_grouping(S, secs, 0.6, 0.7, rank))   # the window changed the groups here
    s = res.summary
    assert s["window_s"] == 2.0 and s["window_link"] == 0.97 and "2 s apart" in s["grouping"]
    assert len({r["group_id"] for r in table if r["group_id"] is not None}) == s["groups"] == _ref_counts(want)["groups"]
    assert sum(r["is_suppressed"] for r in table) == s["suppressed"]
    assert runs[-1]["summary"]["window_s"] == 2.0
    # without times the same run is the plain bounded rule
    with Catalog(db) as cat:
        off = dedup(cat, 0.6, mode="bounded", bound=0.7, window=0, prefer="score", dry_run=True)
    got = {r["image_id"]: r["group_id"] for r in off.members.to_pylist()}
    assert same_partition(np.array([got[i] for i in ids]), ref_grouping(S, secs, 0.6, 0.7, rank))
    assert off.summary["window_s"] is None


def test_central_is_computed_over_the_groups_formed(db):
    """With `central` in the policy, each group's master is the member most like the rest of *its own*
    group (the bounded group formed), not of the transitive component it was cut from."""
    ids, X, secs, scores = _load(db, with_times=False)
    with Catalog(db) as cat:
        res = dedup(cat, 0.5, mode="bounded", bound=0.8, prefer="central,id", dry_run=True)
    assert res.summary["central_passes"] >= 1
    m = res.members.to_pylist()
    pos = {k: i for i, k in enumerate(ids)}
    groups: dict[int, list[int]] = {}
    for r in m:
        groups.setdefault(r["group_id"], []).append(pos[r["image_id"]])
    S = X @ X.T
    checked = 0
    for gid, mem in groups.items():
        if len(mem) < 2:
            continue
        master = {r["master_id"] for r in m if r["group_id"] == gid}
        assert len(master) == 1
        central = {i: (S[i, mem].sum() - S[i, i]) / (len(mem) - 1) for i in mem}
        best = max(central.values())
        # the bucketed key (0.002 steps) ties within a bucket, then id decides
        top = sorted(ids[i] for i in mem if np.floor(central[i] / 0.002) == np.floor(best / 0.002))
        if res.summary["central_settled"]:
            assert master == {top[0]}, (gid, master, top)
            checked += 1
    assert checked >= 1
