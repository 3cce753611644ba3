"""Bad input through the installed command: one line naming the file/row/column, catalog unchanged.

Each refusal is checked twice: the message (exit 2, one stderr line, no traceback, the names it
must carry) and the catalog (every table's columns and rows, and the sidecar's files, snapshotted
before and after).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from clirun import assert_one_line_usage_error, neardup
from PIL import Image

from neardup import Catalog
from neardup.dedup import dedup
from neardup.errors import InputError
from neardup.ingest import import_embeddings
from neardup.sources import scan

N, DIM = 12, 8


def snapshot(db: Path) -> dict[str, Any]:
    """Every table's columns (with types) and rows, plus the sidecar's file names and sizes (no tables
    where there is no catalog file)."""
    out: dict[str, Any] = {}
    if db.exists():
        con = duckdb.connect(str(db), read_only=True)
        try:
            for (name,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall():
                cols = con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                   "WHERE table_name = ? ORDER BY ordinal_position", [name]).fetchall()
                rows = con.execute(f'SELECT * FROM "{name}"').fetchall()
                out[name] = (cols, sorted(rows, key=repr))
        finally:
            con.close()
    side = db.with_name(db.name + ".d")
    out["sidecar"] = sorted((str(p.relative_to(side)), p.stat().st_size) for p in side.rglob("*") if p.is_file()) \
        if side.exists() else None
    return out


def make_vectors(d: Path) -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(N // 2, DIM))
    v = np.concatenate([base, base + 0.01 * rng.normal(size=base.shape)]).astype(np.float32)  # 6 near-pairs
    np.save(d / "v.npy", v)
    (d / "ids.txt").write_text("\n".join(f"i{k}" for k in range(N)) + "\n")


@pytest.fixture
def emb(tmp_path: Path) -> Path:
    """A catalog of imported vectors whose earlier import gave it a BIGINT column ``lens``."""
    make_vectors(tmp_path)
    (tmp_path / "meta0.csv").write_text("id,score,lens\ni0,0.5,35\ni1,0.7,50\n")
    with Catalog(tmp_path / "c.duckdb") as cat:  # set up in-process: only the command under test runs as one
        import_embeddings(cat, tmp_path / "v.npy", tmp_path / "ids.txt", meta=tmp_path / "meta0.csv")
    return tmp_path


META_CASES = [
    ("id,Score,score\ni0,1,2\n", ["'Score'", "'score'"]),                    # clash inside the file
    ("id,Score\ni0,1\n", ["'Score'", "'score'"]),                            # clash with the catalog's column
    ("id,IS_SUPPRESSED\ni0,true\n", ["'IS_SUPPRESSED'"]),                     # reserved, any case
    ("id,Cluster_Id\ni0,3\n", ["'Cluster_Id'"]),                              # reserved, any case
    ("id,lens\ni0,5\ni1,abc\n", ["'lens'", "row 1", "'abc'"]),                # type clash with an earlier import
    ("id,captured_at\ni0,2020-01-01\ni1,not a date\n", ["'captured_at'", "row 1", "'not a date'"]),
    ("id,width\ni0,3\ni1,wide\n", ["'width'", "row 1", "'wide'"]),
    ("id,bad name\ni0,1\n", ["'bad name'"]),                                  # not a column name
]


@pytest.mark.parametrize("text,needles", META_CASES, ids=[t.splitlines()[0] for t, _ in META_CASES])
def test_meta_column_clash_is_one_line_and_changes_nothing(emb: Path, text: str, needles: list[str]) -> None:
    (emb / "meta.csv").write_text(text)
    before = snapshot(emb / "c.duckdb")
    res = neardup("import-embeddings", "v.npy", "--ids", "ids.txt", "--meta", "meta.csv", "--db", "c.duckdb", cwd=emb)
    line = assert_one_line_usage_error(res, "meta.csv", *needles)
    assert "ROLLBACK" not in line
    assert snapshot(emb / "c.duckdb") == before


def test_upsert_images_refuses_a_clash_before_writing(emb: Path) -> None:
    import pyarrow as pa

    before = snapshot(emb / "c.duckdb")
    with Catalog(emb / "c.duckdb") as cat:
        with pytest.raises(InputError, match="'Lens' clashes with the catalog's column 'lens'"):
            cat.upsert_images(pa.table({"id": ["i0"], "Lens": [1]}))
        with pytest.raises(InputError, match=r"images row 1, column 'height': 'tall'"):
            cat.upsert_images(pa.table({"id": ["i0", "i1"], "height": ["4", "tall"]}))
        assert cat.upsert_images(pa.table({"id": ["i0"], "lens": ["42"]})) == (0, 1)  # a castable string is fine
        assert cat.scalar("SELECT lens FROM images WHERE id = 'i0'") == 42
    after = snapshot(emb / "c.duckdb")
    assert [r for r in after["images"][1] if r[0] != "i0"] == [r for r in before["images"][1] if r[0] != "i0"]


# -- scans ---------------------------------------------------------------------------------------

def jpeg(path: Path | bytes, colour: tuple[int, int, int]) -> None:
    Image.new("RGB", (40, 30), colour).save(os.fsdecode(path), "JPEG")


@pytest.fixture
def scanned(tmp_path: Path) -> Path:
    """A folder of two photos, scanned into c.duckdb."""
    (tmp_path / "imgs").mkdir()
    jpeg(tmp_path / "imgs" / "a.jpg", (200, 20, 20))
    jpeg(tmp_path / "imgs" / "b.jpg", (20, 200, 20))
    with Catalog(tmp_path / "c.duckdb") as cat:
        scan(cat, [tmp_path / "imgs"], workers=1)
    return tmp_path


SCAN_CASES = [
    ("path,Score\nimgs/a.jpg,1\n", ["'Score'", "'score'"]),
    ("path,is_suppressed\nimgs/a.jpg,true\n", ["'is_suppressed'"]),
    ("path,Status\nimgs/a.jpg,ok\n", ["'Status'"]),                          # set by the scan itself
    ("path,captured_at\nimgs/a.jpg,2020-01-01\nimgs/b.jpg,not a date\n", ["'captured_at'", "row 3", "'not a date'"]),
    ("path,lens\nimgs/a.jpg,35\nimgs/b.jpg,zoom\n", ["'lens'", "row 3", "'zoom'"]),  # BIGINT from the first list
    ("path,Path\nimgs/a.jpg,x\n", ["'Path'"]),
]


@pytest.mark.parametrize("text,needles", SCAN_CASES, ids=[t.splitlines()[0] for t, _ in SCAN_CASES])
def test_scan_list_column_clash_is_one_line_and_changes_nothing(scanned: Path, text: str, needles: list[str]) -> None:
    (scanned / "first.csv").write_text("path,lens\nimgs/a.jpg,35\n")
    with Catalog(scanned / "c.duckdb") as cat:
        scan(cat, [scanned / "first.csv"], workers=1)
    (scanned / "list.csv").write_text(text)
    before = snapshot(scanned / "c.duckdb")
    res = neardup("scan", "list.csv", "--db", "c.duckdb", cwd=scanned)
    assert_one_line_usage_error(res, "list.csv", *needles)
    assert snapshot(scanned / "c.duckdb") == before


def test_scan_list_values_are_stored_in_the_catalogs_types(scanned: Path) -> None:
    # Not refused: a date as text goes into the TIMESTAMP column; an all-empty new column is kept.
    (scanned / "list.csv").write_text("path,captured_at,note\nimgs/a.jpg,2021-05-01 10:00:00,\nimgs/b.jpg,,\n")
    res = neardup("scan", "list.csv", "--db", "c.duckdb", cwd=scanned)
    assert res.returncode == 0, res.stderr
    con = duckdb.connect(str(scanned / "c.duckdb"), read_only=True)
    rows = dict(con.execute("SELECT path, CAST(captured_at AS VARCHAR) FROM images").fetchall())
    note_type = con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'images' "
                            "AND column_name = 'note'").fetchall()
    con.close()
    assert rows[str((scanned / "imgs" / "a.jpg").resolve())] == "2021-05-01 10:00:00"
    assert note_type == [("VARCHAR",)]


def test_a_file_name_that_is_not_utf8_is_skipped_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    jpeg(tmp_path / "imgs" / "a.jpg", (200, 20, 20))
    raw_dir = os.fsencode(tmp_path / "imgs")
    try:
        jpeg(raw_dir + b"/\xff\xfe.jpg", (20, 200, 20))
        os.mkdir(raw_dir + b"/sub\xfe")
        jpeg(raw_dir + b"/sub\xfe/c.jpg", (20, 20, 200))
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    for _ in range(2):  # and a re-scan is just as calm
        res = neardup("scan", "imgs", "--db", "c.duckdb", cwd=tmp_path)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        assert "2 skipped" in res.stdout + res.stderr
    con = duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True)
    paths = [r[0] for r in con.execute("SELECT path FROM images").fetchall()]
    skipped = dict(con.execute("SELECT path, reason FROM skipped").fetchall())
    con.close()
    assert paths == [str((tmp_path / "imgs" / "a.jpg").resolve())]
    shown = {os.path.basename(os.path.dirname(p)) + "/" + os.path.basename(p): r for p, r in skipped.items()}
    assert set(shown) == {"imgs/\\xff\\xfe.jpg", "sub\\xfe/c.jpg"}
    assert all("not valid UTF-8" in r for r in shown.values())
    listed = neardup("skipped", "--db", "c.duckdb", cwd=tmp_path)
    assert listed.returncode == 0 and "2 skipped" in listed.stdout and "Traceback" not in listed.stderr


PIPE_CASES = [  # (what is given, the name the line must carry, what it must call it)
    ("list.txt", "list.txt", "named pipe"),
    ("table.csv", "table.csv", "named pipe"),
    ("/dev/zero", "/dev/zero", "device"),
    ("--ids", "fifo.txt", "named pipe"),
    ("--meta", "fifo.csv", "named pipe"),
]


@pytest.mark.parametrize("what,name,kind", PIPE_CASES, ids=[c[0] for c in PIPE_CASES])
def test_a_pipe_or_device_as_input_is_refused_at_once(emb: Path, what: str, name: str, kind: str) -> None:
    before = snapshot(emb / "c.duckdb")
    if not name.startswith("/dev"):
        os.mkfifo(emb / name)
    args = {"--ids": ["import-embeddings", "v.npy", "--ids", name],
            "--meta": ["import-embeddings", "v.npy", "--ids", "ids.txt", "--meta", name]}.get(what, ["scan", name])
    res = neardup(*args, "--db", "c.duckdb", cwd=emb, timeout=30)  # a blocked read would time out here
    assert_one_line_usage_error(res, name, kind)
    assert snapshot(emb / "c.duckdb") == before


def test_a_pipe_inside_a_scanned_folder_is_skipped_not_read(scanned: Path) -> None:
    os.mkfifo(scanned / "imgs" / "pipe.jpg")
    res = neardup("scan", "imgs", "--db", "c.duckdb", cwd=scanned, timeout=30)
    assert res.returncode == 0, res.stderr
    con = duckdb.connect(str(scanned / "c.duckdb"), read_only=True)
    reason = con.execute("SELECT reason FROM skipped WHERE path LIKE '%pipe.jpg'").fetchall()
    con.close()
    assert reason and "not a regular file" in reason[0][0]


# -- export --------------------------------------------------------------------------------------

@pytest.fixture
def with_run(emb: Path) -> Path:
    with Catalog(emb / "c.duckdb") as cat:
        assert dedup(cat, 0.99).summary["groups"] == N // 2
    return emb


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case", ["missing folder", "a folder", "unwritable", "a pipe", "a device"])
def test_export_to_a_bad_place_is_one_line_and_leaves_no_tmp(with_run: Path, case: str) -> None:
    d = with_run
    (d / "outdir").mkdir()
    if case == "a pipe":
        os.mkfifo(d / "pipe.csv")
    if case == "a device":
        # A private node of the null device: a regression that renames over its target must
        # never get to replace the machine's own /dev/null.
        try:
            os.mknod(d / "null.csv", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except (PermissionError, AttributeError):
            pytest.skip("cannot make a device node here (needs root)")
    out = {"missing folder": str(d / "nowhere" / "g.csv"), "a folder": str(d / "outdir"),
           "unwritable": "/proc/self/groups.csv", "a pipe": str(d / "pipe.csv"), "a device": str(d / "null.csv")}[case]
    files_before, before = all_files(d), snapshot(d / "c.duckdb")
    res = neardup("export", "--out", out, "--format", "csv", "--db", "c.duckdb", cwd=d, timeout=30)
    assert_one_line_usage_error(res, out)
    assert all_files(d) == files_before and not list(d.rglob("*.tmp"))
    assert snapshot(d / "c.duckdb") == before


@pytest.mark.parametrize("out", ["outdir", "/proc/self/report.html"])
def test_report_to_a_bad_place_is_one_line_and_leaves_no_tmp(with_run: Path, out: str) -> None:
    (with_run / "outdir").mkdir()
    outside = lambda: [f for f in all_files(with_run) if not f.startswith("c.duckdb.d")]  # noqa: E731 (caches may grow)
    files_before = outside()
    res = neardup("report", "--out", out, "--db", "c.duckdb", cwd=with_run)
    assert_one_line_usage_error(res, out)
    assert outside() == files_before and not [f for f in all_files(with_run) if f.endswith(".tmp")]


def test_export_unwritable_folder_as_a_user(with_run: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; /proc/self covers the unwritable case")
    ro = with_run / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = neardup("export", "--out", str(ro / "g.csv"), "--db", "c.duckdb", cwd=with_run)
        assert_one_line_usage_error(res, "g.csv")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_export_replaces_an_existing_file_whole(with_run: Path) -> None:
    (with_run / "g.csv").write_text("old\n")
    res = neardup("export", "--out", "g.csv", "--db", "c.duckdb", cwd=with_run)
    assert res.returncode == 0, res.stderr
    lines = (with_run / "g.csv").read_text().splitlines()
    assert lines[0].startswith('"image_id"') and len(lines) == N + 1
    assert not [p for p in with_run.iterdir() if p.name.endswith(".tmp")]


# -- overrides -----------------------------------------------------------------------------------

@pytest.mark.parametrize("marked", [N, N - 1])
def test_dedup_when_every_image_is_marked_not_a_duplicate(emb: Path, marked: int) -> None:
    # Without the marks there are 6 near-duplicate pairs; with (almost) every image marked there
    # is nothing left to group: every image is its own master, nothing is suppressed.
    with Catalog(emb / "c.duckdb") as cat:
        for k in range(marked):
            cat.add_override(f"i{k}", "not_duplicate")
    res = neardup("dedup", "--threshold", "0.99", "--json", "--db", "c.duckdb", cwd=emb)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    import json

    summary = json.loads(res.stdout)
    assert (summary["groups"], summary["suppressed"], summary["retained"]) == (0, 0, N)
    with Catalog(emb / "c.duckdb") as cat:
        members = cat.run_members(summary["run_id"]).to_pylist()
        assert sorted(m["image_id"] for m in members) == sorted(f"i{k}" for k in range(N))
        assert all(m["is_master"] and not m["is_suppressed"] for m in members)
        assert cat.scalar("SELECT count(*) FROM visible") == N


# -- a catalog without its sidecar folder --------------------------------------------------------

@pytest.mark.parametrize("args", [["dedup", "--threshold", "0.99"], ["sweep"], ["pairs", "--band", "0.9:1"],
                                  ["import-embeddings", "../v.npy", "--ids", "../ids.txt"], ["scan", "../imgs"]])
def test_a_catalog_moved_without_its_sidecar_names_the_folder(emb: Path, args: list[str]) -> None:
    moved = emb / "moved"
    moved.mkdir()
    (emb / "imgs").mkdir()
    jpeg(emb / "imgs" / "a.jpg", (1, 2, 3))
    shutil.copy(emb / "c.duckdb", moved / "c.duckdb")
    before = snapshot(moved / "c.duckdb")
    res = neardup(*args, "--db", "c.duckdb", cwd=moved)
    assert_one_line_usage_error(res, "c.duckdb.d", "missing")
    assert snapshot(moved / "c.duckdb") == before and not (moved / "c.duckdb.d").exists()
