"""Schema versions: a version-1 catalog (the first catalogs' exact schema, built here by hand) is
migrated to the current version at a read-write open, in one transaction, keeping its data; a
catalog from a newer neardup is refused with one line naming the file and both versions."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from neardup import Catalog, CatalogError
from neardup.catalog import SCHEMA_VERSION
from neardup.dedup import dedup
from neardup.ingest import import_embeddings

#: The schema the first neardup wrote (schema version 1), verbatim, and its visible view.
V1_SCHEMA = """
CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE images(id VARCHAR PRIMARY KEY, path VARCHAR, sha256 VARCHAR, width INTEGER, height INTEGER,
    brightness DOUBLE, score DOUBLE, captured_at TIMESTAMP, file_size BIGINT, cluster_id INTEGER,
    is_suppressed BOOLEAN NOT NULL DEFAULT false, added_at TIMESTAMP);
CREATE TABLE embedding_sets(model VARCHAR PRIMARY KEY, dim INTEGER NOT NULL, file VARCHAR NOT NULL,
    count BIGINT NOT NULL, version INTEGER NOT NULL, updated_at TIMESTAMP);
CREATE TABLE embedding_rows(model VARCHAR NOT NULL, row BIGINT NOT NULL, image_id VARCHAR NOT NULL);
CREATE SEQUENCE run_id_seq START 1;
CREATE TABLE runs(id INTEGER PRIMARY KEY, created_at TIMESTAMP, model VARCHAR, threshold DOUBLE, mode VARCHAR,
    policy VARCHAR, scope VARCHAR, n_images BIGINT, n_groups BIGINT, n_suppressed BIGINT,
    n_retained BIGINT, largest_group BIGINT, status VARCHAR, restored_at TIMESTAMP, summary JSON);
CREATE TABLE run_members(run_id INTEGER NOT NULL, image_id VARCHAR NOT NULL, group_id BIGINT NOT NULL,
    master_id VARCHAR NOT NULL, is_master BOOLEAN NOT NULL, is_suppressed BOOLEAN NOT NULL, sim_to_master FLOAT);
