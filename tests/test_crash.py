"""Interrupts and crashes: Ctrl-C at any moment gives exit 130 and one true line; kill -9 at any moment
leaves exactly the state before or after; a committed change is never reported as a failure; the
review server and CLI commands run side by side.

The subprocess trials run the installed `neardup` command (see crashkit.py); bench/crash_trials.py
runs many more of them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import crashkit as ck
from neardup import interrupts
from neardup.catalog import Catalog
from neardup.cli import main
from neardup.dedup import dedup
from neardup.ingest import import_embeddings

N, DIM = 4000, 64


# -- in-process: the commit itself -------------------------------------------------------------

@pytest.fixture(scope="module")
def vec_template(tmp_path_factory) -> Path:
    """A catalog with model ``m`` imported (v1) and one applied run, made once for the module."""
    db = tmp_path_factory.mktemp("crash-vec-template") / "cat.duckdb"
    with Catalog(db) as cat:
        import_embeddings(cat, ck.make_vectors(N, DIM, 1), [f"i{k}" for k in range(N)], model="m")
        dedup(cat, 0.95)
    return db


@pytest.fixture()
def vec_db(vec_template: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`vec_template` for one test."""
    return ck.copy_catalog(vec_template, tmp_path / "vec")


def _npy(db: Path) -> tuple[Path, Path]:
    d = db.with_name(db.name + ".d")
    return d / "ids.txt", d / "v2.npy"


def _write_v2(db: Path) -> tuple[Path, Path]:
    ids, v2 = _npy(db)
    ids.write_text("\n".join(f"i{k}" for k in range(N)) + "\n")
    np.save(v2, ck.make_vectors(N, DIM, 2))
    return ids, v2


def test_ctrl_c_during_commit_waits_for_it_and_says_it_was_kept(vec_db: Path, monkeypatch, capsys) -> None:
    """SIGINT arriving inside COMMIT: the commit finishes, then exit 130 with a line naming what was kept."""
    ids, v2 = _write_v2(vec_db)
    real = Catalog._commit

    def commit_with_ctrl_c(self: Catalog) -> None:
        os.kill(os.getpid(), signal.SIGINT)   # a terminal's Ctrl-C, right at the commit
        real(self)

    monkeypatch.setattr(Catalog, "_commit", commit_with_ctrl_c)
    with pytest.raises(SystemExit) as exc:
        main(["import-embeddings", str(v2), "--ids", str(ids), "--model", "m", "--db", str(vec_db)])
    monkeypatch.undo()
    assert exc.value.code == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [f"interrupted: committed before the stop and kept: stored {N:,} vector(s) for model m; "
                   "nothing else was written"]
    assert ck.integrity(vec_db) == []
    with Catalog(vec_db) as cat:
        e = cat.load_embeddings("m")
        assert e.version == 2
        from neardup.similarity.canonical import canonical_vectors

        np.testing.assert_array_equal(np.asarray(e.vectors), canonical_vectors(ck.make_vectors(N, DIM, 2)))


def test_commit_that_raises_after_landing_is_kept_and_the_interrupt_honoured(vec_db: Path, monkeypatch) -> None:
    """DuckDB can commit and then raise "Query interrupted": the new version file must stay (the
    catalog points to it), and the caller gets the interrupt, not an error."""
    real = Catalog._commit

    def commit_then_raise(self: Catalog) -> None:
        real(self)
        raise RuntimeError("Query interrupted")

    monkeypatch.setattr(Catalog, "_commit", commit_then_raise)
    with Catalog(vec_db) as cat, pytest.raises(KeyboardInterrupt):
        import_embeddings(cat, ck.make_vectors(N, DIM, 2), [f"i{k}" for k in range(N)], model="m")
    monkeypatch.undo()
    assert ck.integrity(vec_db) == []
    with Catalog(vec_db) as cat:
        assert cat.load_embeddings("m").version == 2
        assert dedup(cat, 0.95, dry_run=True).summary["images"] == N   # usable: the file is there


