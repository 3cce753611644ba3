"""One run in force per model and scope; restore steps back; reviewer decisions take effect at once.

The invariant (hypothesis, over sequences of dedup / restore / decisions): every group of every
applied run keeps a visible image, and the "retained" a dedup reports is the row count of the
``visible`` view after it. Checks read the catalog's tables and recompute from them in Python.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_groups, same_partition

from neardup import Catalog
from neardup.dedup import dedup
from neardup.errors import CatalogError
from neardup.ingest import import_embeddings

N = 24


def make_catalog(db: Path, seed: int = 0) -> list[str]:
    """N images in a few tight families (so groups exist at 0.9-0.99), with scores and brightness."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((5, 8))
    which = np.arange(N) % 5
    X = centers[which] + rng.uniform(0.02, 0.35, (N, 1)) * rng.standard_normal((N, 8))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"img{k:02d}" for k in range(N)]
    meta = pa.table({"id": ids, "path": [f"/photos/{i}.jpg" for i in ids], "score": rng.uniform(0, 1, N),
                     "brightness": rng.uniform(0, 1, N)})
    with Catalog(db) as cat:
        import_embeddings(cat, X, ids, meta=meta)
    return ids


def visible_ids(cat: Catalog) -> set[str]:
    return {r[0] for r in cat.con.execute("SELECT id FROM visible").fetchall()}


def applied(cat: Catalog) -> list[int]:
    return [r["id"] for r in cat.runs() if r["status"] == "applied"]


def groups_of(cat: Catalog, run_id: int) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in cat.run_members(run_id).to_pylist():
        out.setdefault(r["group_id"], []).append(r)
    return out


def check_invariants(cat: Catalog) -> None:
    """Every group of every applied run has a visible member; each group has one master."""
    vis = visible_ids(cat)
    assert int(cat.scalar("SELECT count(*) FROM images WHERE NOT is_suppressed")) == len(vis)
    for rid in applied(cat):
        for gid, rows in groups_of(cat, rid).items():
            masters = [r for r in rows if r["is_master"]]
            assert len(masters) == 1, (rid, gid, rows)
            assert all(r["master_id"] == masters[0]["image_id"] for r in rows)
            assert not masters[0]["is_suppressed"]
            assert any(r["image_id"] in vis for r in rows), f"run {rid} group {gid} has no visible image"
    ov = cat.overrides()
    assert (ov["keep"] | ov["not_duplicate"]) <= vis
    runs_now = applied(cat)
    if len(runs_now) == 1:  # one run in force: what it keeps plus what reviewers freed, nothing else
        rows = cat.run_members(runs_now[0]).to_pylist()
        in_run = {r["image_id"] for r in rows}
        want = {r["image_id"] for r in rows if r["is_master"]} | ov["keep"] | ov["not_duplicate"]
        everyone = {r[0] for r in cat.con.execute("SELECT id FROM images").fetchall()}
        assert vis == (want & in_run) | (everyone - in_run)
    if not runs_now:
        assert int(cat.scalar("SELECT count(*) FROM images WHERE is_suppressed")) == 0


def test_second_dedup_replaces_the_first_and_no_group_is_hidden(db):
    """The 50k report in miniature: a second dedup with the opposite policy hid every group (union of runs)."""
    make_catalog(db)
    with Catalog(db) as cat:
        a = dedup(cat, 0.9, prefer="score")
        b = dedup(cat, 0.9, prefer="score:asc")
        runs = {r["id"]: r for r in cat.runs()}
        assert runs[a.run_id]["status"] == "replaced" and runs[a.run_id]["replaced_by"] == b.run_id
        assert runs[b.run_id]["status"] == "applied" and b.replaced == [a.run_id]
        assert b.summary["replaced"] == [a.run_id]
        vis = visible_ids(cat)
        assert b.summary["retained"] == len(vis) == b.summary["visible"]
        # exactly the new run's own decision: its masters are visible, every other member hidden
        m = {r["image_id"]: r for r in b.members.to_pylist()}
        assert vis == {k for k, r in m.items() if r["is_master"]}
        assert a.summary["groups"] >= 2 and b.summary["groups"] == a.summary["groups"]
        check_invariants(cat)


