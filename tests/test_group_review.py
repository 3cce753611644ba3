"""Group-by-group review decisions: what each writes, that undo restores the catalog exactly, bulk accept."""

from __future__ import annotations

import numpy as np
from reference import canonical_f64
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from neardup import Catalog
from neardup.dedup import dedup
from neardup.errors import InputError
from neardup.group_review import bulk_accept, decide_group, group_ids, next_group, progress, undo_group


def planted(db, n_groups=50, seed=0):
    """``n_groups`` tight groups (sizes 2-4) among singletons, 48-d; returns id -> float64 vector."""
    rng = np.random.default_rng(seed)
    d, vecs, ids = 48, [], []
    for g in range(n_groups):
        base = rng.normal(size=d)
        base /= np.linalg.norm(base)
        for k in range(2 + g % 3):
            v = base + rng.normal(size=d) * rng.uniform(0.01, 0.25) / np.sqrt(d)
            vecs.append(v / np.linalg.norm(v))
            ids.append(f"g{g:02d}_{k}")
    for s in range(40):
        v = rng.normal(size=d)
        vecs.append(v / np.linalg.norm(v))
        ids.append(f"single{s:02d}")
    V = np.array(vecs, np.float32)
    with Catalog(db) as cat:
        cat.put_embeddings("sscd", ids, V)
        run = dedup(cat, 0.9, model="sscd").run_id
    return run, dict(zip(ids, canonical_f64(V)))


def snapshot(cat):
    """Everything a review decision may touch, and what downstream reads (the whole visible view)."""
    q = {"images": "SELECT id, is_suppressed FROM images ORDER BY id",
         "visible": "SELECT * FROM visible ORDER BY id",
         "overrides": "SELECT image_id, kind, created_at, note FROM overrides ORDER BY ALL",
         "judgments": "SELECT * FROM judgments ORDER BY ALL",
         "group_reviews": "SELECT * FROM group_reviews ORDER BY ALL",
         "run_members": "SELECT * FROM run_members ORDER BY ALL",
         "runs": "SELECT * FROM runs ORDER BY id",
         "decision_basis": "SELECT * FROM decision_basis ORDER BY ALL"}
    return {k: cat.sql(v).to_pylist() for k, v in q.items()}


def members(cat, run, g):
    return cat.sql("SELECT image_id, master_id, is_master, sim_to_master FROM run_members WHERE run_id = ? AND group_id = ?",
                   [run, g]).to_pylist()


@pytest.mark.parametrize("decision", ["accept", "keep_all", "master", "not_duplicate"])
def test_each_decision_writes_its_facts_and_undo_restores_exactly(db, decision):
    run, vec = planted(db)
    with Catalog(db) as cat:
        g = group_ids(cat, run)[2]
        ms = members(cat, run, g)
        master = next(m["image_id"] for m in ms if m["is_master"])
        others = [m["image_id"] for m in ms if not m["is_master"]]
        cat.add_override(others[0], "keep")          # an earlier decision that undo must leave alone
        before = snapshot(cat)
        decide_group(cat, run, g, decision, others[-1] if decision in ("master", "not_duplicate") else None)
        after = snapshot(cat)
        assert progress(cat, run) == (1, 50)
        judged = {(j["a"], j["b"]): j for j in after["judgments"]}
        if decision == "accept":
            assert set(judged) == {(min(o, master), max(o, master)) for o in others}
            assert all(j["same"] is True for j in judged.values())
        elif decision == "keep_all":
            assert all(j["same"] is False for j in judged.values()) and len(judged) == len(others)
            vis = {r["id"]: r["is_suppressed"] for r in after["images"]}
            assert not any(vis[o] for o in others)
            # only the members not kept before get a new keep
            assert len(after["overrides"]) == len(others)
        elif decision == "master":
            assert judged == {} and {(o["image_id"], o["kind"]) for o in after["overrides"]} == {(others[0], "keep"), (others[-1], "master")}
            # in force at once: the chosen member is the visible master, the old master suppressed
            vis = {r["id"]: r["is_suppressed"] for r in after["images"]}
            assert vis[others[-1]] is False and vis[master] is True
        else:
            (j,) = judged.values()
            assert j["same"] is False and {j["a"], j["b"]} == {others[-1], master}
            row = cat.one("SELECT group_id, is_suppressed FROM run_members WHERE run_id = ? AND image_id = ?",
                          [run, others[-1]])
            assert row[0] != g and row[1] is False      # out of the group at once
        if decision != "accept":   # the decision basis of every decided image (a changed image invalidates it)
            decided = {o["image_id"] for o in after["overrides"]} - {others[0]}
            assert decided and decided <= {b["image_id"] for b in after["decision_basis"]}
        for j in judged.values():   # stored similarity is the pair's cosine (independent float64 dot)
            assert j["similarity"] == pytest.approx(float(vec[j["a"]] @ vec[j["b"]]), abs=1e-6)
        assert undo_group(cat, run, g)
        assert snapshot(cat) == before
        assert not undo_group(cat, run, g)