def test_commit_that_fails_leaves_the_old_version_and_the_new_file_is_collected(vec_db: Path, monkeypatch) -> None:
    before = ck.state(vec_db)

    def failing_commit(self: Catalog) -> None:
        raise RuntimeError("IO Error: could not write (disk full)")

    monkeypatch.setattr(Catalog, "_commit", failing_commit)
    with Catalog(vec_db) as cat, pytest.raises(RuntimeError, match="disk full"):
        import_embeddings(cat, ck.make_vectors(N, DIM, 2), [f"i{k}" for k in range(N)], model="m")
    monkeypatch.undo()
    emb = vec_db.with_name(vec_db.name + ".d") / "embeddings"
    assert (emb / "m.v2.npy").exists()                    # written, never referenced
    assert ck.same_state(ck.state(vec_db), before)
    with Catalog(vec_db):                                 # a read-write open collects it
        pass
    assert sorted(p.name for p in emb.iterdir()) == ["m.v1.npy"]


def test_vectors_and_their_source_record_commit_together(tmp_path: Path) -> None:
    """embed's vectors and `embedded_from` are one transaction: if the record fails, no vector lands."""
    from neardup.find import _commit, _ensure_table

    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.upsert_images(pa.table({"id": ["a", "b"], "path": ["/x/a.jpg", "/x/b.jpg"]}))
        vecs = ck.make_vectors(2, 8, 0)
        with pytest.raises(Exception, match="embedded_from"):   # table missing: the record fails
            _commit(cat, "m", ["a", "b"], vecs, ["sa", "sb"])
        assert cat.embedding_models() == []
        _ensure_table(cat)
        _commit(cat, "m", ["a", "b"], vecs, ["sa", "sb"])
        assert cat.scalar("SELECT count(*) FROM embedded_from") == 2
    assert ck.integrity(tmp_path / "c.duckdb") == []


def test_a_swallowed_ctrl_c_still_stops_the_command_before_its_commit(vec_db: Path, monkeypatch, capsys) -> None:
    """Something catches the KeyboardInterrupt (as a library import can): the command must not
    commit after it, and exits 130 saying nothing was changed."""
    import neardup.ingest as ingest

    before = ck.state(vec_db)
    ids, v2 = _write_v2(vec_db)
    real = ingest.normalise_rows

    def swallowing(*a, **k):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        except KeyboardInterrupt:
            pass                                          # swallowed
        return real(*a, **k)

    monkeypatch.setattr(ingest, "normalise_rows", swallowing)
    with pytest.raises(SystemExit) as exc:
        main(["import-embeddings", str(v2), "--ids", str(ids), "--model", "m", "--db", str(vec_db)])
    assert exc.value.code == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["interrupted: nothing was changed (the catalog is as it was before this command)"]
    assert ck.same_state(ck.state(vec_db), before)


def _stale_decision(db: Path) -> None:
    """A reviewer's keep on i1, then i1's vector changes: the next dedup sets that decision aside."""
    with Catalog(db) as cat:
        cat.add_override("i1", "keep")
        import_embeddings(cat, ck.make_vectors(8, DIM, 7)[:1], ["i1"], model="m")


