"""Which copy is kept: scan's quality measures, the default policy on degraded copies of real
photos, ``decided_by`` against an independent computation, and determinism under row order."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter

from neardup import Catalog
from neardup.dedup import dedup, export_run
from neardup.ingest import import_embeddings
from neardup.policy import (DEFAULT_POLICY, SEED_POLICY, decided_by, group_centrality, parse_policy,
                            priority_rank, select_masters)
from neardup.quality import border_fraction, clipped_fraction, colorfulness, jpeg_quality, sharpness
from neardup.samples import build_degraded, load_photo, read_labels
from neardup.sources import inspect_image, scan


def _jpeg(im: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    buf.seek(0)
    return Image.open(buf)


# -- the measures ------------------------------------------------------------------------------

@pytest.mark.parametrize("q", [10, 20, 50, 75, 90, 95, 100])
def test_jpeg_quality_is_the_quality_the_file_was_saved_at(q):
    assert jpeg_quality(_jpeg(load_photo("coffee"), q)) == q


def test_jpeg_quality_lossless_and_unknown():
    buf = io.BytesIO()
    load_photo("coffee").save(buf, "PNG")
    buf.seek(0)
    assert jpeg_quality(Image.open(buf)) == 100
    assert jpeg_quality(Image.new("RGB", (8, 8))) is None   # no file format known


def test_border_fraction_of_a_padded_photo():
    im = load_photo("astronaut").resize((200, 200))
    pad = Image.new("RGB", (240, 220), (255, 255, 255))
    pad.paste(im, (20, 10))
    a = np.asarray(pad)
    # content 200x200 of 240x220, less the one line per bordered edge counted as border (on a
    # reduced image that line mixes border and content): 198 x 198
    assert border_fraction(a) == pytest.approx(1 - 198 * 198 / (240 * 220), abs=1e-9)
    assert border_fraction(np.asarray(im)) == 0.0
    # a uniform band at one edge only (sky, a wall) is picture, not border
    sky = np.asarray(im).copy()
    sky[:30] = (200, 210, 230)
    assert border_fraction(sky) == 0.0


def test_sharpness_falls_with_blur_and_ignores_brightness_scaling():
    g = np.asarray(load_photo("camera").convert("L").resize((256, 256)))
    blurred = np.asarray(Image.fromarray(g).filter(ImageFilter.GaussianBlur(2)))
    assert sharpness(blurred) < 0.5 * sharpness(g)
    dim = np.round(g * 0.5).astype(np.uint8)   # no clipping: the ratio is scale-free up to rounding
    assert sharpness(dim) == pytest.approx(sharpness(g), rel=0.05)


def test_colorfulness_and_clipping():
    coffee = np.asarray(load_photo("coffee"))
    grey = np.repeat(np.asarray(load_photo("coffee").convert("L"))[..., None], 3, axis=2)
    assert colorfulness(grey) == 0.0 and colorfulness(coffee) > 20
    lum = np.array([[0, 3, 4, 128], [251, 252, 255, 10]], np.uint8)
    assert clipped_fraction(lum) == 4 / 8


# -- masters on families of degraded copies ----------------------------------------------------

def _family_catalog(tmp_path, copy_quality):
    root = tmp_path / "fam"
    build_degraded(root, seed=3, draws=1, copy_quality=copy_quality, photos=("astronaut", "coffee", "camera"),
                   tiles=False)
    truth = {str((root / r["path"]).resolve()): (r["group"], r["kind"]) for r in read_labels(root / "labels.csv")}
    db = tmp_path / "c.duckdb"
    with Catalog(db) as cat:
        scan(cat, [root], workers=1)
        meta = cat.images()
    return meta, truth


def test_measures_keep_the_original_when_copies_are_resaved_lower(tmp_path):
    """Copies saved by an editor (JPEG 75-90; original a q95 camera file): content, border and JPEG
    quality keep the original (or its same-quality flip) of every family; the seed's rule does not."""
    meta, truth = _family_catalog(tmp_path, (75, 90))
    fam = [truth[p] for p in meta["path"].to_pylist()]
    first: dict[str, int] = {}
    labels = np.array([first.setdefault(g, n) for n, (g, _) in enumerate(fam)])
    kept = lambda pol: {fam[m][1] for m in select_masters(labels, priority_rank(meta, pol))}  # noqa: E731
    assert kept("content,border,jpeg_quality") <= {"original", "flip"}
    assert kept(SEED_POLICY) != {"original"}


