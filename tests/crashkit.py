"""Crash trials: run a real `neardup` command, interrupt it (SIGINT) or kill it (SIGKILL) at a moment,
then check the catalog's integrity and that it is exactly the state before or after the command.

Shared by tests/test_crash.py (a few trials, fast) and bench/crash_trials.py (many trials).
Moments are a delay after start, or a file event near the commit: a new embedding version file
appearing (``npy``) or the DuckDB write-ahead log growing (``wal``), each plus a small extra delay.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NEARDUP = str(Path(sys.executable).with_name("neardup"))
EMBED_MODEL = "sscd-distilled"


def neardup(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed `neardup` command to completion."""
    return subprocess.run([NEARDUP, *args], capture_output=True, text=True, timeout=timeout)


# -- catalog state ---------------------------------------------------------------------------

def _digest(rows: Any) -> str:
    return hashlib.sha1(repr(rows).encode()).hexdigest()


def state(db: Path) -> dict[str, Any]:
    """What a command can change, without timestamps: images, runs, overrides, vectors, sources."""
    from neardup.catalog import Catalog

    out: dict[str, Any] = {}
    with Catalog(db, read_only=True, wait=30) as cat:
        con = cat.con
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        cols = cat.image_columns()
        extra = [c for c in ("sha256", "status") if c in cols]
        out["images"] = _digest(con.execute(
            f"SELECT id, is_suppressed{''.join(', ' + c for c in extra)} FROM images ORDER BY id").fetchall())
        out["n_images"] = con.execute("SELECT count(*) FROM images").fetchone()[0]
        out["runs"] = con.execute("SELECT id, status, threshold, n_suppressed FROM runs ORDER BY id").fetchall()
        out["members"] = con.execute("SELECT run_id, count(*) FROM run_members GROUP BY run_id ORDER BY run_id").fetchall()
        out["overrides"] = con.execute("SELECT image_id, kind FROM overrides ORDER BY 1, 2").fetchall()
        out["sets"] = con.execute("SELECT model, dim, count, version, file FROM embedding_sets ORDER BY model").fetchall()
        out["rows"] = _digest(con.execute("SELECT model, row, image_id FROM embedding_rows ORDER BY model, row").fetchall())
        out["sources"] = _digest(con.execute("SELECT model, image_id, sha256 FROM embedded_from ORDER BY 1, 2").fetchall()
                                 if "embedded_from" in tables else [])
        vec, by_id = {}, {}
        for model, *_ in out["sets"]:
            try:
                _, _, v = cat.embedding_vectors(model)
                vec[model] = np.array(v)
                rows, ids = cat.embedding_rows(model)
                order = np.argsort(ids.astype(str), kind="stable")
                by_id[model] = (ids[order].tolist(), vec[model][rows[order]])
            except Exception as exc:  # noqa: BLE001 - reported by integrity()
                vec[model] = repr(exc)
        out["vectors"] = vec
        out["by_id"] = by_id
    return out


def same_content(a: dict[str, Any], b: dict[str, Any], *, atol: float = 0.0) -> bool:
    """Same images, runs, decisions, source records and per-image vectors (within ``atol``), however
    many commits it took (the row order and the file version may differ)."""
    for k in ("images", "n_images", "runs", "members", "overrides", "sources"):
        if a.get(k) != b.get(k):
            return False
    if [s[:3] for s in a.get("sets", [])] != [s[:3] for s in b.get("sets", [])]:
        return False
    ba, bb = a.get("by_id", {}), b.get("by_id", {})
    if set(ba) != set(bb):
        return False
    for m in ba:
        if ba[m][0] != bb[m][0] or not np.allclose(ba[m][1], bb[m][1], atol=atol, rtol=0):
            return False
    return True


def same_state(a: dict[str, Any], b: dict[str, Any], *, atol: float = 0.0) -> bool:
    """Equal states; vectors equal (or within ``atol``, for a re-run of a model)."""
    keys = set(a) | set(b)
    for k in keys - {"vectors", "by_id"}:
        if a.get(k) != b.get(k):
            return False
    va, vb = a.get("vectors", {}), b.get("vectors", {})
    if set(va) != set(vb):
        return False
    for m in va:
        x, y = va[m], vb[m]
        if isinstance(x, str) or isinstance(y, str) or x.shape != y.shape:
            return False
        if not (np.array_equal(x, y) if atol == 0 else np.allclose(x, y, atol=atol)):
            return False
    return True


