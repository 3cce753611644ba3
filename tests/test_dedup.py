"""dedup end to end on a catalog: groups and masters equal the brute-force reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import all_pair_sims, clustered_vectors, min_margin, reference_groups, reference_masters, same_partition

from neardup import Catalog, InputError
from neardup.dedup import dedup, export_run
from neardup.ingest import import_embeddings
from neardup.policy import SEED_POLICY
from neardup.synthetic import seed_shaped


def load(db, X, ids, score=None, brightness=None):
    cols = {"id": [str(i) for i in ids]}
    if score is not None:
        cols["score"] = pa.array(score, pa.float64())
    if brightness is not None:
        cols["brightness"] = pa.array(brightness, pa.float64())
    with Catalog(db) as cat:
        import_embeddings(cat, X, cols["id"], meta=pa.table(cols) if len(cols) > 1 else None)


def members_by_id(res):
    return {r["image_id"]: r for r in res.members.to_pylist()}


@pytest.mark.parametrize("t", [0.98, 0.97])
def test_groups_and_masters_equal_reference(db, t):
    c = seed_shaped(2500, 96, seed=5)
    load(db, c.vectors, c.ids, c.score, c.brightness)
    labels, _ = reference_groups(c.vectors, t)
    want_master = reference_masters(labels, c.ids, c.score, c.brightness)
    with Catalog(db) as cat:
        res = dedup(cat, t, prefer=SEED_POLICY)   # the seed's rule, reproduced exactly
    m = members_by_id(res)
    got = np.array([m[i]["group_id"] for i in c.ids])
    assert same_partition(got, labels)
    for i, lab in zip(c.ids, labels):
        assert m[i]["master_id"] == want_master[lab]
        assert m[i]["is_master"] == (i == want_master[lab])
        assert m[i]["is_suppressed"] == (i != want_master[lab])
    sizes = np.bincount(labels)
    s = res.summary
    assert s["groups"] == int((sizes >= 2).sum())
    assert s["retained"] == len(sizes) and s["suppressed"] == len(c.ids) - len(sizes)
    assert s["largest_group"] == sizes.max()
    # sim_to_master is the real cosine between each image and its master
    S = all_pair_sims(c.vectors)
    pos = {k: n for n, k in enumerate(c.ids)}
    for i in c.ids[:200]:  # exact; a master's own similarity is 1 by definition
        want = 1.0 if m[i]["is_master"] else S[pos[i], pos[m[i]["master_id"]]]
        assert m[i]["sim_to_master"] == want
    # the chained giant group is visible in the summary: its lowest similarity to master is far below t
    big = s["largest_groups"][0]
    assert big["size"] == sizes.max() and big["min_sim_to_master"] < t - 0.2 and big["weakest_link"] >= t


def test_with_and_without_scores_policy(db):
    X = np.array([[1, 0], [0.999, 0.0447], [0.998, 0.0632], [0, 1]], np.float32)
    load(db, X, ["c", "b", "a", "z"], brightness=[0.2, 0.9, 0.9, 0.5])
    with Catalog(db) as cat:
        res = dedup(cat, 0.99, dry_run=True, prefer=SEED_POLICY)
        m = members_by_id(res)
        # no scores: brightness decides, then id asc breaks the b/a tie
        assert m["c"]["master_id"] == "a" and m["z"]["is_master"]
        res = dedup(cat, 0.99, dry_run=True, prefer="id:desc")
        assert members_by_id(res)["a"]["master_id"] == "c"
        with pytest.raises(InputError, match="unknown policy key 'sharpest'"):
            dedup(cat, 0.99, prefer="sharpest")
        assert cat.runs() == []  # dry runs write nothing


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n=st.integers(3, 80))
def test_property_permuting_input_changes_no_group_or_master(tmp_path_factory, seed, n):
    rng = np.random.default_rng(seed)
    X = clustered_vectors(rng, n, 12, 3, 0.1)
    assume(min_margin(X, 0.98) > 1e-5)
    ids = [f"im{k:03d}" for k in range(n)]
    score = rng.integers(0, 3, n).astype(float)   # many ties
    bright = np.round(rng.uniform(0, 1, n), 1)    # more ties
    perm = rng.permutation(n)
    out = []
    for order in (np.arange(n), perm):
        db = tmp_path_factory.mktemp("p") / "c.duckdb"
        load(db, X[order], [ids[k] for k in order], score[order], bright[order])
        with Catalog(db) as cat:
            res = dedup(cat, 0.98, dry_run=True, prefer=SEED_POLICY)
        out.append({r["image_id"]: (r["master_id"], r["is_suppressed"]) for r in res.members.to_pylist()})
    assert out[0] == out[1]
    labels, _ = reference_groups(X, 0.98)
    want = reference_masters(labels, ids, score, bright)
    assert {k: v[0] for k, v in out[0].items()} == {ids[k]: want[labels[k]] for k in range(n)}


def test_leader_mode_members_are_near_their_own_master(db):
    c = seed_shaped(1500, 64, seed=8)
    load(db, c.vectors, c.ids, c.score, c.brightness)
    S = all_pair_sims(c.vectors)
    pos = {k: n for n, k in enumerate(c.ids)}
    with Catalog(db) as cat:
        lead = dedup(cat, 0.98, mode="leader", dry_run=True)
        comp = dedup(cat, 0.98, dry_run=True)
    masters = [r["image_id"] for r in lead.members.to_pylist() if r["is_master"]]
    for r in lead.members.to_pylist():
        assert S[pos[r["image_id"]], pos[r["master_id"]]] >= 0.98 - 1e-6
    # masters never absorb each other: any two masters of one component are below t
    mi = np.array([pos[m] for m in masters])
    sub = S[np.ix_(mi, mi)]
    np.fill_diagonal(sub, 0)
    assert sub.max() < 0.98
    # leader groups never cross components and keep at least as many images
    assert lead.summary["retained"] >= comp.summary["retained"]


def test_overrides_survive_and_are_respected(db):
    c = seed_shaped(800, 32, seed=9)
    load(db, c.vectors, c.ids, c.score, c.brightness)
    with Catalog(db) as cat:
        r1 = dedup(cat, 0.98)
        m = members_by_id(r1)
        victim = next(k for k, r in m.items() if r["is_suppressed"])
        other = next(k for k, r in m.items() if r["is_suppressed"] and k != victim and r["group_id"] != m[victim]["group_id"])
        outsider = next(k for k, r in m.items() if r["is_suppressed"] and k not in (victim, other))
        cat.add_override(victim, "keep")
        assert cat.scalar("SELECT count(*) FROM visible WHERE id = ?", [victim]) == 1
        cat.add_override(other, "master")
        cat.add_override(outsider, "not_duplicate")
        r2 = dedup(cat, 0.98)
    m2 = members_by_id(r2)
    assert not m2[victim]["is_suppressed"]
    assert m2[other]["is_master"] and m2[other]["is_suppressed"] is False
    assert m2[other]["decided_by"] == "reviewer"   # the reviewer's "make master" decided that group
    assert m2[outsider]["is_master"] and m2[outsider]["master_id"] == outsider
    assert r2.summary["overrides_respected"] == dict(keep=1, master=1, not_duplicate=1)
    with Catalog(db) as cat:
        assert cat.scalar("SELECT is_suppressed FROM images WHERE id = ?", [victim]) is False


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_export_one_row_per_image(db, tmp_path, fmt):
    c = seed_shaped(600, 32, seed=4)
    load(db, c.vectors, c.ids)
    with Catalog(db) as cat:
        res = dedup(cat, 0.98)
        out = tmp_path / f"g.{fmt}"
        assert export_run(cat, res.run_id, out) == 600
    if fmt == "csv":
        import pyarrow.csv as pacsv
        t = pacsv.read_csv(out)
    elif fmt == "parquet":
        import pyarrow.parquet as pq
        t = pq.read_table(out)
    else:
        import json
        t = pa.Table.from_pylist(json.loads(out.read_text()))
    assert t.column_names[:8] == ["image_id", "path", "group_id", "group_size", "master_id", "is_master",
                                  "is_suppressed", "sim_to_master"]
    assert {"group_score", "decided_by"} <= set(t.column_names)
    rows = t.to_pylist()
    # decided_by: the group's deciding key on every member of a duplicate group, empty for singletons
    assert all((r["decided_by"] in (None, "")) == (r["group_id"] is None) for r in rows)
    assert sorted(r["image_id"] for r in rows) == sorted(c.ids)
    # groups agree with the summary and with the brute-force components
    labels, _ = reference_groups(c.vectors, 0.98)
    sizes = np.bincount(labels)
    size_of = {i: int(sizes[lab]) for i, lab in zip(c.ids, labels)}
    gids = {r["group_id"] for r in rows if r["group_id"] is not None}
    assert len(gids) == res.summary["groups"] == int((sizes >= 2).sum()) > 0
    for r in rows:
        assert r["group_size"] == size_of[r["image_id"]]
        assert (r["group_id"] is None) == (r["group_size"] == 1)
    singles = [r for r in rows if r["group_id"] is None]
    assert singles and all(r["is_master"] and not r["is_suppressed"] and r["master_id"] == r["image_id"] for r in singles)
    assert len(singles) == int((sizes == 1).sum())


def test_threshold_checked(db):
    load(db, np.eye(3, dtype=np.float32), ["a", "b", "c"])
    with Catalog(db) as cat:
        for bad in (0, -0.1, 1.01, float("nan")):
            with pytest.raises(InputError, match="outside"):
                dedup(cat, bad)


def test_policy_text_stored_on_runs_parses_back():
    from neardup.policy import parse_policy

    pol = parse_policy("score,brightness:asc,newest")
    text = ",".join(f"{k} {'desc' if d else 'asc'}" for k, d in pol)
    assert parse_policy(text) == pol
    with pytest.raises(InputError, match="direction must be asc or desc"):
        parse_policy("score sideways")


def test_vanished_images_are_left_out_of_runs(db):
    X = np.array([[1, 0], [0.9999, 0.0141], [0, 1]], np.float32)
    load(db, X, ["a", "b", "c"], score=[5.0, 1.0, 1.0])
    with Catalog(db) as cat:
        # what a re-scan records when a file has vanished
        cat.upsert_images(pa.table({"id": ["a"], "status": ["missing"]}))
        res = dedup(cat, 0.99)
    ids = sorted(r["image_id"] for r in res.members.to_pylist())
    assert ids == ["b", "c"] and res.summary["suppressed"] == 0


def test_index_auto_is_exact_up_to_the_limit_then_ann(monkeypatch):
    # --index auto: exact while it is the faster pass (up to AUTO_EXACT_MAX vectors), ANN above; both
    # passes agree with the reference on clearly separated data
    import neardup.dedup as dd

    assert dd.AUTO_EXACT_MAX >= 12_217  # the seed twin's size stays exact
    X = clustered_vectors(np.random.default_rng(3), 300, 24, 30, 0.02)
    labels, _ = reference_groups(X, 0.9)
    monkeypatch.setattr(dd, "AUTO_EXACT_MAX", 300)
    exact = dd.compute_forest(X, 0.9, index="auto")
    monkeypatch.setattr(dd, "AUTO_EXACT_MAX", 299)
    ann = dd.compute_forest(X, 0.9, index="auto")
    assert exact.meta["engine"] == "exact" and ann.meta["engine"] == "ann"
    assert same_partition(exact.components(0.9), labels) and same_partition(ann.components(0.9), labels)


def test_dedup_summary_says_which_pass_ran_and_why(db, monkeypatch):
    # the summary's `index` names the pass that actually ran (a spy on the ANN pass), and with
    # --index auto the reason; the printed summary carries it as one line
    import neardup.dedup as dd
    import neardup.similarity.ann as ann_mod
    from neardup.report import format_summary

    X = clustered_vectors(np.random.default_rng(5), 300, 24, 30, 0.02)
    ids = [f"i{k:03d}" for k in range(len(X))]
    load(db, X, ids)
    calls = []
    real = ann_mod.ann_forest
    monkeypatch.setattr(ann_mod, "ann_forest", lambda *a, **k: calls.append(1) or real(*a, **k))
    with Catalog(db) as cat:
        plain = dedup(cat, 0.9, dry_run=True)
        monkeypatch.setattr(dd, "AUTO_EXACT_MAX", 300)
        small = dedup(cat, 0.9, index="auto", dry_run=True)
        assert calls == []
        monkeypatch.setattr(dd, "AUTO_EXACT_MAX", 299)
        big = dedup(cat, 0.9, index="auto", dry_run=True)
        assert calls == [1]
    assert plain.summary["index"] == {"requested": "exact", "used": "exact"}
    assert small.summary["index"] == {"requested": "auto", "used": "exact", "reason": "300 images <= 300"}
    assert big.summary["index"]["used"] == "ann" and big.summary["index"]["reason"].startswith("300 images > 299")
    assert "similarity pass: ann (--index auto: 300 images > 299" in format_summary(big.summary)
    assert "similarity pass" not in format_summary(plain.summary)
    labels, _ = reference_groups(X, 0.9)  # both passes give the reference's groups on this separated data
    assert small.summary["groups"] == big.summary["groups"] == len({l for l in labels if (labels == l).sum() > 1})