def test_ctrl_c_during_a_dedup_that_sets_decisions_aside_leaves_them_in_place(vec_db: Path, monkeypatch, capsys) -> None:
    """Outdated reviewer decisions are set aside in the run's own transaction: a Ctrl-C during the
    similarity pass leaves them where they were, so "nothing was changed" is true."""
    import neardup.dedup as dedup_mod

    _stale_decision(vec_db)
    before = ck.state(vec_db)
    real = dedup_mod.similarity_forest

    def pass_with_ctrl_c(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C during the similarity pass
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(dedup_mod, "similarity_forest", pass_with_ctrl_c)
    with pytest.raises(SystemExit) as exc:
        main(["dedup", "-t", "0.96", "--db", str(vec_db)])
    monkeypatch.undo()
    assert exc.value.code == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["interrupted: nothing was changed (the catalog is as it was before this command)"]
    assert ck.same_state(ck.state(vec_db), before)
    with Catalog(vec_db, read_only=True) as cat:
        assert cat.scalar("SELECT count(*) FROM overrides_invalidated") == 0


def test_ctrl_c_at_the_commit_of_such_a_dedup_names_the_decisions_set_aside(vec_db: Path, monkeypatch, capsys) -> None:
    """The same dedup interrupted at its commit: the run and the setting aside landed together, and the line says both."""
    _stale_decision(vec_db)
    real = Catalog._commit

    def commit_with_ctrl_c(self: Catalog) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real(self)

    monkeypatch.setattr(Catalog, "_commit", commit_with_ctrl_c)
    with pytest.raises(SystemExit) as exc:
        main(["dedup", "-t", "0.96", "--db", str(vec_db)])
    monkeypatch.undo()
    assert exc.value.code == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["interrupted: committed before the stop and kept: set aside 1 outdated reviewer decision(s); "
                   "applied dedup run 2 (undo with `neardup restore 2`); run 1 replaced; nothing else was written"]
    with Catalog(vec_db, read_only=True) as cat:
        assert cat.con.execute("SELECT image_id, kind, reason FROM overrides_invalidated").fetchall() == \
            [("i1", "keep", "changed")]
        assert cat.scalar("SELECT count(*) FROM overrides") == 0
        assert [(r["id"], r["status"]) for r in cat.runs()] == [(1, "replaced"), (2, "applied")]
    assert ck.integrity(vec_db) == []


def test_ctrl_c_inside_an_import_is_delivered_after_it() -> None:
    """A SIGINT landing inside an import is held until the import is done, then raised (not lost)."""
    import importlib
    import sys
    import tempfile

    d = tempfile.mkdtemp()
    Path(d, "_nd_slow_mod.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                          "time.sleep(0.05)\nDONE = True\n")
    sys.path.insert(0, d)
    interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            mod = importlib.import_module("_nd_slow_mod")
            assert mod.DONE                               # the module finished importing
            time.sleep(2)                                 # the interrupt comes right after
        assert sys.modules["_nd_slow_mod"].DONE
        assert interrupts.requested()
    finally:
        interrupts.uninstall()
        sys.path.remove(d)


def test_a_ctrl_c_that_c_code_swallowed_is_delivered_again_silently(capsys) -> None:
    """C code that cannot propagate a KeyboardInterrupt reports it as "Exception ignored" (a __del__
    here; a DuckDB call back into Python in real life): no noise, and the interrupt still comes."""

    class Swallows:
        def __del__(self) -> None:
            raise KeyboardInterrupt

    interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            x = Swallows()
            del x                                         # the interpreter reports it as unraisable
            time.sleep(2)                                 # ... and it is raised again here
        assert interrupts.requested()
    finally:
        interrupts.uninstall()
    assert "Exception ignored" not in capsys.readouterr().err


# -- review server and CLI side by side --------------------------------------------------------

def _serve(db: Path):
    import uvicorn

    from neardup.review import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(db), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, t, f"http://127.0.0.1:{port}"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as r:
        assert r.status == 200
        return r.read().decode()


def test_cli_commands_work_while_the_review_server_serves(vec_db: Path, tmp_path: Path) -> None:
    server, thread, base = _serve(vec_db)
    stop = threading.Event()
    pages: list[int] = []

    def browse() -> None:                                 # someone keeps reloading pages meanwhile
        while not stop.is_set():
            _get(base + "/runs")
            pages.append(1)
            time.sleep(0.05)

    try:
        assert "run 1" in _get(base + "/runs").lower() or "/runs/1/" in _get(base + "/runs")
        b = threading.Thread(target=browse, daemon=True)
        b.start()
        db = str(vec_db)
        commands = (["runs", "--db", db], ["report", "--out", str(tmp_path / "r.html"), "--db", db],
                    ["export", "--out", str(tmp_path / "g.csv"), "--db", db], ["dedup", "-t", "0.97", "--db", db])
        # all at once: beside the server and beside each other (each waits its turn for the file)
        procs = [subprocess.Popen([ck.NEARDUP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for args in commands]
        for args, p in zip(commands, procs):
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, (args, err)
        stop.set()
        b.join(60)
        assert pages, "the pages were served meanwhile"
        html = _get(base + "/runs")
        assert "/runs/2/" in html                          # the CLI's new run shows on reload
        assert (tmp_path / "g.csv").read_text().count("\n") == N + 1
    finally:
        stop.set()
        server.should_exit = True
        thread.join(30)
    assert ck.integrity(vec_db) == []


def test_reapply_is_one_transaction(vec_db: Path, monkeypatch) -> None:
    """Re-apply = a new dedup run replacing the old one: when the dedup fails, the old run stays applied."""
    import re

    from fastapi.testclient import TestClient

    import neardup.dedup as dedup_mod
    from neardup.review import create_app

    before = ck.state(vec_db)
    app = create_app(vec_db)
    with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        tok = re.search(r'name="csrf" value="([^"]+)"', c.get("/runs").text).group(1)

        def failing(*a, **k):
            raise RuntimeError("boom in dedup")

        monkeypatch.setattr(dedup_mod, "dedup", failing)
        r = c.post("/runs/1/reapply", data={"csrf": tok}, follow_redirects=False)
        assert r.status_code == 500
        monkeypatch.undo()
        assert ck.same_state(ck.state(vec_db), before)     # run 1 still applied, nothing else changed
        r = c.post("/runs/1/reapply", data={"csrf": tok}, follow_redirects=False)
        assert r.status_code == 303
    app.state.holder.close()
    with Catalog(vec_db) as cat:   # nothing was decided: the same result, so run 1 stays in force and no run is added
        assert [(x["id"], x["status"]) for x in cat.runs()] == [(1, "applied")]
    assert ck.same_state(ck.state(vec_db), before)
    assert ck.integrity(vec_db) == []


# -- subprocess trials: real `neardup` processes, SIGINT and SIGKILL ---------------------------

@pytest.fixture(scope="module")
def vec_base(tmp_path_factory) -> dict:
    """A catalog (vectors, two applied runs), the files to re-import, and the state after each command
    (made by the same library calls the commands make)."""
    from neardup.catalog import Catalog as C

    root = tmp_path_factory.mktemp("crash-vec")
    db = root / "cat.duckdb"
    ids = root / "ids.txt"
    ids.write_text("\n".join(f"img{k:06d}" for k in range(N)) + "\n")
    np.save(root / "v2.npy", ck.make_vectors(N, DIM, 2))
    with C(db) as cat:
        import_embeddings(cat, ck.make_vectors(N, DIM, 1), ids.read_text().split(), model="m")
        dedup(cat, 0.95)
        dedup(cat, 0.97)
    steps = {"import-embeddings": lambda cat: import_embeddings(cat, root / "v2.npy", ids, model="m"),
             "dedup": lambda cat: dedup(cat, 0.96),
             "restore": lambda cat: cat.restore(None)}
    after = {}
    for name, step in steps.items():
        ref = ck.copy_catalog(db, root / f"ref-{name}")
        with C(ref) as cat:
            step(cat)
        after[name] = ck.state(ref)
    return dict(db=db, ids=ids, v2=root / "v2.npy", root=root, before=ck.state(db), after=after)


def _cmd(name: str, base: dict, db: Path) -> list[str]:
    return {"import-embeddings": ["import-embeddings", str(base["v2"]), "--ids", str(base["ids"]), "--model", "m"],
            "dedup": ["dedup", "-t", "0.96"],
            "restore": ["restore", "--all"]}[name] + ["--db", str(db)]


VEC_TRIALS = [
    ("import-embeddings", signal.SIGINT, "t", 1.2),
    ("import-embeddings", signal.SIGINT, "wal", 0.0),      # at the commit
    ("import-embeddings", signal.SIGKILL, "npy", 0.001),   # new version file written, commit not yet done
    ("dedup", signal.SIGINT, "t", 1.0),         # while it starts or during the similarity pass
    ("dedup", signal.SIGINT, "wal", 0.0),
    ("dedup", signal.SIGKILL, "wal", 0.0),
    ("restore", signal.SIGINT, "wal", 0.0),
    ("restore", signal.SIGINT, "t", 0.8),
]


@pytest.mark.parametrize("command,sig,moment,delay", VEC_TRIALS,
                         ids=[f"{c}-{signal.Signals(s).name}-{m}+{d:g}" for c, s, m, d in VEC_TRIALS])
def test_interrupt_or_kill_a_command_on_vectors(vec_base: dict, tmp_path: Path, command, sig, moment, delay) -> None:
    db = ck.copy_catalog(vec_base["db"], tmp_path / "trial")
    trial = ck.run_trial(ck.Trial(command, _cmd(command, vec_base, db), sig, moment, delay), db)
    probs = ck.check_trial(trial, db, vec_base["before"], vec_base["after"][command])
    assert probs == [], (trial.label, trial.rc, trial.stderr[-500:])
    # the next command works: a read-write open after the kill (what a next CLI command does first)
    with Catalog(db) as cat:
        assert dedup(cat, 0.95, dry_run=True).summary["images"] == N


@pytest.fixture(scope="module")
def img_base(tmp_path_factory) -> dict:
    """A folder of images; a catalog with them scanned (for embed trials); the after-states."""
    from neardup.find import embed
    from neardup.sources import scan

    root = tmp_path_factory.mktemp("crash-img")
    photos = ck.build_image_folder(root / "photos", 16)
    empty = root / "empty" / "cat.duckdb"
    empty.parent.mkdir()
    Catalog(empty).close()
    done = ck.copy_catalog(empty, root / "done")
    with Catalog(done) as cat:
        scan(cat, [photos])
    after_scan = ck.state(done)
    scanned = ck.copy_catalog(done, root / "scanned")
    with Catalog(done) as cat:
        embed(cat, ck.EMBED_MODEL)
    return dict(photos=photos, empty=empty, scanned=scanned, after_scan=after_scan, after_embed=ck.state(done))


IMG_TRIALS = [
    ("scan", signal.SIGINT, "t", 1.5),
    ("embed", signal.SIGKILL, "npy", 0.002),
    ("embed", signal.SIGINT, "npy", 0.3),     # after the first chunk's commit
    ("find", signal.SIGINT, "npy", 0.0),      # scanned and one chunk of vectors stored, no run yet
    ("find", signal.SIGINT, "npy", 0.5),
]


def test_ctrl_c_before_anything_is_committed_leaves_no_catalog_it_made(img_base: dict, tmp_path: Path,
                                                                        monkeypatch, capsys) -> None:
    """`scan` into a new catalog, interrupted before its first commit: the catalog it made is removed,
    so "nothing was changed" holds for the folder too."""
    import neardup.sources as sources

    real = sources.scan

    def scan_with_ctrl_c(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(sources, "scan", scan_with_ctrl_c)
    db = tmp_path / "new.duckdb"
    with pytest.raises(SystemExit) as exc:
        main(["scan", str(img_base["photos"]), "--db", str(db)])
    assert exc.value.code == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["interrupted: nothing was changed (the catalog is as it was before this command)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command,sig,moment,delay", IMG_TRIALS,
                         ids=[f"{c}-{signal.Signals(s).name}-{m}+{d:g}" for c, s, m, d in IMG_TRIALS])
def test_interrupt_or_kill_scan_and_embed(img_base: dict, tmp_path: Path, command, sig, moment, delay) -> None:
    photos = str(img_base["photos"])
    if command == "scan":
        db = ck.copy_catalog(img_base["empty"], tmp_path / "trial")
        args = ["scan", photos, "--workers", "1", "--db", str(db)]
    elif command == "find":
        db = ck.copy_catalog(img_base["empty"], tmp_path / "trial")
        args = ["find", photos, "--model", ck.EMBED_MODEL, "--db", str(db)]
    else:
        db = ck.copy_catalog(img_base["scanned"], tmp_path / "trial")
        args = ["embed", "--model", ck.EMBED_MODEL, "--chunk-size", "4", "--batch-size", "4", "--db", str(db)]
    before = ck.state(db)
    trial = ck.run_trial(ck.Trial(command, args, sig, moment, delay, multi_commit=True), db)
    probs = ck.check_trial(trial, db, before, img_base.get(f"after_{command}"),
                           rerun=args if command != "find" else None)
    assert probs == [], (trial.label, trial.rc, trial.stderr[-500:])
    if trial.rc == 130:   # what the line says was kept is there
        import re

        said = trial.stderr.strip().splitlines()[-1]
        with Catalog(db, read_only=True) as cat:
            runs = {r["id"]: r["status"] for r in cat.runs()}
            vectors = {m["model"]: m["count"] for m in cat.embedding_models()}
        for run_id in re.findall(r"applied dedup run (\d+)", said):
            assert runs.get(int(run_id)) == "applied", (said, runs)
        if "stored" not in said:
            assert ck.EMBED_MODEL not in vectors, (said, vectors)