def integrity(db: Path) -> list[str]:
    """Problems with the catalog: it opens; every model's vectors are there with their recorded shape,
    one row each; is_suppressed = suppressed by an applied run and not kept; every embedded vector of
    a scanned image has its source record."""
    from neardup.catalog import Catalog

    problems: list[str] = []
    try:
        cat = Catalog(db, read_only=True, wait=30)
    except Exception as exc:  # noqa: BLE001
        return [f"catalog does not open: {exc}"]
    with cat:
        con = cat.con
        for model, dim, count, file in con.execute("SELECT model, dim, count, file FROM embedding_sets").fetchall():
            p = cat.sidecar / "embeddings" / file
            if not p.exists():
                problems.append(f"{model}: vector file {file} is missing")
                continue
            try:
                v = np.load(p, mmap_mode="r")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{model}: vector file {file} unreadable: {exc}")
                continue
            if v.shape != (count, dim):
                problems.append(f"{model}: {file} has shape {v.shape}, catalog says {(count, dim)}")
            n, lo, hi, distinct = con.execute(
                "SELECT count(*), min(row), max(row), count(DISTINCT row) FROM embedding_rows WHERE model = ?", [model]).fetchone()
            if n != count or distinct != count or (count and (lo, hi) != (0, count - 1)):
                problems.append(f"{model}: {n} embedding rows ({distinct} distinct, {lo}..{hi}) for {count} vectors")
            orphan = con.execute("SELECT count(*) FROM embedding_rows r ANTI JOIN images i ON i.id = r.image_id "
                                 "WHERE r.model = ?", [model]).fetchone()[0]
            if orphan:
                problems.append(f"{model}: {orphan} vectors of images not in the catalog")
        wrong = con.execute("""
            SELECT count(*) FROM images WHERE is_suppressed IS DISTINCT FROM (
                id IN (SELECT m.image_id FROM run_members m JOIN runs r ON r.id = m.run_id
                       WHERE r.status = 'applied' AND m.is_suppressed)
                AND id NOT IN (SELECT image_id FROM overrides WHERE kind = 'keep'))""").fetchone()[0]
        if wrong:
            problems.append(f"{wrong} images whose is_suppressed breaks its rule")
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "embedded_from" in tables:
            no_src = con.execute("""
                SELECT count(*) FROM embedding_rows r JOIN images i ON i.id = r.image_id
                LEFT JOIN embedded_from e ON e.model = r.model AND e.image_id = r.image_id
                WHERE i.path IS NOT NULL AND e.image_id IS NULL""").fetchone()[0]
            if no_src:
                problems.append(f"{no_src} vectors of scanned images without their source record")
    return problems


# -- one trial -------------------------------------------------------------------------------

@dataclass
class Trial:
    """One command, one signal at one moment, and what came of it."""

    command: str
    args: list[str]
    sig: int
    moment: str            # "t" (delay after start), "npy" or "wal" (file event), each + ``delay`` s
    delay: float
    multi_commit: bool = False   # scan/embed: many commits; checked by integrity + a re-run
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    delivered: bool = False      # the signal reached a live process
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.command} {signal.Signals(self.sig).name} at {self.moment}+{self.delay:g}s"


def _wal(db: Path) -> tuple[bool, int, int]:
    p = db.with_name(db.name + ".wal")
    try:
        st = p.stat()
        return True, st.st_size, st.st_mtime_ns
    except OSError:
        return False, 0, 0


def _npys(db: Path) -> set[str]:
    d = db.with_name(db.name + ".d") / "embeddings"
    try:
        return {p for p in os.listdir(d) if p.endswith(".npy")}
    except OSError:
        return set()