def test_keep_previous_stacks_runs_but_keeps_each_group_visible(db):
    make_catalog(db)
    with Catalog(db) as cat:
        a = dedup(cat, 0.9, prefer="score")
        b = dedup(cat, 0.9, prefer="score:asc", keep_previous=True)
        assert applied(cat) == [a.run_id, b.run_id] and b.replaced == []
        ma = {r["image_id"]: r for r in a.members.to_pylist()}
        mb = {r["image_id"]: r for r in b.members.to_pylist()}
        union = {k for k in ma if ma[k]["is_suppressed"] or mb[k]["is_suppressed"]}
        hidden_groups = {ma[k]["group_id"] for k in ma if all(x in union for x in ma if ma[x]["group_id"] == ma[k]["group_id"])}
        assert hidden_groups, "the union of the two policies should hide some whole group (the reported failure)"
        vis = visible_ids(cat)
        assert b.summary["retained"] == len(vis) == b.summary["visible"]
        check_invariants(cat)
        # restoring the newer one leaves the older one alone (it was not replaced)
        res = cat.restore_runs(b.run_id)
        assert res.undone == [b.run_id] and res.reinstated == [] and applied(cat) == [a.run_id]
        assert res.visible == len(visible_ids(cat))


def test_same_dedup_twice_changes_nothing_and_restore_then_undoes(db):
    make_catalog(db)
    with Catalog(db) as cat:
        a = dedup(cat, 0.9)
        before = cat.runs()
        again = dedup(cat, 0.9)
        assert again.unchanged and again.run_id == a.run_id and again.summary["unchanged"]
        assert cat.runs() == before                     # no new run, nothing rewritten
        assert again.summary["retained"] == len(visible_ids(cat))
        cat.restore(a.run_id)                            # one restore undoes it: nothing stacked underneath
        assert applied(cat) == [] and len(visible_ids(cat)) == N
        # a different threshold is a new run even where it groups the same images
        c = dedup(cat, 0.9)
        d = dedup(cat, 0.9000001)
        assert not d.unchanged and d.replaced == [c.run_id]


def test_restore_steps_back_one_dedup(db):
    make_catalog(db)
    with Catalog(db) as cat:
        a = dedup(cat, 0.95)
        vis_a = visible_ids(cat)
        b = dedup(cat, 0.9)
        c = dedup(cat, 0.9, mode="leader")
        assert applied(cat) == [c.run_id]
        with pytest.raises(CatalogError, match=f"run {a.run_id} was replaced by run {b.run_id}"):
            cat.restore(a.run_id)
        res = cat.restore_runs(c.run_id)
        assert res.undone == [c.run_id] and res.reinstated == [b.run_id] and applied(cat) == [b.run_id]
        assert visible_ids(cat) == {k["image_id"] for k in b.members.to_pylist() if k["is_master"]}
        res = cat.restore_runs(b.run_id)
        assert res.reinstated == [a.run_id] and visible_ids(cat) == vis_a
        res = cat.restore_runs(None)                     # --all: nothing is put back
        assert res.undone == [a.run_id] and res.reinstated == [] and len(visible_ids(cat)) == N
        statuses = {r["id"]: r["status"] for r in cat.runs()}
        assert statuses == {a.run_id: "restored", b.run_id: "restored", c.run_id: "restored"}


def test_decisions_take_effect_at_once(db):
    make_catalog(db)
    with Catalog(db) as cat:
        run = dedup(cat, 0.9)
        groups = [rows for rows in groups_of(cat, run.run_id).values() if len(rows) >= 3]
        assert len(groups) >= 2
        g1, g2 = groups[0], groups[1]
        old_master = next(r["image_id"] for r in g1 if r["is_master"])
        new_master = next(r["image_id"] for r in g1 if not r["is_master"])
        cat.add_override(new_master, "master")
        vis = visible_ids(cat)
        assert new_master in vis and old_master not in vis           # flipped now, not after a restore
        rows = {r["image_id"]: r for r in cat.run_members(run.run_id).to_pylist()}
        assert rows[new_master]["is_master"] and rows[old_master]["master_id"] == new_master
        X = dict(zip(*cat.embedding_rows("precomputed")[::-1]))
        _, _, V = cat.embedding_vectors("precomputed")
        assert rows[old_master]["sim_to_master"] == pytest.approx(float(V[X[old_master]] @ V[X[new_master]]), abs=1e-6)
        # withdrawing it gives the group back to the policy's master
        cat.remove_override(new_master, "master")
        assert old_master in visible_ids(cat) and new_master not in visible_ids(cat)
        # not-a-duplicate on a master: it stays visible on its own, the best other member (score) takes over
        m2 = next(r["image_id"] for r in g2 if r["is_master"])
        score = dict(cat.con.execute("SELECT id, score FROM images").fetchall())
        rest = [r["image_id"] for r in g2 if r["image_id"] != m2]
        heir = max(rest, key=lambda k: score[k])
        cat.add_override(m2, "not_duplicate")
        vis = visible_ids(cat)
        assert m2 in vis and heir in vis and all(k not in vis for k in rest if k != heir)
        check_invariants(cat)
        n_groups = cat.run(run.run_id)["n_groups"]
        assert n_groups == sum(1 for rows in groups_of(cat, run.run_id).values() if len(rows) >= 2)
        # keep: visible at once, and recorded in the run so an identical re-run is recognised
        victim = next(r["image_id"] for r in g2 if r["image_id"] not in (m2, heir))
        cat.add_override(victim, "keep")
        assert victim in visible_ids(cat)
        check_invariants(cat)