def test_undo_after_several_decisions_on_one_group(db):
    run, _ = planted(db)
    with Catalog(db) as cat:
        g = group_ids(cat, run)[0]
        ms = members(cat, run, g)
        m = [x["image_id"] for x in ms if not x["is_master"]]
        before = snapshot(cat)
        decide_group(cat, run, g, "not_duplicate", m[0])
        middle = snapshot(cat)
        decide_group(cat, run, g, "accept")
        # accept does not judge "same" the member just called not a duplicate
        rows = cat.sql("SELECT a, b, same FROM judgments").to_pylist()
        assert sum(not r["same"] for r in rows) == 1 and sum(r["same"] for r in rows) == len(m) - 1
        assert undo_group(cat, run, g)["kind"] == "accept"      # the last decision only ...
        assert snapshot(cat) == middle
        assert undo_group(cat, run, g)["kind"] == "not_duplicate"   # ... then the one before
        assert snapshot(cat) == before
        assert undo_group(cat, run, g) is None


def test_bulk_accept_matches_a_brute_force_count(db):
    run, vec = planted(db)
    with Catalog(db) as cat:
        gs = group_ids(cat, run)
        spans = {}
        for g in gs:
            ms = members(cat, run, g)
            master = next(x["image_id"] for x in ms if x["is_master"])
            spans[g] = min(float(vec[x["image_id"]] @ vec[master]) for x in ms if not x["is_master"])
        vals = sorted(spans.values())
        cut = (vals[20] + vals[21]) / 2          # between two groups' spans, away from float ties
        decide_group(cat, run, gs[0], "keep_all")  # already reviewed: not counted again
        taken = [g for g, s in spans.items() if g != gs[0] and s >= cut]
        before = snapshot(cat)
        n_members = {g: len(members(cat, run, g)) - 1 for g in taken}
        assert bulk_accept(cat, run, cut) == (len(taken), sum(n_members.values()))
        assert progress(cat, run) == (len(taken) + 1, len(gs))
        # each accepted group is judged as a single accept would be: every member the same as its master
        same = cat.sql("SELECT a, b, source, similarity FROM judgments WHERE same").to_pylist()
        expect = set()
        for g in taken:
            ms = members(cat, run, g)
            master = next(x["image_id"] for x in ms if x["is_master"])
            expect |= {(min(x["image_id"], master), max(x["image_id"], master), f"review:group:{run}:{g}")
                       for x in ms if not x["is_master"]}
        assert {(j["a"], j["b"], j["source"]) for j in same} == expect
        for j in same:
            assert j["similarity"] == pytest.approx(float(vec[j["a"]] @ vec[j["b"]]), abs=1e-6)
        # undo from any one of its groups: the whole bulk accept, exactly
        assert undo_group(cat, run, taken[-1])["kind"] == "bulk_accept"
        assert snapshot(cat) == before
        with pytest.raises(InputError):
            bulk_accept(cat, run, 1.5)
        assert snapshot(cat) == before


def test_next_group_skips_reviewed_and_wraps(db):
    run, _ = planted(db, n_groups=5)
    with Catalog(db) as cat:
        gs = group_ids(cat, run)
        assert gs == [1, 2, 3, 4, 5]
        decide_group(cat, run, 2, "accept")
        assert next_group(cat, run, 1) == 3
        assert next_group(cat, run, 5) == 1
        assert next_group(cat, run, 3, step=-1) == 1
        for g in (1, 3, 4, 5):
            decide_group(cat, run, g, "accept")
        assert next_group(cat, run, 1) is None
        with pytest.raises(InputError):
            decide_group(cat, run, 99, "accept")
        with pytest.raises(InputError):
            decide_group(cat, run, 1, "master", "not-in-group")


def test_undo_refuses_what_it_cannot_restore_exactly(db):
    """A later decision on the same images must be undone first; after a new dedup nothing is undone."""
    from neardup.undo import UndoRefused, actions, undo

    run, _ = planted(db)
    with Catalog(db) as cat:
        g = group_ids(cat, run)[0]
        m = [x["image_id"] for x in members(cat, run, g) if not x["is_master"]]
        decide_group(cat, run, g, "keep_all")
        first = actions(cat, group_id=g)[0]["id"]
        decide_group(cat, run, g, "master", m[0])
        with pytest.raises(UndoRefused, match="undo it first"):
            undo(cat, first)
        state = snapshot(cat)
        dedup(cat, 0.95, model="sscd")            # a new run replaces the reviewed one
        with pytest.raises(UndoRefused, match="runs in force changed"):
            undo_group(cat, run, g)
        after = snapshot(cat)
        assert after != state and snapshot(cat) == after   # refused: nothing changed


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["accept", "keep_all", "master", "not_duplicate", "bulk"]),
                          st.integers(0, 7), st.integers(0, 3)), min_size=1, max_size=6))
def test_undo_in_reverse_order_restores_every_state(tmp_path_factory, steps):
    """Any sequence of decisions, then undo one by one: each undo gives back exactly the state before its decision."""
    db = tmp_path_factory.mktemp("undo") / "cat.duckdb"
    run, _ = planted(db, n_groups=8, seed=1)
    with Catalog(db) as cat:
        history = []
        for decision, gi, mi in steps:
            gs = group_ids(cat, run)
            g = gs[gi % len(gs)]
            ms = members(cat, run, g)
            others = [x["image_id"] for x in ms if not x["is_master"]]
            before = snapshot(cat)
            if decision == "bulk":
                n, _ = bulk_accept(cat, run, 0.0)
                if n == 0:
                    continue
            else:
                decide_group(cat, run, g, decision, others[mi % len(others)] if decision in ("master", "not_duplicate") else None)
            history.append((g if decision != "bulk" else None, before))
        from neardup.undo import actions, undo

        for (_, before), act in zip(reversed(history), actions(cat, run_id=run)):
            undo(cat, int(act["id"]))
            assert snapshot(cat) == before
        assert actions(cat, run_id=run) == []
