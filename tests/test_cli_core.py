"""The core command shapes from the issue, end to end, and their one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.csv as pacsv
import pytest
from reference import reference_groups, same_partition

from neardup import Catalog
from neardup.cli import main
from neardup.synthetic import seed_shaped


def run(capsys, *args):
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def files(tmp_path):
    c = seed_shaped(1200, 48, seed=11)
    np.save(tmp_path / "vectors.npy", c.vectors * 7.0)
    (tmp_path / "ids.txt").write_text("\n".join(c.ids) + "\n")
    pacsv.write_csv(c.meta_table(), tmp_path / "meta.csv")
    return c, tmp_path


def test_the_whole_core_flow(capsys, files):
    c, d = files
    db = str(d / "cat.duckdb")
    code, out, _ = run(capsys, "import-embeddings", str(d / "vectors.npy"), "--ids", str(d / "ids.txt"),
                       "--meta", str(d / "meta.csv"), "--db", db)
    assert code == 0 and "1,200 new" in out
    code, out, _ = run(capsys, "sweep", "--thresholds", "0.99,0.98,0.97,0.95", "--json", "--db", db)
    rows = json.loads(out)
    assert [r["threshold"] for r in rows] == [0.99, 0.98, 0.97, 0.95]
    assert all(set(r) == {"threshold", "pairs", "groups", "suppressed", "retained", "largest_group"} for r in rows)
    labels, _ = reference_groups(c.vectors, 0.98)
    assert rows[1]["retained"] == len(np.unique(labels))
    code, out, _ = run(capsys, "dedup", "--threshold", "0.98", "--mode", "leader", "--prefer", "score,brightness",
                       "--dry-run", "--db", db)
    assert code == 0 and "dry run" in out
    code, out, _ = run(capsys, "dedup", "--threshold", "0.98", "--db", db)
    assert code == 0 and "run 1 applied" in out and "weakest link" in out
    code, out, _ = run(capsys, "runs", "--json", "--db", db)
    assert [r["status"] for r in json.loads(out)] == ["applied"]
    code, out, _ = run(capsys, "export", "--run", "1", "--format", "csv", "--out", str(d / "g.csv"), "--db", db)
    t = pacsv.read_csv(d / "g.csv")
    assert t.num_rows == 1200
    grp = dict(zip(t["image_id"].to_pylist(), t["group_id"].to_pylist()))
    # an image with no duplicate has no group number: it is a part of its own
    assert same_partition(np.array([str(grp[i]) if grp[i] is not None else f"alone {i}" for i in c.ids]), labels)
    assert len({g for g in grp.values() if g is not None}) == int((np.bincount(labels) >= 2).sum())
    with Catalog(db) as cat:
        assert cat.scalar("SELECT count(*) FROM visible") == len(np.unique(labels))
    code, out, _ = run(capsys, "restore", "1", "--db", db)
    assert code == 0 and "1,200 of 1,200 images visible" in out
    code, out, _ = run(capsys, "restore", "--all", "--db", db)
    assert code == 0


@pytest.mark.parametrize("args,message", [
    (["dedup", "--threshold", "1.5"], "threshold 1.5 is outside (0, 1]"),
    (["sweep", "--thresholds", "0.9,abc"], "give numbers separated by commas"),
    (["restore", "9"], "no run 9"),
    (["restore"], "give a run id or --all"),
    (["export", "--run", "4", "--out", "x.csv"], "no run 4"),
    (["dedup", "--threshold", "0.9", "--mode", "magic"], "mode 'magic'"),
])
def test_errors_are_one_line(capsys, files, args, message):
    c, d = files
    db = str(d / "cat.duckdb")
    run(capsys, "import-embeddings", str(d / "vectors.npy"), "--ids", str(d / "ids.txt"), "--db", db)
    code, out, err = run(capsys, *args, "--db", db)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_catalog_is_a_clear_error(capsys, tmp_path):
    code, _, err = run(capsys, "sweep", "--db", str(tmp_path / "nope.duckdb"))
    assert code == 2 and "no catalog here" in err
    assert not (tmp_path / "nope.duckdb").exists()


def test_every_command_has_help():
    out = subprocess.run([sys.executable, "-m", "neardup", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("import-embeddings", "sweep", "dedup", "runs", "restore", "export"):
        h = subprocess.run([sys.executable, "-m", "neardup", cmd, "--help"], capture_output=True, text=True)
        assert h.returncode == 0 and "Usage" in h.stdout and len(h.stdout) > 300, cmd
