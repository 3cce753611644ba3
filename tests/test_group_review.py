"""Group-by-group review decisions: what each writes, that undo restores the catalog exactly, bulk accept."""

from __future__ import annotations

import numpy as np
from reference import canonical_f64
import pytest

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
    """Everything a review decision may touch."""
    q = {"images": "SELECT id, is_suppressed FROM images ORDER BY id",
         "overrides": "SELECT image_id, kind, created_at, note FROM overrides ORDER BY ALL",
         "judgments": "SELECT * FROM judgments ORDER BY ALL",
         "group_reviews": "SELECT * FROM group_reviews ORDER BY ALL"}
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
        else:
            (j,) = judged.values()
            assert j["same"] is False and {j["a"], j["b"]} == {others[-1], master}
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
        decide_group(cat, run, g, "accept")
        # accept does not judge "same" the member just called not a duplicate
        rows = cat.sql("SELECT a, b, same FROM judgments").to_pylist()
        assert sum(not r["same"] for r in rows) == 1 and sum(r["same"] for r in rows) == len(m) - 1
        undo_group(cat, run, g)
        assert snapshot(cat) == before


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
        expected = sum(s >= cut for g, s in spans.items() if g != gs[0])
        assert bulk_accept(cat, run, cut) == expected
        assert progress(cat, run) == (expected + 1, len(gs))
        assert cat.scalar("SELECT count(*) FROM judgments WHERE same") == 0   # bulk: no judgments
        with pytest.raises(InputError):
            bulk_accept(cat, run, 1.5)


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