DEDUP = st.tuples(st.just("dedup"), st.sampled_from([0.99, 0.95, 0.9, 0.8]),
                  st.sampled_from(["score,brightness", "score:asc", "brightness", "id"]),
                  st.sampled_from(["components", "leader"]), st.booleans())
OPS = st.one_of(
    DEDUP,
    st.tuples(st.just("again")),
    st.tuples(st.just("restore_latest")),
    st.tuples(st.just("restore_all")),
    st.tuples(st.just("decide"), st.sampled_from(["keep", "master", "not_duplicate"]), st.integers(0, N - 1)),
    st.tuples(st.just("withdraw"), st.sampled_from(["keep", "master", "not_duplicate"]), st.integers(0, N - 1)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=DEDUP, rest=st.lists(OPS, max_size=8), keep_prev_ok=st.booleans())
def test_invariant_over_sequences(first, rest, keep_prev_ok):
    ops = [first, *rest]
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "cat.duckdb"
        ids = make_catalog(db, seed=3)
        with Catalog(db) as cat:
            last = None
            for op in ops:
                if op[0] == "again" and last is not None:
                    op = ("dedup", *last[1:4], False)
                    same_as_last = True
                else:
                    same_as_last = False
                if op[0] == "dedup":
                    _, t, pol, mode, keep_prev = op
                    keep_prev = keep_prev and keep_prev_ok
                    before = applied(cat)
                    res = dedup(cat, t, prefer=pol, mode=mode, keep_previous=keep_prev)
                    vis = visible_ids(cat)
                    assert res.summary["retained"] == len(vis) == res.summary["visible"]
                    assert res.summary["retained"] + res.summary["suppressed"] == N
                    if same_as_last and last_was_dedup:
                        assert res.unchanged and applied(cat) == before
                    if res.unchanged:
                        assert applied(cat) == before and res.run_id in before
                    elif keep_prev:
                        assert applied(cat) == before + [res.run_id]
                    else:
                        assert applied(cat) == [r for r in before if r not in res.replaced] + [res.run_id]
                        assert not [r for r in applied(cat) if r != res.run_id]
                    # groups are the components of the threshold graph without the not-duplicates
                    if mode == "components":
                        nd = cat.overrides()["not_duplicate"]
                        keep_ids = [i for i in ids if i not in nd]
                        rows, rid = cat.embedding_rows("precomputed", keep_ids)
                        _, _, V = cat.embedding_vectors("precomputed")
                        m = {r["image_id"]: r for r in res.members.to_pylist()}
                        labels, _ = reference_groups(np.asarray(V[rows]), t)
                        assert same_partition(np.array([m[i]["group_id"] for i in rid]), labels)
                    last = op
                    last_was_dedup = True
                    check_invariants(cat)
                    continue
                last_was_dedup = False
                if op[0] == "restore_latest":
                    now = applied(cat)
                    if now:
                        replaced = [r["id"] for r in cat.runs() if r["replaced_by"] == now[-1]]
                        res = cat.restore_runs(now[-1])
                        assert res.reinstated == replaced
                        assert sorted(applied(cat)) == sorted(set(now[:-1]) | set(replaced))
                        assert res.visible == len(visible_ids(cat))
                elif op[0] == "restore_all":
                    cat.restore(None)
                    assert applied(cat) == [] and len(visible_ids(cat)) == N
                elif op[0] == "decide":
                    _, kind, k = op
                    cat.add_override(ids[k], kind)
                    assert ids[k] in visible_ids(cat)     # every decision makes its image visible at once
                    if kind == "master" and ids[k] not in cat.overrides()["not_duplicate"]:
                        for rid in applied(cat):
                            row = [r for r in cat.run_members(rid).to_pylist() if r["image_id"] == ids[k]]
                            assert not row or row[0]["is_master"]
                elif op[0] == "withdraw":
                    _, kind, k = op
                    cat.remove_override(ids[k], kind)
                check_invariants(cat)


def test_cli_says_what_it_replaced_and_when_nothing_changed(db, capsys):
    from test_cli_core import run as cli

    make_catalog(db)
    code, out, _ = cli(capsys, "dedup", "-t", "0.9", "--db", str(db))
    assert code == 0 and "run 1 applied" in out and "replaces" not in out
    code, out, _ = cli(capsys, "dedup", "-t", "0.9", "--db", str(db))
    assert code == 0 and "nothing changed: run 1 is already in force" in out and "undo with" not in out
    code, out, _ = cli(capsys, "dedup", "-t", "0.9", "--prefer", "score:asc", "--db", str(db))
    assert code == 0 and "run 2 applied (replaces run 1, no longer in force)" in out
    assert "puts run 1 back in force" in out
    code, out, _ = cli(capsys, "dedup", "-t", "0.95", "--keep-previous", "--db", str(db))
    assert code == 0 and "run 3 applied:" in out
    code, out, _ = cli(capsys, "runs", "--json", "--db", str(db))
    import json
    assert [(r["status"], r["replaced_by"]) for r in json.loads(out)] == [("replaced", 2), ("applied", None), ("applied", None)]
    code, out, err = cli(capsys, "restore", "1", "--db", str(db))
    assert code == 2 and "run 1 was replaced by run 2" in err
    code, out, _ = cli(capsys, "restore", "2", "--db", str(db))
    assert code == 0 and "restored run 2; run 1 in force again" in out
    with Catalog(db) as cat:
        assert applied(cat) == [1, 3]
        check_invariants(cat)


def test_export_counts_equal_the_summary_after_decisions(db, tmp_path, capsys):
    import pyarrow.csv as pacsv
    from test_cli_core import run as cli

    make_catalog(db)
    with Catalog(db) as cat:
        res = dedup(cat, 0.9)
        big = max(groups_of(cat, res.run_id).values(), key=len)
    out = tmp_path / "g.csv"
    code, text, _ = cli(capsys, "export", "--out", str(out), "--db", str(db))
    t = pacsv.read_csv(out).to_pylist()
    assert code == 0 and f"({res.summary['groups']:,} duplicate groups)" in text
    assert len({r["group_id"] for r in t if r["group_id"] is not None}) == res.summary["groups"]
    assert all(r["path"] == f"/photos/{r['image_id']}.jpg" for r in t)
    assert sum(1 for r in t if r["group_id"] is None) == res.summary["images"] - sum(
        len(rows) for rows in groups_of_catalog(db, res.run_id).values() if len(rows) >= 2)
    # a reviewer takes a member out of a 2+ group: the export and the run's counts follow at once
    loner = next(r["image_id"] for r in big if not r["is_master"])
    with Catalog(db) as cat:
        cat.add_override(loner, "not_duplicate")
        n_groups = cat.run(res.run_id)["n_groups"]
    code, text, _ = cli(capsys, "export", "--out", str(out), "--db", str(db))
    t = {r["image_id"]: r for r in pacsv.read_csv(out).to_pylist()}
    assert t[loner]["group_id"] is None and t[loner]["group_size"] == 1 and not t[loner]["is_suppressed"]
    with Catalog(db) as cat:   # the votes the visible view carries follow the group's new size at once
        rows = {r["image_id"]: r for r in cat.sql(
            "SELECT image_id, group_size FROM run_members WHERE run_id = ?", [res.run_id]).to_pylist()}
        vis = {r["id"]: r["group_size"] for r in cat.sql("SELECT id, group_size FROM visible").to_pylist()}
    assert rows[loner]["group_size"] == 1 and vis[loner] == 1
    heir = next(r["image_id"] for r in big if r["is_master"])
    assert rows[heir]["group_size"] == len(big) - 1 == vis[heir]
    assert len({r["group_id"] for r in t.values() if r["group_id"] is not None}) == n_groups
    assert n_groups == res.summary["groups"] - (1 if len(big) == 2 else 0)


def groups_of_catalog(db, run_id):
    with Catalog(db) as cat:
        return groups_of(cat, run_id)
