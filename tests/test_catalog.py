"""Catalog: import validation (clear errors, nothing written), re-import, runs, restore, crashes."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neardup import Catalog, CatalogError, InputError
from neardup.dedup import dedup
from neardup.ingest import import_embeddings


def snapshot(db) -> str:
    """A digest of every table's content and the embeddings files: equal means unchanged."""
    with Catalog(db) as cat:
        h = hashlib.sha256()
        for t in ("images", "embedding_sets", "embedding_rows", "runs", "run_members", "overrides"):
            h.update(repr(cat.con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()).encode())
        emb = cat.sidecar / "embeddings"
        for p in sorted(emb.glob("*.npy")) if emb.exists() else []:
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def write_npy(tmp_path, X, ids, name="v"):
    np.save(tmp_path / f"{name}.npy", X)
    (tmp_path / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return tmp_path / f"{name}.npy", tmp_path / f"{name}.txt"


@pytest.fixture
def base(tmp_path, db):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 8)).astype(np.float32)
    ids = [f"a{i}" for i in range(20)]
    v, i = write_npy(tmp_path, X, ids, "base")
    with Catalog(db) as cat:
        import_embeddings(cat, v, i)
    return X, ids


def stored(x: np.ndarray) -> np.ndarray:
    """What the catalog keeps for raw vector x: normalised (float64, then float32), on the 1/2048 grid."""
    x = np.asarray(x, dtype=np.float64)
    return np.rint((x / np.linalg.norm(x)).astype(np.float32).astype(np.float64) * 2048) / 2048


def test_vectors_are_normalised_and_reimport_updates(tmp_path, db, base):
    X, ids = base
    with Catalog(db) as cat:
        es = cat.load_embeddings()
        # canonical: unit norm up to the grid (|x - x_grid| <= sqrt(d) / 4096 per row)
        assert np.allclose(np.linalg.norm(es.vectors, axis=1), 1.0, atol=np.sqrt(8) / 4096)
        assert np.array_equal(es.vectors * 2048, np.rint(es.vectors * 2048))
        assert np.array_equal(es.vectors[3], stored(X[3]))
        Y = np.ones((3, 8), np.float32) * 5
        rep = import_embeddings(cat, Y, ["a1", "a2", "new"])
        assert (rep.added, rep.updated) == (1, 2)
        es = cat.load_embeddings()
        assert len(es) == 21 and cat.count_images() == 21
        row = {k: r for r, k in enumerate(es.ids)}
        assert np.array_equal(es.vectors[row["a1"]], stored(np.ones(8)))
        assert np.array_equal(es.vectors[row["a4"]], stored(X[4]))


def test_parquet_list_and_fixed_size_list(tmp_path, db):
    X = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    ids = [f"p{i}" for i in range(5)]
    pq.write_table(pa.table({"id": ids, "emb": pa.array(X.tolist(), pa.list_(pa.float32()))}), tmp_path / "l.parquet")
    pq.write_table(pa.table({"id": ids, "emb": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 4)}),
                   tmp_path / "f.parquet")
    with Catalog(db) as cat:
        import_embeddings(cat, tmp_path / "l.parquet", model="m1")
        import_embeddings(cat, tmp_path / "f.parquet", model="m2")
        a, b = cat.load_embeddings("m1"), cat.load_embeddings("m2")
        assert np.allclose(a.vectors, b.vectors) and list(a.ids) == ids


def test_meta_columns_kept_and_unmatched_reported(tmp_path, db, base):
    (tmp_path / "meta.csv").write_text("id,score,brightness,camera\na1,3.5,0.4,left\na2,1,0.9,right\nghost,2,0.5,x\n")
    with Catalog(db) as cat:
        rep = import_embeddings(cat, np.ones((1, 8), np.float32), ["a1"], meta=tmp_path / "meta.csv")
        assert rep.meta_unmatched == ["ghost"]
        rows = {r["id"]: r for r in cat.images(["id", "score", "brightness", "camera"]).to_pylist()}
        assert rows["a1"]["score"] == 3.5 and rows["a2"]["camera"] == "right"
        assert "ghost" not in rows


