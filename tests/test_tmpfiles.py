"""Temporary files of the forest cache: a killed writer's are removed at the next write; a live
writer's (locked) and brand-new ones are kept; a failed write leaves no temporary file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import crashkit as ck
from neardup.catalog import Catalog
from neardup.dedup import dedup
from neardup.ingest import import_embeddings
from neardup.tmpfiles import remove_stale, writing

#: Starts writing a temporary file for argv[1] and is killed (SIGKILL) in the middle of it.
KILLED = ("import os, signal, sys; from pathlib import Path; from neardup.tmpfiles import writing\n"
          "with writing(Path(sys.argv[1])) as t:\n"
          "    t.write_bytes(b'half a forest'); os.kill(os.getpid(), signal.SIGKILL)\n")
#: Writes a temporary file for argv[1], says its name, and keeps writing (sleeps) until killed.
LIVE = ("import sys, time; from pathlib import Path; from neardup.tmpfiles import writing\n"
        "with writing(Path(sys.argv[1])) as t:\n"
        "    t.write_bytes(b'in progress'); print(t, flush=True); time.sleep(300)\n")


def _age(*paths: Path, seconds: float = 3600) -> None:
    old = time.time() - seconds
    for p in paths:
        os.utime(p, (old, old))


def test_a_killed_writers_temporary_file_is_removed_at_the_next_forest_write(tmp_path: Path) -> None:
    db = tmp_path / "cat.duckdb"
    with Catalog(db) as cat:
        import_embeddings(cat, ck.make_vectors(400, 16, 3), [f"i{k}" for k in range(400)], model="m")
    forests = db.with_name(db.name + ".d") / "forests"
    forests.mkdir(parents=True)
    r = subprocess.run([sys.executable, "-c", KILLED, str(forests / "m-exact-f0.900000.state.npz")], timeout=120)
    assert r.returncode == -9
    killed = sorted(forests.glob("*.tmp.npz"))
    assert len(killed) == 1 and killed[0].read_bytes() == b"half a forest"
    legacy = forests / "m-v1-all-exact-f0.900000.tmp.npz"   # an older neardup's name (no lock, no pid)
    legacy.write_bytes(b"old")
    live = subprocess.Popen([sys.executable, "-c", LIVE, str(forests / "other.npz")], stdout=subprocess.PIPE, text=True)
    try:
        live_tmp = Path(live.stdout.readline().strip())
        assert live_tmp.exists()
        fresh = forests / "fresh.tmp.npz"                   # just created: its writer may not have locked it yet
        fresh.write_bytes(b"new")
        _age(killed[0], legacy, live_tmp)
        with Catalog(db) as cat:
            dedup(cat, 0.9)                                 # writes the forest cache
        left = set(forests.glob("*.tmp.npz"))
        assert left == {live_tmp, fresh}                    # killed and legacy removed; dedup left none of its own
        assert live_tmp.read_bytes() == b"in progress"
        assert any(p.name.endswith(".state.npz") for p in forests.iterdir())
    finally:
        live.kill()
        live.wait(30)
    assert set(remove_stale(forests, min_age=0)) == {fresh, live_tmp}  # once its writer is gone, even the live one
    assert not list(forests.glob("*.tmp.npz"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    final = tmp_path / "f.npz"
    np.savez(final, a=np.arange(3))
    with pytest.raises(RuntimeError):
        with writing(final) as tmp:
            np.savez(tmp, a=np.arange(5))
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == [final]
    with np.load(final) as z:
        assert z["a"].tolist() == [0, 1, 2]
    with writing(final) as tmp:
        np.savez(tmp, a=np.arange(5))
    assert list(tmp_path.iterdir()) == [final]
    with np.load(final) as z:
        assert z["a"].tolist() == [0, 1, 2, 3, 4]
