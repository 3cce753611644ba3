"""Incremental passes equal a full recompute, against an independent brute-force reference.

Vectors are canonical (rounded to multiples of 2**-11), so every float32 dot product of them is
exact; the reference computes all pairs in float64 (exact too) and components with scipy, and
bins the histogram by the documented rule. Sequences of adds, changes and removals (a vanished
file, a "not a duplicate" decision) are drawn by hypothesis; after each step the cached forest
must answer exactly what the reference says, and must have been updated, not recomputed.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neardup import Catalog
from functools import partial

from neardup.dedup import dedup as _dedup
from neardup.dedup import load_scope, similarity_forest
from neardup.policy import SEED_POLICY

# the references here rank by the seed's rule (score, brightness, id): run dedup with that policy
dedup = partial(_dedup, prefer=SEED_POLICY)
from neardup.similarity.exact import exact_forest
from neardup.similarity.forest import hist_bins
from neardup.similarity.incremental import RowSource, extend_forest, remove_nodes

FLOOR = 0.95
THRESHOLDS = (0.95, 0.97, 0.98, 0.99)


def canon(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float64)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    return (np.rint(X * 2048) / 2048).astype(np.float32)


def vectors(rng: np.random.Generator, n: int, d: int = 24, centres: np.ndarray | None = None) -> np.ndarray:
    """Tight clusters around a few centres: many pairs in 0.95..1, chains, and singletons."""
    if centres is None:
        centres = rng.standard_normal((6, d))
    c = centres[rng.integers(0, len(centres), n)]
    return canon(c + rng.uniform(0.05, 0.3) * rng.standard_normal((n, d)))


def ref(X: np.ndarray, t: float) -> tuple[np.ndarray, int]:
    """Components of 'exact dot >= t' and the number of such pairs (float64, no renormalising)."""
    X = np.asarray(X, np.float64)
    S = X @ X.T
    i, j = np.nonzero(np.triu(S >= t, 1))
    g = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(X), len(X)))
    return connected_components(g, directed=False)[1], len(i)


def ref_hist(X: np.ndarray, floor: float) -> np.ndarray:
    """Pairs >= floor binned as documented: bin b = [(F + b)/1e5, (F + b + 1)/1e5) for a floor F/1e5,
    similarities above 1 counted as 1, the last bin open above."""
    X = np.asarray(X, np.float64)
    s = (X @ X.T)[np.triu_indices(len(X), 1)]
    s = np.minimum(s[s >= floor], 1.0)
    F = int(round(floor * 1e5))
    nbins = (100000 - F) + 1
    lower = (F + np.arange(nbins)) / 1e5
    b = np.searchsorted(lower, s, side="right") - 1
    return np.bincount(b, minlength=nbins)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


def check(forest, X: np.ndarray) -> None:
    assert forest.n == len(X)
    want = ref_hist(X, forest.floor)
    assert np.array_equal(forest.hist[:len(want)], want) and not forest.hist[len(want):].any()
    for t in (t for t in THRESHOLDS if t >= forest.floor):
        labels, pairs = ref(X, t)
        assert same_partition(forest.components(t), labels), t
        assert forest.pair_count(t) == pairs, t


# -- the forest updates alone -----------------------------------------------------------------
@settings(max_examples=int(os.environ.get("NEARDUP_EXAMPLES", 25)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), n0=st.integers(0, 120), n_add=st.integers(0, 60), frac_rm=st.floats(0, 0.6),
       block=st.sampled_from([7, 32, 2048]))
def test_remove_then_extend_equals_brute_force(seed, n0, n_add, frac_rm, block):
    rng = np.random.default_rng(seed)
    X0 = vectors(rng, n0)
    f0 = exact_forest(X0, FLOOR) if n0 else None
    removed = rng.random(n0) < frac_rm
    edges = (f0.src, f0.dst, f0.weight) if n0 else (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),)
    hist = f0.hist.copy() if n0 else np.zeros(hist_bins(FLOOR), np.int64)
    edges, lost, _ = remove_nodes(RowSource(X0), edges, FLOOR, removed, batch=block, block_rows=block, col_chunk=block)
    assert not (removed[edges[0]].any() or removed[edges[1]].any())
    hist -= lost
    keep = np.flatnonzero(~removed)
    renum = np.full(n0, -1)
    renum[keep] = np.arange(len(keep))
    X = np.concatenate([X0[keep], vectors(rng, n_add)])
    seed_edges = (renum[edges[0]], renum[edges[1]], edges[2])
    (s, d, w), added = extend_forest(RowSource(X), len(keep), seed_edges, FLOOR, block_rows=block, col_chunk=block)
    from neardup.similarity.forest import SimilarityForest

    check(SimilarityForest(len(X), s, d, w, FLOOR, hist + added), X)


# -- the catalog: sequences of adds, changes and removals ---------------------------------------
def _meta(ids, rng):
    return pa.table({"id": pa.array(list(ids), pa.string()),
                     "score": pa.array(np.round(rng.uniform(0, 5, len(ids)), 1)),
                     "brightness": pa.array(rng.uniform(0.1, 0.9, len(ids)))})


def _reference_run(cat: Catalog, t: float) -> tuple[dict[str, str], int]:
    """master per image and pairs >= t, from the stored vectors and metadata alone (brute force)."""
    es = cat.load_embeddings()
    gone = {r[0] for r in cat.con.execute(
        "SELECT id FROM images WHERE status IN ('missing', 'unreadable')").fetchall()} \
        if "status" in cat.image_columns() else set()
    gone |= {r[0] for r in cat.con.execute("SELECT image_id FROM overrides WHERE kind = 'not_duplicate'").fetchall()}
    keep = np.array([i not in gone for i in es.ids.tolist()], bool)
    ids = es.ids[keep]
    X = np.asarray(es.vectors)[keep]
    labels, pairs = ref(X, t)
    meta = {r["id"]: r for r in cat.images(["id", "score", "brightness"]).to_pylist()}
    best: dict[int, tuple] = {}
    for lab, i in zip(labels.tolist(), ids.tolist()):
        key = (-meta[i]["score"], -meta[i]["brightness"], i)
        if lab not in best or key < best[lab]:
            best[lab] = key
    return {i: best[lab][2] for lab, i in zip(labels.tolist(), ids.tolist())}, pairs


ops = st.lists(st.tuples(st.sampled_from(["add", "change", "vanish", "not_dup", "return"]),
                         st.integers(1, 25)), min_size=1, max_size=5)


@settings(max_examples=int(os.environ.get("NEARDUP_EXAMPLES", 12)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), steps=ops)
def test_dedup_after_adds_changes_removals_equals_reference(tmp_path_factory, seed, steps):
    rng = np.random.default_rng(seed)
    db = tmp_path_factory.mktemp("inc") / "cat.duckdb"
    centres = rng.standard_normal((6, 24))
    next_id = 0

    def new_ids(k):
        nonlocal next_id
        out = [f"i{next_id + j:05d}" for j in range(k)]
        next_id += k
        return out

    with Catalog(db) as cat:
        ids = new_ids(60)
        cat.put_embeddings("m", ids, vectors(rng, 60, centres=centres), images=_meta(ids, rng))
        assert dedup(cat, 0.98, dry_run=True, floor=FLOOR).forest.meta["update"]["mode"] == "full"
        in_scope = set(ids)
        for op, k in steps:
            all_ids = cat.load_embeddings().ids.tolist()
            pick = sorted(rng.choice(all_ids, min(k, len(all_ids)), replace=False).tolist())
            if op == "add":
                ids = new_ids(k)
                cat.put_embeddings("m", ids, vectors(rng, k, centres=centres), images=_meta(ids, rng))
            elif op == "change":
                cat.put_embeddings("m", pick, vectors(rng, len(pick), centres=centres))
            elif op in ("vanish", "return"):
                status = "missing" if op == "vanish" else "ok"
                cat.upsert_images(pa.table({"id": pick, "status": [status] * len(pick)}))
            else:
                for i in pick[:3]:
                    cat.add_override(i, "not_duplicate")
            t = float(rng.choice(THRESHOLDS))
            res = dedup(cat, t, floor=FLOOR)  # applied: decisions on changed images are set aside in the table too
            upd = res.forest.meta["update"]
            assert upd["mode"] in ("incremental", "cached"), upd
            want_master, pairs = _reference_run(cat, t)
            got = {r["image_id"]: r["master_id"] for r in res.members.to_pylist() if r["image_id"] in want_master}
            assert got == want_master
            assert res.summary["pairs"] == pairs
            if op == "change":  # exactly the changed images that were in the last pass and still are
                assert set(upd["changed_ids"]) == set(pick) & in_scope & set(want_master)
            in_scope = set(want_master)


def test_without_the_old_vectors_it_recomputes(db):
    rng = np.random.default_rng(3)
    with Catalog(db) as cat:
        ids = [f"a{i}" for i in range(80)]
        cat.put_embeddings("m", ids, vectors(rng, 80), images=_meta(ids, rng))
        dedup(cat, 0.98, dry_run=True)
        for p in (cat.sidecar / "forests").glob("*.vectors.npy"):
            p.unlink()  # as on a file system without hard links
        cat.put_embeddings("m", ids[:5], vectors(rng, 5))
        res = dedup(cat, 0.98, dry_run=True)
        assert res.forest.meta["update"]["mode"] == "full"
        check(res.forest, np.asarray(cat.load_embeddings().vectors))
        # pure additions need no old vectors
        for p in (cat.sidecar / "forests").glob("*.vectors.npy"):
            p.unlink()
        more = [f"b{i}" for i in range(30)]
        cat.put_embeddings("m", more, vectors(rng, 30), images=_meta(more, rng))
        res = dedup(cat, 0.98, dry_run=True)
        assert res.forest.meta["update"]["mode"] == "incremental" and res.forest.meta["update"]["added"] == 30
        check(res.forest, np.asarray(cat.load_embeddings().vectors))
        # the cache answers at once when nothing changed, and a full pass agrees with it
        assert dedup(cat, 0.98, dry_run=True).forest.meta["update"]["mode"] == "cached"
        full = similarity_forest(cat, 0.98, scope=load_scope(cat), use_cache=False)
        assert np.array_equal(full.hist, res.forest.hist)


def test_masters_change_only_for_a_higher_ranked_newcomer(db):
    """masters_changed counts the last run's masters that lost their place, by brute force; each lost
    it to a member ranked higher by the policy (score desc, brightness desc, id asc)."""
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((6, 24))
    with Catalog(db) as cat:
        ids = [f"a{i:03d}" for i in range(120)]
        cat.put_embeddings("m", ids, vectors(rng, 120, centres=centres), images=_meta(ids, rng))
        first = dedup(cat, 0.97)
        before = {r["image_id"]: r["master_id"] for r in first.members.to_pylist()}
        more = [f"b{i:03d}" for i in range(30)]
        cat.put_embeddings("m", more, vectors(rng, 30, centres=centres), images=_meta(more, rng))
        second = dedup(cat, 0.97)
        assert second.summary["pass"]["mode"] == "incremental" and second.summary["compared_with_run"] == first.run_id
        want, _ = _reference_run(cat, 0.97)
        got = {r["image_id"]: r["master_id"] for r in second.members.to_pylist()}
        assert got == want
        old_masters = {m for m in before.values()}
        lost = {m for m in old_masters if want[m] != m}
        assert lost and second.summary["masters_changed"] == len(lost)
        meta = {r["id"]: r for r in cat.images(["id", "score", "brightness"]).to_pylist()}
        key = lambda i: (-meta[i]["score"], -meta[i]["brightness"], i)  # noqa: E731
        for m in lost:
            assert key(want[m]) < key(m)
        # nothing new: nothing recomputed, no master changes
        third = dedup(cat, 0.97)
        assert third.summary["pass"]["mode"] == "cached" and third.summary["masters_changed"] == 0


def test_decisions_survive_except_on_changed_or_vanished_images(db):
    """A reviewer decision stands until its own image changes (new vector) or vanishes; then exactly
    that image's decisions move to overrides_invalidated, with the reason; every other decision stays."""
    rng = np.random.default_rng(21)
    centres = rng.standard_normal((4, 24))
    ids = [f"d{i:03d}" for i in range(60)]
    with Catalog(db) as cat:
        cat.put_embeddings("m", ids, vectors(rng, 60, centres=centres), images=_meta(ids, rng))
        cat.add_override("d001", "keep")
        cat.add_override("d002", "master")
        cat.add_override("d003", "not_duplicate")
        cat.add_override("d004", "keep")
        cat.add_override("d005", "keep")
        dedup(cat, 0.97)
        assert {r[0] for r in cat.con.execute("SELECT image_id FROM overrides").fetchall()} == \
            {"d001", "d002", "d003", "d004", "d005"}
        cat.put_embeddings("m", ["d001", "d003"], vectors(rng, 2, centres=centres))      # changed
        cat.upsert_images(pa.table({"id": ["d004"], "status": ["missing"]}))           # vanished
        cat.put_embeddings("m", ["d005"], np.asarray(cat.load_embeddings().vectors)[[ids.index("d005")]])  # same vector
        dry = dedup(cat, 0.97, dry_run=True)
        assert dry.summary["decisions_invalidated"] == {"changed": 2, "vanished": 1}
        assert cat.scalar("SELECT count(*) FROM overrides") == 5      # a dry run moves nothing
        res = dedup(cat, 0.97)
        assert res.summary["decisions_invalidated"] == {"changed": 2, "vanished": 1}
        left = {(r[0], r[1]) for r in cat.con.execute("SELECT image_id, kind FROM overrides").fetchall()}
        assert left == {("d002", "master"), ("d005", "keep")}
        moved = {(r[0], r[1], r[2]) for r in cat.con.execute(
            "SELECT image_id, kind, reason FROM overrides_invalidated").fetchall()}
        assert moved == {("d001", "keep", "changed"), ("d003", "not_duplicate", "changed"), ("d004", "keep", "vanished")}
        # the run respects what is left and nothing else: d003 is back in the pass
        rows = {r["image_id"]: r for r in res.members.to_pylist()}
        assert "d004" not in rows and res.summary["overrides_respected"]["not_duplicate"] == 0
        assert "decisions_invalidated" not in dedup(cat, 0.97, dry_run=True).summary