BAD_CASES = {
    "nan": (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 17, np.nan, X), None, "row 2 (id 'b2'): vector has NaN"),
    "inf": (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 9, np.inf, X), None, "row 1 (id 'b1'): vector has NaN or infinite"),
    "zero": (lambda X: np.where(np.arange(len(X))[:, None] == 3, 0.0, X), None, "row 3 (id 'b3'): vector is all zeros"),
    "dup": (lambda X: X, ["b0", "b1", "b0", "b3", "b4"], "rows 0 and 2: duplicate id 'b0'"),
    "empty": (lambda X: X, ["b0", "b1", " ", "b3", "b4"], "row 2: id is empty"),
    "short": (lambda X: X, ["b0", "b1", "b2"], "3 ids but"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_vectors_clear_error_and_catalog_unchanged(tmp_path, db, base, case):
    make, ids, message = BAD_CASES[case]
    X = make(np.random.default_rng(2).standard_normal((5, 8))).astype(np.float32)
    ids = ids or [f"b{i}" for i in range(5)]
    v, i = write_npy(tmp_path, X, ids, "bad")
    before = snapshot(db)
    with Catalog(db) as cat, pytest.raises(InputError) as exc:
        import_embeddings(cat, v, i)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert snapshot(db) == before


def test_wrong_dimension_and_bad_meta_rejected(tmp_path, db, base):
    before = snapshot(db)
    with Catalog(db) as cat:
        with pytest.raises(InputError, match="dimension 8 in this catalog; these vectors have 4"):
            import_embeddings(cat, np.ones((2, 4), np.float32), ["x", "y"])
        (tmp_path / "m.csv").write_text("id,brightness\na1,7\n")
        with pytest.raises(InputError, match="row 0: brightness 7.0 is outside 0..1"):
            import_embeddings(cat, np.ones((1, 8), np.float32), ["a1"], meta=tmp_path / "m.csv")
        (tmp_path / "nm.csv").write_text("name,score\na1,1\n")
        with pytest.raises(InputError, match="no 'id' column"):
            import_embeddings(cat, np.ones((1, 8), np.float32), ["a1"], meta=tmp_path / "nm.csv")
    assert snapshot(db) == before


def test_unreadable_files(tmp_path, db):
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with Catalog(db) as cat:
        with pytest.raises(InputError, match="junk.npy: not a readable .npy"):
            import_embeddings(cat, tmp_path / "junk.npy", ["a"])
        with pytest.raises(InputError, match="missing.npy: no such file"):
            import_embeddings(cat, tmp_path / "missing.npy", ["a"])
        np.save(tmp_path / "ok.npy", np.ones((2, 3)))
        with pytest.raises(InputError, match="a .npy has no ids"):
            import_embeddings(cat, tmp_path / "ok.npy")


def _two_run_catalog(db):
    """Six images: a chain 0~1~2 at 0.95 and a pair 3~4; 5 alone."""
    ang = [0.0, 0.25, 0.5, 2.0, 2.1, 3.0]
    X = np.array([[np.cos(a), np.sin(a), 0.1] for a in ang], np.float32)
    ids = [f"i{k}" for k in range(6)]
    meta = pa.table({"id": ids, "score": [5.0, 1.0, 1.0, 1.0, 2.0, 1.0]})
    with Catalog(db) as cat:
        import_embeddings(cat, X, ids, meta=meta)
    return ids


def visible(db):
    with Catalog(db) as cat:
        return sorted(r[0] for r in cat.con.execute("SELECT id FROM visible").fetchall())


def test_restore_after_two_overlapping_runs(db):
    _two_run_catalog(db)
    with Catalog(db) as cat:
        r1 = dedup(cat, 0.99).run_id      # pairs: 3~4 (cos .1 = .995), 0~1, 1~2 (cos .25 = .969?) no
        r2 = dedup(cat, 0.96).run_id
    with Catalog(db) as cat:
        m1 = {r["image_id"]: r for r in cat.run_members(r1).to_pylist()}
        m2 = {r["image_id"]: r for r in cat.run_members(r2).to_pylist()}
    sup1 = {k for k, r in m1.items() if r["is_suppressed"]}
    sup2 = {k for k, r in m2.items() if r["is_suppressed"]}
    assert sup1 and sup2 and sup1 <= sup2 and sup1 != sup2
    everyone = [f"i{k}" for k in range(6)]
    assert visible(db) == sorted(set(everyone) - sup1 - sup2)
    with Catalog(db) as cat:
        cat.restore(r2)
    assert visible(db) == sorted(set(everyone) - sup1)   # run 1 still suppresses its images
    with Catalog(db) as cat:
        with pytest.raises(CatalogError, match="already restored"):
            cat.restore(r2)
        cat.restore(None)
    assert visible(db) == everyone


def test_crash_mid_run_leaves_catalog_unchanged(db, monkeypatch):
    _two_run_catalog(db)
    with Catalog(db) as cat:
        dedup(cat, 0.99)
    before = snapshot(db)

    class Boom(KeyboardInterrupt):
        pass

    def explode(self):  # fails after the run and its members were inserted
        raise Boom()

    monkeypatch.setattr(Catalog, "_recompute_suppression", explode)
    with Catalog(db) as cat, pytest.raises(Boom):
        dedup(cat, 0.9)
    monkeypatch.undo()
    assert snapshot(db) == before


def test_not_a_catalog_and_wrong_version(tmp_path):
    import duckdb

    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).execute("CREATE TABLE t(x INT)").close()
    with pytest.raises(CatalogError, match="not a neardup catalog"):
        Catalog(other)
    db = tmp_path / "v.duckdb"
    Catalog(db).close()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(CatalogError, match="schema version 99"):
        Catalog(db)