def test_default_policy_through_dedup_keeps_originals(tmp_path):
    """The default policy end to end on dedup (vectors: the families' own, so groups are the true ones):
    the original or its flip is kept in every family, and decided_by says which key decided."""
    meta, truth = _family_catalog(tmp_path, (75, 90))
    ids = meta["id"].to_pylist()
    fam = [truth[p] for p in meta["path"].to_pylist()]
    groups = sorted({g for g, _ in fam})
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((len(groups), 16))
    # near-duplicate vectors per family: the original at the centre, copies around it
    X = np.stack([centres[groups.index(g)] + (0.0 if k == "original" else 0.05) * rng.standard_normal(16)
                  for g, k in fam])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    db = tmp_path / "c.duckdb"
    with Catalog(db) as cat:
        import_embeddings(cat, X.astype(np.float32), ids)
        res = dedup(cat, 0.9)
        out = tmp_path / "e.csv"
        export_run(cat, res.run_id, out)
    kind = dict(zip(ids, fam))
    masters = {r["master_id"] for r in res.members.to_pylist()}
    assert len(masters) == len(groups) and all(kind[m][1] in ("original", "flip") for m in masters)
    assert sum(res.summary["decided_by"].values()) == len(groups)
    import pyarrow.csv as pacsv
    exported = pacsv.read_csv(out).to_pylist()
    assert {r["decided_by"] for r in exported} <= set(res.summary["decided_by"])


# -- decided_by and determinism ----------------------------------------------------------------

def _reference_decided(labels, rows, keys):
    """Independent: per group sort members by their key tuples in Python; compare master and runner-up."""
    out = {}
    for lab in set(labels):
        members = sorted((i for i, x in enumerate(labels) if x == lab), key=lambda i: rows[i])
        if len(members) < 2:
            continue
        a, b = rows[members[0]], rows[members[1]]
        out[lab] = (members[0], keys[next(k for k in range(len(keys)) if a[k] != b[k])])
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), seed=st.integers(0, 10_000))
def test_decided_by_equals_independent_reference(n, seed):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 2, n).astype(float)
    score[rng.random(n) < 0.2] = np.nan
    clipped = rng.choice([0.0, 0.004, 0.006, 0.02], n)      # 0 and 0.004 share a 0.5% bucket
    bright = np.round(rng.uniform(0, 1, n), 1)
    ids = [f"i{k:03d}" for k in rng.permutation(n)]
    labels = rng.integers(0, max(1, n // 3), n)
    t = pa.table({"id": ids, "score": score, "clipped": clipped, "brightness": bright})
    pol = parse_policy("score,clipped,brightness")
    rank = priority_rank(t, pol)
    master = select_masters(labels, rank)
    got = decided_by(labels, master, t, pol)
    # the reference's own key tuples: missing score last, clipped in floor(x / 0.005) buckets ascending
    rows = [((-s if s == s else math.inf), math.floor(c / 0.005), -b, i)
            for s, c, b, i in zip(score.tolist(), clipped.tolist(), bright.tolist(), ids)]
    want = _reference_decided(labels.tolist(), rows, ["score", "clipped", "brightness", "id"])
    for node, lab in enumerate(labels.tolist()):
        if lab in want:
            assert master[node] == want[lab][0]
            assert got[node] == want[lab][1]
        else:
            assert got[node] is None


def test_group_centrality_equals_brute_force():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 8))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    labels = rng.integers(0, 6, 30)
    c = group_centrality(X, labels)
    S = X @ X.T
    for i in range(30):
        others = [j for j in range(30) if labels[j] == labels[i] and j != i]
        if others:
            assert c[i] == pytest.approx(np.mean(S[i, others]), abs=1e-12)
        else:
            assert np.isnan(c[i])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_default_policy_masters_do_not_depend_on_row_order(tmp_path_factory, seed):
    rng = np.random.default_rng(seed)
    n = 40
    centres = rng.standard_normal((5, 12))
    X = centres[rng.integers(0, 5, n)] + 0.05 * rng.standard_normal((n, 12))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    meta = {"id": [f"m{k:02d}" for k in range(n)],
            "width": rng.choice([400, 500], n).astype(np.int32), "height": np.full(n, 300, np.int32),
            "border": rng.choice([0.0, 0.1], n), "colorfulness": rng.choice([0.0, 30.0], n),
            "jpeg_quality": rng.choice([75.0, 95.0], n), "clipped": rng.choice([0.0, 0.01], n),
            "sharpness": rng.choice([0.5, 0.9], n), "brightness": np.round(rng.uniform(0, 1, n), 1)}
    out = []
    for order in (np.arange(n), rng.permutation(n)):
        db = tmp_path_factory.mktemp("o") / "c.duckdb"
        t = pa.table({k: np.asarray(v)[order] if not isinstance(v, list) else [v[i] for i in order]
                      for k, v in meta.items()})
        with Catalog(db) as cat:
            import_embeddings(cat, X[order], [meta["id"][i] for i in order], meta=t)
            res = dedup(cat, 0.95, dry_run=True, prefer=DEFAULT_POLICY)
        out.append(sorted((r["image_id"], r["master_id"], r["decided_by"]) for r in res.members.to_pylist()))
    assert out[0] == out[1]


