"""The audit a new user would do, kept true: every command given wrong types, out-of-range values,
missing / unreadable / folder-instead-of-file paths, a catalog that is not a DuckDB file or not a
neardup catalog, an empty catalog, a model with no vectors, a restore of a run that is not there or
already restored, an export or a report to odd places, a busy port.

Each case: exit 2, exactly one line on stderr naming what is wrong, no traceback, and every catalog
in the folder exactly as before (every table's rows and columns; the sidecar's files, caches aside).
Usage errors of the option parser itself are in tests/test_cli_errors.py; bad metadata, pipes and
devices in tests/test_bad_input.py.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from neardup.catalog import Catalog
from neardup.cli import main

N, DIM = 30, 8


def snapshot(db: Path) -> Any:
    """A catalog's tables (columns and rows) and its sidecar's files (the similarity cache aside); for a
    file that is not a catalog, its bytes."""
    if db.is_dir():
        return sorted(p.name for p in db.iterdir())
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error:
        return db.read_bytes()
    try:
        out: dict[str, Any] = {}
        for (name,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall():
            cols = con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                               "ORDER BY ordinal_position", [name]).fetchall()
            out[name] = (cols, sorted(con.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr))
    finally:
        con.close()
    side = db.with_name(db.name + ".d")
    out["sidecar"] = sorted(str(p.relative_to(side)) for p in side.rglob("*") if p.is_file()
                            and p.relative_to(side).parts[0] != "forests") if side.exists() else None
    return out


def catalogs(d: Path) -> dict[str, Any]:
    """Every catalog-like file in the folder, snapshotted."""
    return {p.name: snapshot(p) for p in sorted(d.glob("*.duckdb"))}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """c.duckdb: model m (15 near-pairs), run 1 restored, run 2 applied; beside it an empty catalog, a text
    file, a zero-byte file, another DuckDB database and a folder, each named *.duckdb; and input files."""
    from neardup.dedup import dedup
    from neardup.ingest import import_embeddings

    d = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(N // 2, DIM))
    np.save(d / "v.npy", np.concatenate([base, base + 0.01 * rng.normal(size=base.shape)]).astype(np.float32))
    (d / "ids.txt").write_text("\n".join(f"i{k}" for k in range(N)) + "\n")
    with Catalog(d / "c.duckdb") as cat:
        import_embeddings(cat, d / "v.npy", d / "ids.txt", model="m")
        dedup(cat, 0.9)
        cat.restore(1)
        dedup(cat, 0.95)
    Catalog(d / "empty.duckdb").close()
    (d / "junk.duckdb").write_text("hello, not a database\n")
    (d / "zero.duckdb").write_bytes(b"")
    con = duckdb.connect(str(d / "other.duckdb"))
    con.execute("CREATE TABLE t(x INTEGER)")
    con.close()
    (d / "adir.duckdb").mkdir()
    (d / "adir").mkdir()
    (d / "empty.txt").write_text("")
    (d / "bad.npy").write_text("not an array")
    (d / "judged.csv").write_text("a,b,same\ni0,i15,1\ni1,i2,0\n")
    return d


@pytest.fixture()
def folder(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "w"
    shutil.copytree(template, d)
    monkeypatch.chdir(d)
    return d


def run_cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, list[str]]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, [ln for ln in out.err.splitlines() if ln.strip()]


# (arguments, words the one line must carry). ``--db c.duckdb`` is added unless the case names a catalog.
CASES: list[tuple[list[str], list[str]]] = [
    # the catalog file: not DuckDB, empty bytes, a folder, another database, missing folder, empty catalog
    (["runs", "--db", "junk.duckdb"], ["junk.duckdb", "not a DuckDB database file"]),
    (["runs", "--db", "zero.duckdb"], ["zero.duckdb", "not a DuckDB database file"]),
    (["dedup", "-t", "0.9", "--db", "adir.duckdb"], ["adir.duckdb", "folder"]),
    (["restore", "1", "--db", "other.duckdb"], ["other.duckdb", "not a neardup catalog"]),
    (["import-embeddings", "v.npy", "--ids", "ids.txt", "--db", "nowhere/c.duckdb"], ["nowhere", "does not exist"]),
    (["import-embeddings", "v.npy", "--ids", "ids.txt", "--db", "v.npy/c.duckdb"], ["v.npy", "not a folder"]),
    (["estimate", "--db", "junk.duckdb"], ["junk.duckdb", "not a DuckDB database file"]),       # a read-only open
    (["match", "v.npy", "--ids", "ids.txt", "--against", "zero.duckdb"], ["zero.duckdb"]),
    (["review", "--no-browser", "--db", "junk.duckdb"], ["junk.duckdb"]),
    (["skipped", "--db", "adir.duckdb"], ["adir.duckdb", "folder"]),
    (["dedup", "-t", "0.9", "--db", "empty.duckdb"], ["empty.duckdb", "no embeddings yet"]),
    (["sweep", "--db", "empty.duckdb"], ["empty.duckdb", "no embeddings yet"]),
    (["export", "--db", "empty.duckdb"], ["empty.duckdb", "no applied run"]),
    (["cluster", "--db", "empty.duckdb"], ["empty.duckdb", "no embeddings yet"]),
    (["calibrate", "--sample", "5", "--out", "s.csv", "--db", "empty.duckdb"], ["empty.duckdb", "no embeddings"]),
    (["runs", "--db", "missing.duckdb"], ["missing.duckdb", "no catalog here"]),
    # thresholds and other numbers out of range
    (["dedup", "-t", "0"], ["threshold 0.0", "(0, 1]"]),
    (["dedup", "-t", "-1"], ["threshold -1.0"]),
    (["dedup", "-t", "nan"], ["threshold nan"]),
    (["dedup", "-t", "inf"], ["threshold inf"]),
    (["dedup", "-t", "0.9", "--mode", "bounded", "--bound", "2"], ["bound 2.0"]),
    (["dedup", "-t", "0.9", "--mode", "bounded", "--window", "-1"], ["--window -1.0"]),
    (["dedup", "-t", "0.9", "--mode", "bounded", "--window-link", "0"], ["--window-link 0.0"]),
    (["dedup", "-t", "0.9", "--bound", "0.5"], ["--bound", "components", "--mode bounded"]),  # not ignored
    (["dedup", "-t", "0.9", "--window", "2"], ["--window", "--mode bounded"]),
    (["dedup", "-t", "0.9", "--prefer", ""], ["--prefer is empty"]),      # was: policy "id" alone, silently
    (["dedup", "-t", "0.9", "--prefer", "score:up"], ["'score:up'"]),
    (["estimate", "-t", "0.9", "--seed", "-1"], ["--seed"]),              # was: numpy's ValueError traceback
    (["cluster", "--k", "2", "--seed", "-1"], ["--seed"]),
    (["calibrate", "--sample", "3", "--out", "s.csv", "--seed", "-1"], ["--seed"]),
    (["dedup", "-t", "0.9", "--group-score", "median"], ["'median'"]),
    (["dedup", "-t", "0.9", "--engine", "spark"], ["'spark'"]),
    (["sweep", "--thresholds", "0.9,abc"], ["'0.9,abc'"]),
    (["sweep", "--thresholds", "0.9", "--chosen", "3"], ["threshold 3.0"]),
    (["find", "adir", "-t", "2"], ["threshold 2.0"]),
    (["find", "adir", "--mode", "bogus"], ["'bogus'"]),                   # refused before the scan
    (["estimate", "-t", "2"], ["threshold 2.0"]),
    (["estimate", "-t", "0.9", "--sample", "0"], ["sample 0"]),
    (["estimate", "-t", "0.9", "--sample", "-5"], ["sample -5"]),
    (["match", "v.npy", "--ids", "ids.txt", "--against", "c.duckdb", "-t", "2"], ["threshold 2.0"]),
    (["pairs", "--band", "2:3"], ["band 2:3"]),
    (["pairs", "--band", "0.5:0.4"], ["band 0.5:0.4"]),
    (["pairs", "--band", "0.5:1", "--sample", "-1"], ["sample -1"]),
    (["cluster", "--k", "100"], ["k = 100", "30 images"]),
    (["calibrate", "--target-precision", "2"], ["--target-precision 2.0"]),
    (["calibrate", "--objective", "bogus"], ["'bogus'"]),
    # a model with no vectors here
    (["dedup", "-t", "0.9", "--model", "nosuch"], ["'nosuch'", "have: m"]),
    (["dedup", "-t", "0.9", "--model", "sscd"], ["'sscd'", "have: m"]),
    (["sweep", "--model", "nosuch"], ["'nosuch'"]),
    (["cluster", "--model", "nosuch"], ["'nosuch'"]),
    (["pairs", "--band", "0.5:1", "--model", "nosuch"], ["'nosuch'"]),
    (["estimate", "--model", "nosuch"], ["'nosuch'"]),
    (["match", "v.npy", "--ids", "ids.txt", "--against", "c.duckdb", "--model", "nosuch"], ["'nosuch'"]),
    (["calibrate", "--model", "nosuch"], ["'nosuch'"]),
    (["embed", "--model", "nosuch"], ["'nosuch'"]),
    # input paths: missing, a folder, empty, not the right format
    (["import-embeddings", "missing.npy", "--ids", "ids.txt"], ["missing.npy", "no such file"]),
    (["import-embeddings", "adir", "--ids", "ids.txt"], ["adir", "folder"]),
    (["import-embeddings", "bad.npy", "--ids", "ids.txt"], ["bad.npy"]),
    (["import-embeddings", "v.npy", "--ids", "empty.txt"], ["empty.txt", "0 ids"]),
    (["import-embeddings", "v.npy", "--ids", "adir"], ["adir", "folder"]),
    (["import-embeddings", "v.npy", "--ids", "ids.txt", "--meta", "adir"], ["adir", "folder"]),
    (["import-embeddings", "ids.txt", "--ids", "ids.txt"], ["ids.txt", "'.txt'"]),
    (["sweep", "--ids", "missing.txt"], ["missing.txt", "no such file"]),
    (["sweep", "--ids", "adir"], ["adir", "folder"]),
    (["sweep", "--ids", "empty.txt"], ["empty.txt", "no ids"]),
    (["pairs", "--band", "0.5:1", "--ids", "empty.txt"], ["empty.txt", "no ids"]),
    (["scan", "missing"], ["missing", "no such file or folder"]),
    (["find", "missing"], ["missing", "no such file or folder"]),
    (["match", "missing.npy", "--ids", "ids.txt", "--against", "c.duckdb"], ["missing.npy"]),
    (["calibrate", "--judgments", "missing.csv"], ["missing.csv", "no such file"]),
    (["calibrate", "--judgments", "adir"], ["adir"]),
    (["calibrate", "--judgments", "empty.txt"], ["empty.txt", "empty file"]),
    (["demo", "v.npy"], ["v.npy", "not a folder"]),
    # outputs to odd places
    (["export", "--out", "adir"], ["adir", "folder"]),
    (["export", "--out", "nowhere/g.csv"], ["nowhere", "does not exist"]),
    (["export", "--out", ""], ["folder"]),
    (["export", "--out", "g.xlsx"], ["'xlsx'"]),
    (["export", "--out", "g.csv", "--format", "xml"], ["'xml'"]),
    (["export", "--run", "99"], ["no run 99"]),
    (["report", "--out", "adir"], ["adir", "folder"]),
    (["report", "--out", "r.html", "--run", "99"], ["no run 99"]),
    (["sweep", "--thresholds", "0.9", "--plot", "adir"], ["adir", "folder"]),
    (["sweep", "--thresholds", "0.9", "--plot", "nowhere/p.png"], ["nowhere"]),
    (["pairs", "--band", "0.5:1", "--sheet", "nowhere/s.png"], ["nowhere"]),
    (["match", "v.npy", "--ids", "ids.txt", "--against", "c.duckdb", "--out", "adir"], ["adir", "folder"]),
    (["calibrate", "--sample", "5", "--out", "adir"], ["adir", "folder"]),
    (["calibrate", "--export", "adir"], ["adir", "folder"]),
    (["calibrate", "--judgments", "judged.csv", "--export", "adir"], ["adir", "folder"]),  # nothing stored first
    # restore: a run that is not there, one already restored, none named
    (["restore", "99"], ["no run 99"]),
    (["restore", "0"], ["no run 0"]),
    (["restore", "1"], ["run 1", "already restored"]),
    (["restore"], ["run id or --all"]),
    (["restore", "2", "--all"], ["run id or --all"]),
    # a command that would create the catalog, refused: no catalog is left behind
    (["import-embeddings", "missing.npy", "--ids", "ids.txt", "--db", "new.duckdb"], ["missing.npy"]),
    (["import-embeddings", "v.npy", "--ids", "empty.txt", "--db", "new.duckdb"], ["empty.txt", "0 ids"]),
    (["import-embeddings", "v.npy", "--ids", "ids.txt", "--model", "bad name", "--db", "new.duckdb"], ["'bad name'"]),
    (["scan", "missing", "--db", "new.duckdb"], ["missing", "no such file or folder"]),
    (["find", "missing", "--db", "new.duckdb"], ["missing", "no such file or folder"]),
    (["embed", "--model", "nosuch", "--db", "new.duckdb"], ["'nosuch'"]),
    # clusters before any clustering
    (["clusters"], ["no clusters yet", "neardup cluster"]),
    (["sweep", "--cluster", "3"], ["no clusters yet"]),
]


@pytest.mark.parametrize("args,needles", CASES, ids=[" ".join(a) or "''" for a, _ in CASES])
def test_bad_input_is_one_line_and_changes_nothing(folder: Path, capsys: pytest.CaptureFixture[str],
                                                   args: list[str], needles: list[str]) -> None:
    names_db = any(a in ("--db", "--against") for a in args) or args[0] == "demo"
    argv = args + ([] if names_db else ["--db", "c.duckdb"])
    before, files = catalogs(folder), sorted(p.name for p in folder.iterdir())
    code, _, err = run_cli(capsys, argv)
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert catalogs(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == files      # no file made (a catalog, an output, a .tmp)


def test_review_on_a_busy_port_is_one_line(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        before = catalogs(folder)
        code, _, err = run_cli(capsys, ["review", "--port", str(port), "--no-browser", "--db", "c.duckdb"])
    assert code == 2 and len(err) == 1
    assert f"127.0.0.1:{port}" in err[0] and "--port 0" in err[0]
    assert catalogs(folder) == before


def test_a_report_with_no_group_pages(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--groups 0 (its allowed minimum): the overview without group pages (was a ZeroDivisionError)."""
    code, out, err = run_cli(capsys, ["report", "--out", "r.html", "--groups", "0", "--db", "c.duckdb"])
    assert code == 0 and err == [] and "wrote r.html" in out
    assert "<html" in (folder / "r.html").read_text()[:2000].lower()


def test_a_refused_command_keeps_a_symlink_given_as_the_catalog(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--db names a symlink whose target does not exist yet: the refused command leaves the link alone
    (only a catalog file the command itself made is removed)."""
    (folder / "link.duckdb").symlink_to(folder / "target.duckdb")
    code, _, err = run_cli(capsys, ["import-embeddings", "missing.npy", "--ids", "ids.txt", "--db", "link.duckdb"])
    assert code == 2 and len(err) == 1 and "missing.npy" in err[0]
    assert (folder / "link.duckdb").is_symlink()
