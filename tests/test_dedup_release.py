"""dedup with ``release``: the catalog file is free for other processes (the review server) during
the similarity pass; the run is recorded only if what the pass read is unchanged, else the pass is
computed again with the file held; Ctrl-C during the pass leaves the catalog as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import crashkit as ck
from neardup.catalog import Catalog
from neardup.dedup import dedup
from neardup.ingest import import_embeddings
from reference import reference_groups, same_partition

N, DIM, T = 2000, 32, 0.95

#: Opens the catalog read-write without waiting (as a review request does, but refusing at once).
OPEN_NOW = ("import sys; from neardup.catalog import Catalog\n"
            "with Catalog(sys.argv[1], wait=0) as cat: print(cat.count_images())\n")
#: Records a reviewer decision (keep) on an image, in another process.
KEEP = ("import sys; from neardup.catalog import Catalog\n"
        "with Catalog(sys.argv[1], wait=60) as cat: cat.add_override(sys.argv[2], 'keep')\n")


@pytest.fixture()
def vec_db(tmp_path: Path) -> tuple[Path, np.ndarray, list[str]]:
    X = ck.make_vectors(N, DIM, 5)
    ids = [f"i{k:05d}" for k in range(N)]
    db = tmp_path / "cat.duckdb"
    with Catalog(db) as cat:
        import_embeddings(cat, X, ids, model="m")
    return db, X, ids


def _py(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def _during_pass(action):
    """A progress callback that runs ``action()`` once, in the middle of the similarity pass."""
    out: list = []

    def progress(done: int, total: int) -> None:
        if not out:
            out.append(action())
    return progress, out


def _groups_match_reference(members: pa.Table, X: np.ndarray, ids: list[str]) -> bool:
    gid = dict(zip(members["image_id"].to_pylist(), members["group_id"].to_pylist()))
    labels, _ = reference_groups(X, T)
    return same_partition(np.array([gid[i] for i in ids]), labels)


def test_another_process_opens_the_catalog_while_dedup_computes(vec_db) -> None:
    db, X, ids = vec_db
    progress, seen = _during_pass(lambda: _py(OPEN_NOW, str(db)))
    with Catalog(db) as cat:
        res = dedup(cat, T, progress=progress, release=True)
        assert cat.run(res.run_id)["status"] == "applied"
        members = cat.run_members(res.run_id)
    assert seen, "the pass reported progress"
    assert seen[0].returncode == 0, seen[0].stderr[-800:]
    assert seen[0].stdout.strip() == str(N)
    assert "recomputed" not in res.summary
    assert _groups_match_reference(members, X, ids)
    assert ck.integrity(db) == []


def test_without_release_the_catalog_is_held_for_the_whole_pass(vec_db) -> None:
    """The contrast (what the review server met before): the same reader is refused at once."""
    db, _, _ = vec_db
    progress, seen = _during_pass(lambda: _py(OPEN_NOW, str(db)))
    with Catalog(db) as cat:
        dedup(cat, T, progress=progress)
    assert seen and seen[0].returncode != 0 and "in use by another neardup process" in seen[0].stderr


def test_a_change_during_the_pass_is_seen_and_the_pass_computed_again(vec_db) -> None:
    """A reviewer keeps an image while the pass runs: the run recorded respects the decision."""
    db, X, ids = vec_db
    with Catalog(ck.copy_catalog(db, db.parent / "copy")) as cat:  # (on a copy: the pass is not cached here)
        dry = dedup(cat, T, dry_run=True)
    supp = dry.members.filter(pa.compute.field("is_suppressed"))["image_id"].to_pylist()
    target = supp[0]  # suppressed unless kept
    progress, seen = _during_pass(lambda: _py(KEEP, str(db), target))
    with Catalog(db) as cat:
        res = dedup(cat, T, progress=progress, release=True)
        assert seen and seen[0].returncode == 0, seen[0].stderr[-800:]
        assert "changed during the similarity pass (decisions)" in res.summary["recomputed"]
        assert cat.overrides()["keep"] == {target}
        row = dict(zip(*cat.sql("SELECT image_id, is_suppressed FROM run_members WHERE run_id = ?",
                                [res.run_id]).to_pydict().values()))
        assert row[target] is False and sum(row.values()) == len(supp) - 1
        assert not cat.one("SELECT is_suppressed FROM images WHERE id = ?", [target])[0]
        assert [(r["id"], r["status"]) for r in cat.runs()] == [(res.run_id, "applied")]  # one run, no stale one
        assert cat.run(res.run_id)["summary"]["recomputed"] == res.summary["recomputed"]
        assert _groups_match_reference(cat.run_members(res.run_id), X, ids)
    assert ck.integrity(db) == []


def test_ctrl_c_during_a_released_pass_leaves_the_catalog_as_it_was(vec_db) -> None:
    db, _, _ = vec_db
    with Catalog(db) as cat:
        dedup(cat, 0.97)
    before = ck.state(db)

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    cat = Catalog(db)
    with pytest.raises(KeyboardInterrupt):
        dedup(cat, T, progress=stop, release=True)
    cat.close()
    assert ck.same_state(ck.state(db), before)
    assert ck.integrity(db) == []
    with Catalog(db) as cat:
        assert dedup(cat, T).run_id == 2


def test_inside_a_transaction_the_file_is_not_released(vec_db) -> None:
    """Re-apply runs dedup inside its transaction: there the file stays held (and the run lands with it)."""
    db, _, _ = vec_db
    progress, seen = _during_pass(lambda: _py(OPEN_NOW, str(db)))
    with Catalog(db) as cat:
        with cat.transaction():
            res = dedup(cat, T, progress=progress, release=True)
        assert cat.run(res.run_id)["status"] == "applied"
    assert seen and seen[0].returncode != 0


def test_the_connection_is_not_usable_while_released(vec_db) -> None:
    from neardup.errors import CatalogError

    db, _, _ = vec_db
    with Catalog(db) as cat:
        with cat.released():
            with pytest.raises(CatalogError, match="released"):
                cat.count_images()
            assert _py(OPEN_NOW, str(db)).returncode == 0
        assert cat.count_images() == N
        with cat.transaction(), pytest.raises(RuntimeError, match="inside a transaction"):
            with cat.released():
                pass


def test_the_cli_dedup_says_when_the_pass_was_computed_again(vec_db, monkeypatch, capsys) -> None:
    """`neardup dedup` lets go of the file; a decision recorded meanwhile: one line says so, exit 0."""
    import neardup.dedup as dedup_mod
    from test_cli_core import run

    db, _, ids = vec_db
    real = dedup_mod.similarity_forest
    seen: list = []

    def pass_with_a_reviewer(catalog, *a, **k):
        if not seen:  # while this process has let go of the file: another process writes to it
            seen.append(_py(KEEP, str(db), ids[1]))
        return real(catalog, *a, **k)

    monkeypatch.setattr(dedup_mod, "similarity_forest", pass_with_a_reviewer)
    code, out, err = run(capsys, "dedup", "-t", str(T), "--db", str(db))
    assert seen and seen[0].returncode == 0, seen[0].stderr[-800:]
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "changed during" in ln]
    assert lines == [f"{db}: the catalog changed during the similarity pass (decisions); computed again with the "
                     "catalog held"]
    with Catalog(db) as cat:
        assert cat.overrides()["keep"] == {ids[1]}
        assert not cat.one("SELECT is_suppressed FROM images WHERE id = ?", [ids[1]])[0]