def test_old_catalog_gains_the_new_columns(tmp_path):
    db = tmp_path / "c.duckdb"
    with Catalog(db) as cat:
        cat.con.execute("ALTER TABLE images DROP COLUMN sharpness")
        cat.con.execute("ALTER TABLE run_members DROP COLUMN decided_by")
        # and as a catalog from before the calibration and transaction-marker tables
        for t in ("judgments", "calibrations", "txn_log"):
            cat.con.execute(f"DROP TABLE {t}")
    with Catalog(db) as cat:
        assert "sharpness" in cat.image_columns()
        cols = {r[0] for r in cat.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'run_members'").fetchall()}
        assert "decided_by" in cols


def test_scan_records_the_measures(tmp_path):
    p = tmp_path / "a.jpg"
    load_photo("coffee").save(p, "JPEG", quality=80)
    info = inspect_image(str(p))
    assert info.measures["jpeg_quality"] == 80
    assert info.measures["colorfulness"] > 20 and info.measures["border"] == 0.0
    assert info.measures["sharpness"] > 0


def test_rescan_measures_files_scanned_before_the_measures(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    load_photo("coffee").save(folder / "a.jpg", "JPEG", quality=80)
    with Catalog(tmp_path / "c.duckdb") as cat:
        scan(cat, [folder], workers=1)
        cat.con.execute("UPDATE images SET sharpness = NULL, jpeg_quality = NULL")   # as an older scan left it
        rep = scan(cat, [folder], workers=1)
        row = cat.images(["sharpness", "jpeg_quality"]).to_pylist()[0]
    assert (rep.added, rep.changed, rep.unchanged) == (0, 0, 1)
    assert row["jpeg_quality"] == 80 and row["sharpness"] > 0


def test_group_centrality_float32_and_order_free():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((500, 16))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    labels = rng.integers(0, 40, 500)
    ids = np.array([f"x{k:04d}" for k in range(500)])
    whole = group_centrality(X, labels, ids)
    assert np.allclose(group_centrality(X.astype(np.float32), labels, ids), whole, rtol=0, atol=1e-6, equal_nan=True)
    perm = rng.permutation(500)
    # same rows in another order: the same value per image, bit for bit (sums run in id order)
    again = group_centrality(X[perm], labels[perm], ids[perm])
    assert np.array_equal(again, whole[perm], equal_nan=True)


def test_review_group_page_shows_decided_by(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from neardup.review import create_app

    X = np.array([[1, 0], [0.999, 0.0447], [0, 1], [0.0447, 0.999]], np.float32)
    db = tmp_path / "c.duckdb"
    with Catalog(db) as cat:
        import_embeddings(cat, X, ["a", "b", "c", "d"],
                          meta=pa.table({"id": ["a", "b", "c", "d"], "score": [1.0, 2.0, 5.0, 5.0]}))
        res = dedup(cat, 0.99)
    want = {r["group_id"]: r["decided_by"] for r in res.members.to_pylist()}
    assert want == {1: "score", 2: "id"}    # a/b: b's score is higher; c/d: equal scores, id decides
    app = create_app(db, idle_close_s=0)
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        for gid, key in want.items():
            assert f"decided by <code>{key}</code>" in client.get(f"/groups/{gid}").text
    app.state.holder.close()


def test_decided_by_follows_a_not_duplicate_that_replaces_the_master(db):
    """A reviewer's "not a duplicate" on a group's master: the next-best member takes over and the group's
    decided_by says which key chose it (by hand: a 3, b 2/bright, c 2/dim, d 1 -> b over c by brightness);
    the image taken out has none. A fresh dedup after the decision agrees."""
    ids = ["a", "b", "c", "d"]
    ang = np.radians([0.0, 4.0, 8.0, 12.0])
    V = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    meta = pa.table({"id": ids, "score": [3.0, 2.0, 2.0, 1.0], "brightness": [0.5, 0.9, 0.4, 0.99]})
    with Catalog(db) as cat:
        import_embeddings(cat, V, ids, meta=meta)
        res = dedup(cat, 0.9, mode="components", prefer="score,brightness")
        before = {r["image_id"]: r for r in cat.run_members(res.run_id).to_pylist()}
        assert before["a"]["is_master"] and {before[i]["decided_by"] for i in ids} == {"score"}
        cat.add_override("a", "not_duplicate")
        after = {r["image_id"]: r for r in cat.run_members(res.run_id).to_pylist()}
        assert after["b"]["is_master"] and after["c"]["master_id"] == "b"
        assert {after[i]["decided_by"] for i in "bcd"} == {"brightness"}
        assert after["a"]["decided_by"] is None and after["a"]["group_size"] == 1
        # a non-master taken out: the master stays; what decided it is said over the members left
        cat.add_override("c", "not_duplicate")
        after = {r["image_id"]: r for r in cat.run_members(res.run_id).to_pylist()}
        assert after["b"]["is_master"] and {after[i]["decided_by"] for i in "bd"} == {"score"}
        again = dedup(cat, 0.9, mode="components", prefer="score,brightness", dry_run=True)
    fresh = {r["image_id"]: r["decided_by"] for r in again.members.to_pylist()}
    assert fresh["b"] == fresh["d"] == "score"


def test_of_byte_identical_files_the_older_one_is_kept(tmp_path):
    """Byte-identical files tie on every measure: the default keeps the older file (a copy is written
    after the file it copies) whichever sorts first by id, and says that `modified` decided it; the
    seed's rule still falls to the id."""
    import os

    src = tmp_path / "photos"
    (src / "a").mkdir(parents=True)
    (src / "z").mkdir()
    buf = io.BytesIO()
    load_photo("coffee").save(buf, "JPEG", quality=90)
    orig, copy = src / "z" / "coffee.jpg", src / "a" / "coffee_copy.jpg"
    orig.write_bytes(buf.getvalue())
    copy.write_bytes(buf.getvalue())
    os.utime(orig, (1_600_000_000, 1_600_000_000))
    os.utime(copy, (1_700_000_000, 1_700_000_000))
    with Catalog(tmp_path / "c.duckdb") as cat:
        scan(cat, [src], workers=1)
        meta = cat.images()
        path_of = dict(zip(meta["id"].to_pylist(), meta["path"].to_pylist()))
        ids = sorted(path_of)
        import_embeddings(cat, np.tile(np.eye(1, 8, dtype=np.float32), (2, 1)), ids)
        by_default = dedup(cat, 0.9, dry_run=True).members.to_pylist()
        by_seed = dedup(cat, 0.9, dry_run=True, prefer=SEED_POLICY).members.to_pylist()
    assert path_of[ids[0]] == str(copy.resolve())  # the copy comes first by id: the id alone would keep it
    assert {path_of[r["master_id"]] for r in by_default} == {str(orig.resolve())}
    assert {r["decided_by"] for r in by_default if r["decided_by"]} == {"modified"}
    assert {r["master_id"] for r in by_seed} == {ids[0]}