def test_a_catalog_made_before_later_tables_opens_and_gains_them(db, base):
    """A catalog from an earlier version (no txn_log, judgments, calibrations) opens, and a write works."""
    import duckdb

    con = duckdb.connect(str(db))
    for t in ("txn_log", "judgments", "calibrations"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    con.close()
    with Catalog(db) as cat:
        tables = {r[0] for r in cat.con.sql("SELECT table_name FROM information_schema.tables").fetchall()}
        assert {"txn_log", "judgments", "calibrations"} <= tables
        res = dedup(cat, 0.5)
        assert cat.run(res.run_id)["status"] == "applied"


def _hold_lock(db, ready, done):
    cat = Catalog(db)
    ready.set()
    done.wait(30)
    cat.close()


def test_second_process_waits_for_the_lock_then_gets_in(db):
    """Another process holding the catalog: opening waits (saying so once) and gets in when it is released;
    with no wait left, one clear line naming the holder."""
    Catalog(db).close()
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(db), ready, done))
    p.start()
    try:
        assert ready.wait(60)
        with pytest.raises(CatalogError, match=rf"in use by another neardup process \(PID {p.pid}\)"):
            Catalog(db, wait=0)
        said: list[str] = []
        threading.Timer(1.0, done.set).start()
        t0 = time.monotonic()
        with Catalog(db, wait=60, on_wait=said.append) as cat:
            assert cat.count_images() == 0
        assert time.monotonic() - t0 >= 0.9
        assert len(said) == 1 and "waiting for another neardup process" in said[0]
    finally:
        done.set()
        p.join(30)


def test_reserved_metadata_columns_refused(tmp_path, db, base):
    before = snapshot(db)
    (tmp_path / "m.csv").write_text("id,cluster_id\na1,3\n")
    with Catalog(db) as cat, pytest.raises(InputError, match="'cluster_id' is set by neardup itself"):
        import_embeddings(cat, np.ones((1, 8), np.float32), ["a1"], meta=tmp_path / "m.csv")
    assert snapshot(db) == before


def test_scope_of_some_ids_is_a_join(db, base):
    from neardup.dedup import load_scope

    X, ids = base
    with Catalog(db) as cat:
        sc = load_scope(cat, ids=["a7", "a2", "a11"])
        assert sc.ids.tolist() == ["a2", "a7", "a11"] and sc.rows.tolist() == [2, 7, 11]
        assert np.array_equal(sc.vectors[1], stored(X[7]))
        with pytest.raises(InputError, match="1 ids have no precomputed embedding"):
            load_scope(cat, ids=["a1", "zz"])
        assert "a3" not in load_scope(cat, exclude=["a3"]).ids.tolist()