def test_a_run_that_only_sets_decisions_aside_says_so(db):
    """The run in force already has the result, but a decision on a changed image is set aside: the
    summary does not say "nothing changed" (the setting aside was written, with the run's check)."""
    from neardup.report import format_summary

    rng = np.random.default_rng(5)
    X = canon(rng.standard_normal((8, 24)))
    X[1] = X[0]                                            # one pair; the rest far apart
    ids = [f"s{i}" for i in range(8)]
    with Catalog(db) as cat:
        cat.put_embeddings("m", ids, X)
        cat.add_override("s5", "keep")                     # a singleton: keeping it changes nothing
        first = dedup(cat, 0.97)
        cat.put_embeddings("m", ["s5"], canon(rng.standard_normal((1, 24))))   # still a singleton
        again = dedup(cat, 0.97)
        assert again.unchanged and again.run_id == first.run_id
        assert again.summary["decisions_invalidated"] == {"changed": 1, "vanished": 0}
        assert cat.con.execute("SELECT image_id, reason FROM overrides_invalidated").fetchall() == [("s5", "changed")]
    head = format_summary(again.summary).splitlines()[0]
    assert head.startswith(f"run {first.run_id} stays in force with exactly this result (only reviewer decisions "
                           "were set aside)") and "nothing changed" not in head