def run_trial(trial: Trial, db: Path, timeout: float = 300) -> Trial:
    """Start the command, deliver the signal at the trial's moment, collect exit code and output."""
    wal0, npy0 = _wal(db), _npys(db)
    p = subprocess.Popen([NEARDUP, *trial.args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        if trial.moment != "t":
            while p.poll() is None and time.monotonic() - t0 < timeout:
                if trial.moment == "npy" and _npys(db) - npy0:
                    break
                if trial.moment == "wal" and _wal(db) != wal0 and _wal(db)[0]:
                    break
                time.sleep(0.0005)
        if trial.delay:
            end = time.monotonic() + trial.delay
            while p.poll() is None and time.monotonic() < end:
                time.sleep(0.001)
        if p.poll() is None:
            p.send_signal(trial.sig)
            trial.delivered = True
        trial.stdout, trial.stderr = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    trial.rc = p.returncode
    return trial


def check_trial(trial: Trial, db: Path, before: dict[str, Any], after: dict[str, Any],
                rerun: list[str] | None = None, next_cmd: list[str] | None = None) -> list[str]:
    """Everything that must hold after the trial; returns the problems (empty: clean)."""
    probs: list[str] = list(integrity(db))
    lines = [ln for ln in trial.stderr.splitlines() if ln.strip()]
    if "Traceback" in trial.stderr:
        probs.append("traceback on stderr")
    if trial.sig == signal.SIGINT:
        if trial.rc == 130:
            if len(lines) != 1 or not lines[0].startswith("interrupted:"):
                probs.append(f"exit 130 but stderr is not one 'interrupted:' line: {lines!r}")
        elif trial.rc == 0:
            if not trial.stdout.strip():
                probs.append("exit 0 without the command's output")
        else:
            probs.append(f"exit {trial.rc} after SIGINT (want 130, or 0 when it had finished)")
    elif trial.sig == signal.SIGKILL and trial.rc not in (-signal.SIGKILL, 0):
        probs.append(f"exit {trial.rc} after SIGKILL")
    if probs:
        return probs
    now = state(db)
    if not trial.multi_commit:
        is_before, is_after = same_state(now, before), same_state(now, after)
        if not (is_before or is_after):
            probs.append("catalog is neither the state before nor the state after the command")
        elif trial.rc == 0 and not is_after:
            probs.append("exit 0 but the change is not there")
        elif trial.rc == 130:
            says_nothing = "nothing was changed" in lines[0]
            if says_nothing and not is_before:
                probs.append(f"says nothing was changed, but the change was applied: {lines[0]!r}")
            if not says_nothing and not is_after:
                probs.append(f"says a change was kept, but the catalog is as before: {lines[0]!r}")
    elif trial.rc == 130 and "nothing was changed" in lines[0] and not same_state(now, before):
        probs.append(f"says nothing was changed, but the catalog changed: {lines[0]!r}")
    if rerun is not None:  # the same command again finishes the job: exactly the state after
        r = neardup(*rerun)
        if r.returncode != 0:
            probs.append(f"re-run failed ({r.returncode}): {r.stderr.strip()[-300:]}")
        elif not same_content(state(db), after, atol=2e-3):  # a model re-run: a few canonical steps (1/2048)
            probs.append("re-run did not reach the state after the command")
    if next_cmd is not None:
        r = neardup(*next_cmd)
        if r.returncode != 0:
            probs.append(f"next command {next_cmd[0]} failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    return probs


# -- fixtures: small catalogs the commands run on ---------------------------------------------

def make_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors in groups of 4 near-duplicates (so dedup finds groups)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n // 4 + 1, dim)).astype(np.float32)
    v = np.repeat(base, 4, axis=0)[:n] + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build_vector_catalog(folder: Path, n: int = 4000, dim: int = 128) -> dict[str, Any]:
    """A catalog with imported vectors and one applied run; files for a re-import (new vectors)."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "cat.duckdb"
    ids = folder / "ids.txt"
    ids.write_text("\n".join(f"img{k:06d}" for k in range(n)) + "\n")
    np.save(folder / "v1.npy", make_vectors(n, dim, 1))
    np.save(folder / "v2.npy", make_vectors(n, dim, 2))
    for args in (["import-embeddings", str(folder / "v1.npy"), "--ids", str(ids), "--model", "m"],
                 ["dedup", "-t", "0.95"], ["dedup", "-t", "0.97"]):
        r = neardup(*args, "--db", str(db))
        assert r.returncode == 0, r.stderr
    return dict(db=db, ids=ids, v2=folder / "v2.npy")


def build_image_folder(folder: Path, n: int = 24) -> Path:
    """Small JPEGs (edited copies of scikit-image's photos) to scan and embed."""
    from neardup.samples import apply_edit, load_photo

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = ["astronaut", "coffee", "rocket", "camera", "chelsea", "immunohistochemistry"]
    edits = ["jpeg", "bright", "crop", "flip"]
    k = 0
    for name in names:
        im = load_photo(name)
        im = im.resize((max(64, im.width // 3), max(64, im.height // 3)))
        for e in edits:
            if k >= n:
                break
            apply_edit(im, e, rng).convert("RGB").save(folder / f"{name}_{e}.jpg", quality=90)
            k += 1
    return folder


def copy_catalog(src: Path, dst: Path) -> Path:
    """A private copy of a catalog (file and sidecar folder) for one trial."""
    dst.mkdir(parents=True, exist_ok=True)
    db = dst / src.name
    shutil.copy(src, db)
    side = src.with_name(src.name + ".d")
    if side.is_dir():
        shutil.copytree(side, db.with_name(db.name + ".d"))
    return db