CREATE TABLE overrides(image_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, created_at TIMESTAMP, note VARCHAR);
CREATE TABLE skipped(path VARCHAR PRIMARY KEY, reason VARCHAR, seen_at TIMESTAMP);
CREATE VIEW visible AS SELECT * FROM images WHERE NOT is_suppressed;
INSERT INTO meta VALUES ('schema_version', '1'), ('created_at', '2025-01-01T00:00:00');
"""


def make_v1(path) -> None:
    """A version-1 catalog with 4 images, one applied run (a3 suppressed under master a2) and a keep decision."""
    con = duckdb.connect(str(path))
    con.execute(V1_SCHEMA)
    con.execute("INSERT INTO images (id, path, score, is_suppressed) VALUES "
                "('a0', 'p0', 1.0, false), ('a1', 'p1', 2.0, false), ('a2', 'p2', 3.0, false), ('a3', 'p3', 4.0, true)")
    con.execute("INSERT INTO runs (id, model, threshold, mode, policy, scope, n_images, n_groups, n_suppressed, "
                "n_retained, largest_group, status) VALUES (1, 'm', 0.9, 'components', 'score', 'all', 4, 1, 1, 3, 2, 'applied')")
    con.execute("INSERT INTO run_members VALUES (1, 'a0', 2, 'a0', true, false, 1.0), (1, 'a1', 3, 'a1', true, false, 1.0), "
                "(1, 'a2', 1, 'a2', true, false, 1.0), (1, 'a3', 1, 'a2', false, true, 0.95)")
    con.execute("SELECT nextval('run_id_seq')")
    con.execute("INSERT INTO overrides VALUES ('a1', 'keep', NULL, 'v1 note')")
    con.close()


def columns(con, table: str) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}


def test_a_version_1_catalog_is_migrated_at_open_and_keeps_its_data(tmp_path) -> None:
    db = tmp_path / "v1.duckdb"
    make_v1(db)
    with Catalog(db) as cat:
        con = cat.con
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION) == "2"
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert {"txn_log", "judgments", "calibrations", "group_reviews", "decision_basis",
                "overrides_invalidated"} <= tables
        assert {"scope_key", "replaced_by"} <= columns(con, "runs")
        assert {"group_size", "group_score", "decided_by"} <= columns(con, "run_members")
        assert {"sharpness", "jpeg_quality", "border", "colorfulness", "clipped"} <= columns(con, "images")
        # the data is as it was; the new view reads it (a3 suppressed; visible rows carry group size 1 ...)
        assert con.execute("SELECT id FROM images WHERE is_suppressed").fetchall() == [("a3",)]
        assert con.execute("SELECT id, group_size FROM visible ORDER BY id").fetchall() == [
            ("a0", 1), ("a1", 1), ("a2", 1)]
        assert cat.overrides()["keep"] == {"a1"}
        assert [r["status"] for r in cat.runs()] == ["applied"]
        # ... and the catalog works as a current one: vectors in, a dedup replaces the old run
        rng = np.random.default_rng(0)
        X = rng.standard_normal((4, 8)).astype(np.float32)
        X[3] = X[2] + 0.001
        import_embeddings(cat, X, ["a0", "a1", "a2", "a3"], model="m")
        res = dedup(cat, 0.9, model="m")
        assert cat.run(1)["status"] == "replaced" and cat.run(res.run_id)["status"] == "applied"
    with Catalog(db) as cat:  # a second open finds nothing to do: no transaction is written
        before = cat.con.execute("SELECT count(*) FROM txn_log").fetchone()[0]
    with Catalog(db) as cat:
        assert cat.con.execute("SELECT count(*) FROM txn_log").fetchone()[0] == before


def test_migration_is_one_transaction(tmp_path, monkeypatch) -> None:
    """A failure half-way through the migration leaves the version-1 catalog exactly as it was."""
    from neardup.catalog import schema

    db = tmp_path / "v1.duckdb"
    make_v1(db)

    def dump() -> list:
        con = duckdb.connect(str(db), read_only=True)
        try:
            return [con.execute("SELECT table_name, column_name FROM information_schema.columns ORDER BY ALL").fetchall(),
                    con.execute("SELECT * FROM meta ORDER BY ALL").fetchall(),
                    con.execute("SELECT * FROM run_members ORDER BY ALL").fetchall()]
        finally:
            con.close()

    before = dump()
    real = schema.Schema._add_later_additions

    def fail_after(self) -> None:
        real(self)
        raise RuntimeError("disk full")

    monkeypatch.setattr(schema.Schema, "_add_later_additions", fail_after)
    with pytest.raises(RuntimeError, match="disk full"):
        Catalog(db)
    assert dump() == before


def test_a_read_only_open_of_a_version_1_catalog_reads_it_unchanged(tmp_path) -> None:
    db = tmp_path / "v1.duckdb"
    make_v1(db)
    with Catalog(db, read_only=True) as cat:
        assert cat.count_images() == 4
        assert cat.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"


@pytest.mark.parametrize("value", [str(SCHEMA_VERSION + 1), "99"])
def test_a_newer_catalog_is_refused_in_one_line_naming_file_and_versions(tmp_path, value, capsys) -> None:
    from test_cli_core import run

    db = tmp_path / "new.duckdb"
    Catalog(db).close()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [value])
    con.close()
    with pytest.raises(CatalogError) as exc:
        Catalog(db)
    msg = str(exc.value)
    assert str(db) in msg and f"schema version {value}" in msg and f"version {SCHEMA_VERSION}" in msg
    assert "\n" not in msg
    code, _, err = run(capsys, "runs", "--db", str(db))
    assert code == 2
    assert [ln for ln in err.splitlines() if ln.strip()] == [f"error: {msg}"]


@pytest.mark.parametrize("value", ["0", "two", None])
def test_a_catalog_without_a_usable_version_is_refused(tmp_path, value) -> None:
    db = tmp_path / "bad.duckdb"
    Catalog(db).close()
    con = duckdb.connect(str(db))
    if value is None:
        con.execute("DELETE FROM meta WHERE key = 'schema_version'")
    else:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [value])
    con.close()
    with pytest.raises(CatalogError, match="no valid schema version"):
        Catalog(db)


def test_neardup_runs_migrates_a_version_1_catalog_without_duckdbs_python_package(tmp_path) -> None:
    """`neardup runs` opens the catalog with DuckDB's extension alone (sql_only): the migration is SQL
    only, so it runs there as in a full open, and the catalog then reads as migrated."""
    import json
    import subprocess
    import sys

    db = tmp_path / "v1.duckdb"
    make_v1(db)
    code = ("import json, sys; sys.argv = ['neardup', 'runs', '--json', '--db', sys.argv[1]]\n"
            "from neardup.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'duckdb')))")
    res = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    runs_json, loaded = res.stdout.strip().splitlines()[-2:]
    assert [r["status"] for r in json.loads(runs_json)] == ["applied"]
    assert json.loads(loaded) == []  # the package never loaded
    with Catalog(db, read_only=True) as cat:
        assert cat.scalar("SELECT value FROM meta WHERE key = 'schema_version'") == str(SCHEMA_VERSION)
        assert {"scope_key", "replaced_by"} <= columns(cat.con, "runs")
        assert cat.con.execute("SELECT id, group_size FROM visible ORDER BY id").fetchall() == [
            ("a0", 1), ("a1", 1), ("a2", 1)]


def test_a_sql_only_catalog_loads_duckdbs_package_when_arrow_is_asked_for(tmp_path) -> None:
    import json
    import subprocess
    import sys

    db = tmp_path / "v1.duckdb"
    make_v1(db)
    code = ("import json, sys\nfrom neardup.catalog import Catalog\n"
            "with Catalog(sys.argv[1], sql_only=True) as cat:\n"
            "    rows = cat.rows('SELECT id FROM images ORDER BY id')\n"
            "    before = 'duckdb' in sys.modules\n"
            "    t = cat.sql('SELECT id, score FROM images ORDER BY id')\n"
            "print(json.dumps([before, [r['id'] for r in rows], t.column('score').to_pylist(), 'duckdb' in sys.modules]))")
    res = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [False, ["a0", "a1", "a2", "a3"], [1.0, 2.0, 3.0, 4.0], True]


def make_v1_with_vectors(path) -> None:
    """:func:`make_v1` plus model ``m``'s vectors (a version file in the sidecar, as version 1 kept them):
    a2 and a3 are near-duplicates."""
    make_v1(path)
    side = path.with_name(path.name + ".d") / "embeddings"
    side.mkdir(parents=True)
    X = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    X[3] = X[2] + 0.001
    np.save(side / "m.v1.npy", X / np.linalg.norm(X, axis=1, keepdims=True))
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO embedding_sets VALUES ('m', 8, 'm.v1.npy', 4, 1, '2025-01-01')")
    con.execute("INSERT INTO embedding_rows VALUES ('m', 0, 'a0'), ('m', 1, 'a1'), ('m', 2, 'a2'), ('m', 3, 'a3')")
    con.close()


def _file_digest(path) -> str:
    import hashlib

    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_a_read_only_open_of_a_version_1_catalog_serves_every_read(tmp_path) -> None:
    """Not migrated (nothing may be written), yet what reads the tables added since (decision basis,
    calibrations, ...) finds them empty rather than missing: runs, export, a dry run, a sweep. A dedup
    that would record a run is refused in one line. The file is byte for byte as it was."""
    from neardup.dedup import export_table
    from neardup.sweep import sweep_plan

    db = tmp_path / "v1.duckdb"
    make_v1_with_vectors(db)
    before = _file_digest(db)
    with Catalog(db, read_only=True) as cat:
        assert [(r["id"], r["status"]) for r in cat.runs()] == [(1, "applied")]
        assert export_table(cat, 1).num_rows == 4
        dry = dedup(cat, 0.9, model="m", dry_run=True)
        assert dry.summary["groups"] == 1 and dry.summary["overrides_respected"]["keep"] == 0
        plan, _ = sweep_plan(cat, [0.9], model="m")
        assert sorted(plan.scope.ids.tolist()) == ["a0", "a1", "a2", "a3"]
        with pytest.raises(CatalogError) as exc:
            dedup(cat, 0.9, model="m")
        assert str(db) in str(exc.value) and "read-only" in str(exc.value) and "\n" not in str(exc.value)
        with pytest.raises(CatalogError, match="opened read-only; this change needs a read-write open"):
            cat.restore(1)
        with pytest.raises(CatalogError, match="opened read-only"):
            cat.add_override("a0", "keep")
        sidecar_before = sorted(p.name for p in db.with_name(db.name + ".d").rglob("*"))
        with pytest.raises(CatalogError, match="opened read-only"):  # refused before a version file is written
            cat.put_embeddings("m", ["a0"], np.eye(1, 8, dtype=np.float32))
        assert sorted(p.name for p in db.with_name(db.name + ".d").rglob("*")) == sidecar_before
        assert cat.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    assert _file_digest(db) == before


@pytest.mark.parametrize("args", [
    ["clusters"], ["pairs", "--band", "0.5:1"], ["estimate", "-t", "0.9"], ["match", "{q}", "--ids", "{qids}", "--against", "{db}", "--out", "{out}"],
], ids=lambda a: a[0])
def test_read_only_commands_on_a_version_1_catalog_leave_it_untouched(tmp_path, capsys, args) -> None:
    """The commands that open the catalog read-only answer on a version-1 catalog (or say in one
    line what to run first) and leave the file as it was."""
    from test_cli_core import run

    db = tmp_path / "v1.duckdb"
    make_v1_with_vectors(db)
    np.save(tmp_path / "q.npy", np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32))
    (tmp_path / "q.txt").write_text("q0\nq1\nq2\n")
    fill = dict(q=str(tmp_path / "q.npy"), qids=str(tmp_path / "q.txt"), db=str(db), out=str(tmp_path / "m.csv"))
    argv = [a.format(**fill) for a in args] + ([] if args[0] == "match" else ["--db", str(db)])
    before = _file_digest(db)
    code, out, err = run(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if args[0] == "clusters":     # no clustering yet: one line saying what to run
        assert code == 2 and lines == [f"error: {db}: no clusters yet (run `neardup cluster --k 25` first)"]
    else:
        assert code == 0, err
        assert "Traceback" not in err
    assert _file_digest(db) == before


@pytest.mark.parametrize("args", [["runs"], ["export", "--out", "{out}"]], ids=lambda a: a[0])
def test_runs_and_export_on_a_version_1_catalog_migrate_it_and_answer(tmp_path, capsys, args) -> None:
    from test_cli_core import run

    db = tmp_path / "v1.duckdb"
    make_v1_with_vectors(db)
    code, out, err = run(capsys, *[a.format(out=tmp_path / "g.csv") for a in args], "--db", str(db))
    assert code == 0 and err.strip() == "", err
    if args[0] == "runs":
        assert " applied " in out
    else:
        assert (tmp_path / "g.csv").read_text().count("\n") == 5
    with Catalog(db, read_only=True) as cat:
        assert cat.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"


def test_the_review_pages_open_a_version_1_catalog(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from neardup.review import create_app

    db = tmp_path / "v1.duckdb"
    make_v1_with_vectors(db)
    app = create_app(db)
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        r = c.get("/runs")
        assert r.status_code == 200 and "/runs/1/" in r.text
        assert c.get("/groups?run=1").status_code == 200
    app.state.holder.close()
