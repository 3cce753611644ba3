"""The catalog: a DuckDB file (images, runs, run members, overrides) plus a sidecar folder.

Pixels and the user's files are never touched. Embeddings live in memory-mapped ``.npy`` files
in the sidecar folder (``<db>.d/embeddings``), one per model, with their row order recorded in
DuckDB; a new file version is written for every change and switched to in one transaction, so
a crash leaves the previous version in force. A version file is never deleted while a committed
catalog may point to it: versions nobody references are collected at a later open.

Every transaction ends with a marker row (``txn_log``), committed under a deferred Ctrl-C
(:func:`neardup.interrupts.critical`): if ``COMMIT`` itself raises, the marker says whether the
change landed, so a committed change is never reported as a failure.

Only one process may have the DuckDB file open for writing; opening waits (bounded) while
another neardup process holds it, so commands run side by side are serialised, not refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import duckdb
import numpy as np
import pyarrow as pa

from . import interrupts
from .columns import check_image_columns
from .errors import CatalogError, InputError

SCHEMA_VERSION = 1
DEFAULT_DB = "neardup.duckdb"

#: Columns every images row has; users' extra metadata columns are added beside them.
CORE_IMAGE_COLUMNS: dict[str, str] = {
    "id": "VARCHAR PRIMARY KEY",
    "path": "VARCHAR",
    "sha256": "VARCHAR",
    "width": "INTEGER",
    "height": "INTEGER",
    "brightness": "DOUBLE",
    "score": "DOUBLE",
    "captured_at": "TIMESTAMP",
    "file_size": "BIGINT",
    "cluster_id": "INTEGER",
    "is_suppressed": "BOOLEAN NOT NULL DEFAULT false",
    "added_at": "TIMESTAMP",
}

OVERRIDE_KINDS = ("keep", "master", "not_duplicate")
#: derived by neardup (runs, clustering, scan time): never taken from user metadata
RESERVED_IMAGE_COLUMNS = ("is_suppressed", "added_at", "cluster_id")

#: Tables added after schema version 1: in _SCHEMA for new catalogs, created at open in older ones.
_LATER_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments(
    a VARCHAR, b VARCHAR, same BOOLEAN, source VARCHAR, model VARCHAR, similarity DOUBLE, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS calibrations(
    model VARCHAR, threshold DOUBLE, low DOUBLE, high DOUBLE, precision DOUBLE, recall DOUBLE,
    target DOUBLE, objective VARCHAR, judgments BIGINT, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS group_reviews(
    run_id INTEGER, group_id BIGINT, decision VARCHAR, detail VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS decision_basis(image_id VARCHAR NOT NULL, model VARCHAR NOT NULL, fingerprint UBIGINT);
CREATE TABLE IF NOT EXISTS overrides_invalidated(
    image_id VARCHAR, kind VARCHAR, created_at TIMESTAMP, note VARCHAR, invalidated_at TIMESTAMP, reason VARCHAR);
"""
_LATER_TABLES = ("judgments", "calibrations", "group_reviews", "decision_basis", "overrides_invalidated")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS images({", ".join(f"{k} {v}" for k, v in CORE_IMAGE_COLUMNS.items())});
CREATE TABLE IF NOT EXISTS embedding_sets(
    model VARCHAR PRIMARY KEY, dim INTEGER NOT NULL, file VARCHAR NOT NULL,
    count BIGINT NOT NULL, version INTEGER NOT NULL, updated_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS embedding_rows(model VARCHAR NOT NULL, row BIGINT NOT NULL, image_id VARCHAR NOT NULL);
CREATE SEQUENCE IF NOT EXISTS run_id_seq START 1;
CREATE TABLE IF NOT EXISTS runs(
    id INTEGER PRIMARY KEY, created_at TIMESTAMP, model VARCHAR, threshold DOUBLE, mode VARCHAR,
    policy VARCHAR, scope VARCHAR, n_images BIGINT, n_groups BIGINT, n_suppressed BIGINT,
    n_retained BIGINT, largest_group BIGINT, status VARCHAR, restored_at TIMESTAMP, summary JSON);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS scope_key VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS replaced_by INTEGER;
CREATE TABLE IF NOT EXISTS run_members(
    run_id INTEGER NOT NULL, image_id VARCHAR NOT NULL, group_id BIGINT NOT NULL,
    master_id VARCHAR NOT NULL, is_master BOOLEAN NOT NULL, is_suppressed BOOLEAN NOT NULL,
    sim_to_master FLOAT, group_size BIGINT, group_score DOUBLE);
CREATE TABLE IF NOT EXISTS overrides(
    image_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, created_at TIMESTAMP, note VARCHAR);
CREATE TABLE IF NOT EXISTS skipped(
    path VARCHAR PRIMARY KEY, reason VARCHAR, seen_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS txn_log(token VARCHAR, committed_at TIMESTAMP);
""" + _LATER_SCHEMA

#: Columns added after the first catalogs were written; added at open when missing.
_ADDED_COLUMNS = (
    "ALTER TABLE run_members ADD COLUMN IF NOT EXISTS group_size BIGINT",
    "ALTER TABLE run_members ADD COLUMN IF NOT EXISTS group_score DOUBLE",
)

#: What downstream reads: the images not suppressed. A master of the latest applied run carries
#: its group's size and aggregated score (whole votes); any other visible image stands alone.
_VISIBLE_VIEW = """
CREATE OR REPLACE VIEW visible AS
SELECT i.*, coalesce(g.group_size, 1) AS group_size,
       CASE WHEN g.image_id IS NULL THEN i.score ELSE g.group_score END AS group_score
FROM images i
LEFT JOIN (SELECT image_id, group_size, group_score FROM run_members
           WHERE is_master AND run_id = (SELECT max(id) FROM runs WHERE status = 'applied')) g
       ON g.image_id = i.id
WHERE NOT i.is_suppressed
"""
#: columns added to ``runs`` after the first catalogs were written (added at open when missing)
_RUN_COLUMNS = ("ALTER TABLE runs ADD COLUMN IF NOT EXISTS scope_key VARCHAR",
                "ALTER TABLE runs ADD COLUMN IF NOT EXISTS replaced_by INTEGER")

#: columns added after the first catalogs were written (issue 11): the scan's quality measures
#: (see neardup.quality) and the policy key that decided each group's master. Added at open.
_QUALITY_COLUMNS = (
    "ALTER TABLE images ADD COLUMN IF NOT EXISTS sharpness DOUBLE",
    "ALTER TABLE images ADD COLUMN IF NOT EXISTS jpeg_quality DOUBLE",
    "ALTER TABLE images ADD COLUMN IF NOT EXISTS border DOUBLE",
    "ALTER TABLE images ADD COLUMN IF NOT EXISTS colorfulness DOUBLE",
    "ALTER TABLE images ADD COLUMN IF NOT EXISTS clipped DOUBLE",
    "ALTER TABLE run_members ADD COLUMN IF NOT EXISTS decided_by VARCHAR",
)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Embedding version files (and their temporaries) that the collector may remove when unreferenced.
_VERSION_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.v[0-9]+\.npy(\.tmp)?$")
#: Writing a version file and switching to it, or collecting old ones: one at a time in a process
#: (other processes are kept out by DuckDB's file lock).
_EMBEDDINGS_LOCK = threading.RLock()
#: Seconds to wait for another process to release the catalog (``NEARDUP_LOCK_WAIT`` overrides).
DEFAULT_LOCK_WAIT = 600.0


def lock_wait_default() -> float:
    """How long opening a catalog waits for another neardup process (env ``NEARDUP_LOCK_WAIT``, seconds)."""
    try:
        return max(0.0, float(os.environ.get("NEARDUP_LOCK_WAIT", DEFAULT_LOCK_WAIT)))
    except ValueError:
        return DEFAULT_LOCK_WAIT


def _lock_holder(msg: str) -> str:
    """``" (PID 123)"`` from DuckDB's lock-conflict message, or ``""``."""
    m = re.search(r"PID (\d+)", msg)
    return f" (PID {m.group(1)})" if m else ""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk before the catalog may point to it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class RecordedRun:
    """What :meth:`Catalog.record_run` did: the run in force now, the runs it replaced, what is visible."""

    run_id: int
    replaced: list[int]
    retained: int          # the run's images that are visible after the command
    visible: int           # rows of the ``visible`` view after the command
    unchanged: bool = False  # an identical run was already in force: nothing was written


@dataclass(frozen=True)
class RestoreResult:
    """What :meth:`Catalog.restore_runs` did: runs undone, runs put back in force, images visible after."""

    undone: list[int]
    reinstated: list[int]
    visible: int


@dataclass(frozen=True)
class EmbeddingSet:
    """One model's vectors: ``ids[i]`` is the image of row ``vectors[i]`` (unit-norm float32)."""

    model: str
    ids: np.ndarray
    vectors: np.ndarray
    version: int

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)


class Catalog:
    """A neardup catalog on disk. Use as a context manager or call :meth:`close`.

    >>> with Catalog("cat.duckdb") as cat:          # doctest: +SKIP
    ...     cat.runs()
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_DB, *, read_only: bool = False,
                 wait: float | None = None, on_wait: Any = None) -> None:
        """Open (or create) the catalog; while another process holds it, retry for ``wait`` seconds
        (default :func:`lock_wait_default`), calling ``on_wait(message)`` once when waiting starts."""
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._txn: list[tuple[str, int]] | None = None
        if read_only and not self.path.exists():
            raise CatalogError(f"{self.path}: no catalog here (run `neardup import-embeddings` or `neardup scan` first)")
        self.con = self._connect(lock_wait_default() if wait is None else wait, on_wait)
        self._init_schema()

    def _connect(self, wait: float, on_wait: Any) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + wait
        pause = 0.02
        told = False
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=self.read_only)
            except duckdb.IOException as exc:  # another process holds the write lock, or not a DuckDB file
                msg = str(exc).splitlines()[0]
                if "lock" not in msg.lower():
                    raise CatalogError(f"{self.path}: cannot open catalog ({msg})") from None
                if time.monotonic() >= deadline:
                    waited = f" (waited {wait:.0f} s; NEARDUP_LOCK_WAIT sets how long)" if wait > 0 else ""
                    raise CatalogError(f"{self.path}: the catalog is in use by another neardup process"
                                       f"{_lock_holder(msg)}{waited}") from None
                if on_wait is not None and not told:
                    told = True
                    on_wait(f"waiting for another neardup process{_lock_holder(msg)} to finish with {self.path} "
                            f"(up to {wait:.0f} s)")
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(0.25, pause * 1.5)
            except duckdb.Error as exc:
                raise CatalogError(f"{self.path}: cannot open catalog ({str(exc).splitlines()[0]})") from None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a Ctrl-C meanwhile is raised after it, so the file is left closed)."""
        with interrupts.critical(), contextlib.suppress(Exception):
            self.con.close()

    @property
    def sidecar(self) -> Path:
        """Folder beside the DuckDB file holding embeddings, thumbnails and caches."""
        return self.path.with_name(self.path.name + ".d")

    def _init_schema(self) -> None:
        tables = {r[0] for r in self.con.sql("SELECT table_name FROM information_schema.tables").fetchall()}
        if "meta" in tables:
            row = self.one("SELECT value FROM meta WHERE key = 'schema_version'")
            found = int(row[0]) if row else None
            if found != SCHEMA_VERSION:
                raise CatalogError(
                    f"{self.path}: catalog schema version {found} but this neardup reads version {SCHEMA_VERSION}"
                )
            if not self.read_only:
                # tables later versions added to a catalog made before them; txn_log first: every
                # transaction() writes its marker row there
                if "txn_log" not in tables:
                    self.con.execute("CREATE TABLE IF NOT EXISTS txn_log(token VARCHAR, committed_at TIMESTAMP)")
                if not set(_LATER_TABLES) <= tables:
                    with self.transaction():
                        self.con.execute(_LATER_SCHEMA)
                if self._missing_quality_columns():
                    with self.transaction():
                        for stmt in _QUALITY_COLUMNS:
                            self.con.execute(stmt)
                self.collect_garbage()
                self._migrate()
            if not self.read_only and self._missing_run_columns():
                with self.transaction():
                    for stmt in _RUN_COLUMNS:
                        self.con.execute(stmt)
            return
        if tables:
            raise CatalogError(f"{self.path}: this DuckDB file is not a neardup catalog (tables: {', '.join(sorted(tables))})")
        if self.read_only:
            raise CatalogError(f"{self.path}: empty catalog")
        with self.transaction():
            self.con.execute(_SCHEMA)
            self.con.execute(_VISIBLE_VIEW)
            for stmt in _QUALITY_COLUMNS:
                self.con.execute(stmt)
            self.con.execute("INSERT INTO meta VALUES ('schema_version', ?), ('created_at', ?)",
                             [str(SCHEMA_VERSION), _now().isoformat()])

    def _migrate(self) -> None:
        """Bring a catalog written by an older neardup up to date (new columns, the current view)."""
        cols = {r[0] for r in self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'run_members'").fetchall()}
        view = self.one("SELECT sql FROM duckdb_views() WHERE view_name = 'visible'")
        if {"group_size", "group_score"} <= cols and view and "group_score" in str(view[0]):
            return
        with self.transaction():
            for stmt in _ADDED_COLUMNS:
                self.con.execute(stmt)
            self.con.execute(_VISIBLE_VIEW)

    def _missing_run_columns(self) -> bool:
        """True when an older catalog's ``runs`` lacks a column of :data:`_RUN_COLUMNS`."""
        have = {r[0] for r in self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'").fetchall()}
        return not {stmt.split()[-2] for stmt in _RUN_COLUMNS} <= have

    def _missing_quality_columns(self) -> bool:
        """True when an older catalog lacks a column of :data:`_QUALITY_COLUMNS`."""
        have = {(r[0], r[1]) for r in self.con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_name IN ('images', 'run_members')").fetchall()}
        want = {(stmt.split()[2], stmt.split()[-2]) for stmt in _QUALITY_COLUMNS}
        return not want <= have

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All-or-nothing: an exception (or Ctrl-C) inside rolls everything back.

        A transaction opened inside another joins it (one commit at the end of the outer one).
        ``COMMIT`` runs with Ctrl-C deferred; if it raises anyway, the transaction's marker row
        decides whether the change landed: a committed change is kept and reported (the ledger of
        :mod:`neardup.interrupts`), and only an uncommitted one is an error.
        """
        with self._lock:
            if self._txn is not None:  # nested: part of the enclosing transaction
                yield self.con
                return
            interrupts.checkpoint()
            token = uuid.uuid4().hex
            self._txn = notes = []
            try:
                self.con.execute("BEGIN TRANSACTION")
                try:
                    yield self.con
                    interrupts.checkpoint()  # a Ctrl-C that something swallowed: do not commit after it
                    if not self.read_only:
                        self.con.execute("INSERT INTO txn_log VALUES (?, ?)", [token, _now()])
                except BaseException as exc:
                    with interrupts.critical():
                        with contextlib.suppress(Exception):
                            self.con.execute("ROLLBACK")
                    if not isinstance(exc, KeyboardInterrupt) and interrupts.is_interrupt(exc):
                        raise KeyboardInterrupt from None
                    raise
                with interrupts.critical():
                    try:
                        self._commit()
                    except Exception as exc:
                        if not self._committed(token, exc):
                            if interrupts.is_interrupt(exc):
                                raise KeyboardInterrupt from None
                            raise
                        if interrupts.is_interrupt(exc):  # landed, then interrupted: kept, and the stop is honoured
                            interrupts.raise_after()
                    for template, n in notes:
                        interrupts.record(template, n)
            finally:
                self._txn = None

    def _commit(self) -> None:
        self.con.execute("COMMIT")

    def _committed(self, token: str, exc: BaseException) -> bool:
        """After ``COMMIT`` raised: did the transaction land anyway? (Its marker row says.)"""
        with contextlib.suppress(Exception):
            self.con.execute("ROLLBACK")
        try:
            row = self.con.execute("SELECT count(*) FROM txn_log WHERE token = ?", [token]).fetchone()
        except Exception:
            raise CatalogError(f"{self.path}: the commit failed ({str(exc).splitlines()[0]}) and the catalog cannot "
                               "be read back to tell whether the change was applied; check with `neardup runs`") from None
        return bool(row and row[0])

    def describe(self, template: str, n: int = 1) -> None:
        """Say what the current transaction changes (``"catalogued {n} file(s)"``), for the Ctrl-C report."""
        if self._txn is not None and n:
            self._txn.append((template, n))

    @contextlib.contextmanager
    def registered(self, name: str, table: Any) -> Iterator[None]:
        """``table`` visible to SQL as ``name`` for the block; unregistering never hides the block's own error."""
        self.con.register(name, table)
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):  # e.g. the transaction is already aborted
                self.con.unregister(name)
            raise
        self.con.unregister(name)

    def one(self, query: str, params: Sequence[Any] | None = None) -> tuple | None:
        """First row of a query (the result is always consumed: DuckDB 2 forbids leaving it open)."""
        with self._lock:
            rows = self.con.execute(query, list(params) if params else []).fetchall()
        return rows[0] if rows else None

    def scalar(self, query: str, params: Sequence[Any] | None = None) -> Any:
        row = self.one(query, params)
        return None if row is None else row[0]

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run a read query and return an Arrow table."""
        with self._lock:
            return self.con.sql(query, params=list(params) if params else None).to_arrow_table()

    # -- images ----------------------------------------------------------------------------
    def image_columns(self) -> dict[str, str]:
        rows = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'images' ORDER BY ordinal_position"
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def check_images(self, table: pa.Table, *, source: str = "images", first_row: int = 0,
                     reserved: Sequence[str] = (), cast: bool = True) -> pa.Table:
        """Refuse (one line naming file, column, row) a table :meth:`upsert_images` could not take whole.

        Returns the table with the catalog's existing columns cast to their catalog types.
        """
        with self._lock:
            return check_image_columns(self.con, self.image_columns(), table, source=source,
                                       reserved=(*RESERVED_IMAGE_COLUMNS, *reserved), first_row=first_row,
                                       cast=cast)

    def upsert_images(self, table: pa.Table, *, source: str = "images",
                      _in_transaction: bool = False) -> tuple[int, int]:
        """Insert new images and update the given columns of existing ones (matched on ``id``).

        Columns that the images table lacks are added (user metadata is kept). Returns
        ``(inserted, updated)``. Columns neardup derives itself (:data:`RESERVED_IMAGE_COLUMNS`, any
        case), names that clash with the catalog's, and values its typed columns cannot hold are
        refused, with ``source`` (a file name) in the one-line message, before anything is written.
        """
        if "id" not in table.column_names:
            raise InputError("image table has no 'id' column")
        ctx = contextlib.nullcontext() if _in_transaction else self.transaction()
        with ctx:
            existing = self.image_columns()
            self.check_images(table, source=source, cast=False)
            with self.registered("_upsert", table):
                types = self.con.sql("SELECT * FROM _upsert LIMIT 0").types
                for name, dtype in zip(table.column_names, types):
                    if name not in existing:
                        dtype = "VARCHAR" if str(dtype) == '"NULL"' else dtype  # all-empty column: no type of its own
                        self.con.execute(f'ALTER TABLE images ADD COLUMN "{name}" {dtype}')
                n_new = self.one("SELECT count(*) FROM _upsert u ANTI JOIN images i ON u.id = i.id")[0]
                cols = [c for c in table.column_names if c != "id"]
                n_upd = 0
                if cols:
                    n_upd = self.one("SELECT count(*) FROM _upsert u SEMI JOIN images i ON u.id = i.id")[0]
                    sets = ", ".join(f'"{c}" = u."{c}"' for c in cols)
                    self.con.execute(f"UPDATE images SET {sets} FROM _upsert u WHERE images.id = u.id")
                names = ", ".join(f'"{c}"' for c in table.column_names)
                self.con.execute(
                    f"INSERT INTO images ({names}, added_at) SELECT {names}, ? FROM _upsert u "
                    "WHERE u.id NOT IN (SELECT id FROM images)",
                    [_now()],
                )
            self.describe("added or updated {n} image row(s)", int(n_new) + int(n_upd))
        return int(n_new), int(n_upd)

    def count_images(self) -> int:
        return int(self.one("SELECT count(*) FROM images")[0])

    def images(self, columns: Sequence[str] | None = None, where: str | None = None) -> pa.Table:
        """The images table (or some columns of it) as Arrow, ordered by id."""
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        q = f"SELECT {cols} FROM images" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        return self.sql(q)

    def unavailable_ids(self) -> set[str]:
        """Images whose file vanished or no longer decodes (a scan marks them); runs leave them out."""
        if "status" not in self.image_columns():
            return set()
        rows = self.con.execute("SELECT id FROM images WHERE status IN ('missing', 'unreadable')").fetchall()
        return {r[0] for r in rows}

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        t = pa.table({"id": pa.array(list(ids), pa.string())})
        with self._lock:
            self.con.register("_ids", t)
            try:
                return {r[0] for r in self.con.execute("SELECT id FROM _ids SEMI JOIN images USING (id)").fetchall()}
            finally:
                self.con.unregister("_ids")

    # -- embeddings ------------------------------------------------------------------------
    def embedding_models(self) -> list[dict[str, Any]]:
        rows = self.con.execute("SELECT model, dim, count, version, updated_at FROM embedding_sets ORDER BY model").fetchall()
        return [dict(model=r[0], dim=r[1], count=r[2], version=r[3], updated_at=r[4]) for r in rows]

    def default_model(self) -> str:
        """The only model with embeddings, or the most recently updated one."""
        row = self.one("SELECT model FROM embedding_sets ORDER BY updated_at DESC, model LIMIT 1")
        if row is None:
            raise CatalogError(f"{self.path}: no embeddings yet (run `neardup import-embeddings` or `neardup embed`)")
        return str(row[0])

    def load_embeddings(self, model: str | None = None) -> EmbeddingSet:
        """The model's vectors, memory-mapped (read-only), and the image id of each row."""
        model, version, vectors = self.embedding_vectors(model)
        ids = self.sql("SELECT image_id FROM embedding_rows WHERE model = ? ORDER BY row", [model]).column(0)
        return EmbeddingSet(model=model, ids=np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object),
                            vectors=vectors, version=version)

    def embedding_rows(self, model: str, ids: Sequence[str] | None = None,
                       exclude: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, ids)`` of a model's embedding matrix for some ids (or all but ``exclude``), in row order.

        The lookup runs in DuckDB, so a 2,000-id cluster of a million-image catalog is a join,
        not a Python scan of every id.
        """
        conds, tables = ["r.model = ?"], {}
        if ids is not None:
            tables["_want"] = pa.table({"id": pa.array([str(i) for i in ids], pa.string())})
            conds.append("r.image_id IN (SELECT id FROM _want)")
        if exclude:
            tables["_drop"] = pa.table({"id": pa.array([str(i) for i in exclude], pa.string())})
            conds.append("r.image_id NOT IN (SELECT id FROM _drop)")
        with self._lock:
            for name, t in tables.items():
                self.con.register(name, t)
            try:
                t = self.con.sql(f"SELECT r.row, r.image_id FROM embedding_rows r WHERE {' AND '.join(conds)} ORDER BY r.row",
                                 params=[model]).to_arrow_table()
            finally:
                for name in tables:
                    self.con.unregister(name)
        return (np.asarray(t["row"].to_numpy(), dtype=np.int64),
                np.asarray(t["image_id"].to_numpy(zero_copy_only=False), dtype=object))

    def embedding_vectors(self, model: str | None = None) -> tuple[str, int, np.ndarray]:
        """``(model, version, vectors)`` without loading the ids (memory-mapped, read-only)."""
        model = model or self.default_model()
        row = self.one("SELECT file, count, dim, version FROM embedding_sets WHERE model = ?", [model])
        if row is None:
            known = ", ".join(m["model"] for m in self.embedding_models()) or "none"
            raise CatalogError(f"{self.path}: no embeddings for model {model!r} (have: {known})")
        file, count, dim, version = row
        vectors = np.load(self._embeddings_file(file), mmap_mode="r")
        if vectors.shape != (count, dim):
            raise CatalogError(f"{self.path}: embeddings file {file} has shape {vectors.shape}, catalog says {(count, dim)}")
        return model, int(version), vectors

    def require_sidecar(self) -> None:
        """One line naming the sidecar folder when the catalog has vectors but the folder is gone
        (a catalog file copied or moved without its ``.d`` folder)."""
        if not self.sidecar.is_dir() and self.one("SELECT 1 FROM embedding_sets LIMIT 1"):
            raise CatalogError(f"{self.path}: its sidecar folder {self.sidecar} is missing (it holds the vectors and "
                               f"thumbnails: copy or move it together with {self.path.name})")

    def _embeddings_file(self, file: str) -> Path:
        """The path of a recorded embeddings file; one line naming what is missing when it is gone."""
        path = self.sidecar / "embeddings" / file
        if path.is_file():
            return path
        self.require_sidecar()
        raise CatalogError(f"{self.path}: embeddings file {path} is missing from the sidecar folder")

    def put_embeddings(self, model: str, ids: Sequence[str] | np.ndarray, vectors: np.ndarray,
                       images: pa.Table | None = None,
                       also: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> tuple[int, int]:
        """Store unit-norm vectors for ``ids`` (update rows already there, append the rest), rounded
        to canonical vectors (:mod:`neardup.similarity.canonical`).

        ``images`` (optional, with an ``id`` column) is upserted in the same transaction, and
        ``also(con)`` runs in it too (e.g. the record of which bytes the vectors came from), so
        vectors and what belongs to them land together or not at all. Returns ``(added, updated)``.

        The vectors go to a new version file, switched to in the transaction; the previous
        version stays on disk until it is unreferenced (see :meth:`collect_garbage`), so a crash
        or Ctrl-C at any point leaves either the old or the new version in force, never a
        reference to a missing file.
        """
        if not _MODEL_NAME.match(model):
            raise InputError(f"model name {model!r}: use letters, digits, '.', '_' or '-'")
        from .similarity.canonical import canonical_vectors  # numba: only where vectors are written

        try:  # stored vectors are canonical: their float32 dot products are exact in any order
            vectors = np.ascontiguousarray(canonical_vectors(np.asarray(vectors, dtype=np.float32)))
        except ValueError as exc:
            raise InputError(f"vectors for model {model!r}: {exc}") from None
        ids = np.asarray(ids, dtype=object)
        if vectors.ndim != 2 or len(ids) != vectors.shape[0]:
            raise InputError(f"{len(ids)} ids for {vectors.shape[0] if vectors.ndim else 0} vectors")
        self.require_sidecar()  # never start a new sidecar beside vectors that are elsewhere
        emb_dir = self.sidecar / "embeddings"
        with _EMBEDDINGS_LOCK, self._lock:
            emb_dir.mkdir(parents=True, exist_ok=True)
            cur = self.one("SELECT file, count, dim, version FROM embedding_sets WHERE model = ?", [model])
            if cur is not None and cur[2] != vectors.shape[1]:
                raise InputError(f"model {model!r} has dimension {cur[2]} in this catalog; these vectors have {vectors.shape[1]}")
            if cur is None:
                old_ids = np.empty(0, dtype=object)
                old_vecs = np.empty((0, vectors.shape[1]), dtype=np.float32)
                version = 1
            else:
                old = self.load_embeddings(model)
                old_ids, old_vecs, version = old.ids, old.vectors, old.version + 1
            pos = {k: i for i, k in enumerate(old_ids.tolist())}
            upd_rows = np.fromiter((pos.get(k, -1) for k in ids.tolist()), dtype=np.int64, count=len(ids))
            is_new = upd_rows < 0
            n_new = int(is_new.sum())
            total = len(old_ids) + n_new
            file = f"{model}.v{version}.npy"
            tmp = emb_dir / (file + ".tmp")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, vectors.shape[1]))
            step = 1 << 16
            for s in range(0, len(old_ids), step):
                e = min(s + step, len(old_ids))
                out[s:e] = canonical_vectors(old_vecs[s:e])  # a catalog from before canonical vectors
            if (~is_new).any():
                out[upd_rows[~is_new]] = vectors[~is_new]
            out[len(old_ids):] = vectors[is_new]
            out.flush()
            del out
            _fsync(tmp)
            os.replace(tmp, emb_dir / file)  # not referenced yet: a crash from here on leaves it unreferenced
            _fsync(emb_dir)
            rows_table = pa.table({"model": pa.array([model] * n_new, pa.string()),
                                   "row": pa.array(np.arange(len(old_ids), total), pa.int64()),
                                   "image_id": pa.array(ids[is_new].tolist(), pa.string())})
            missing = pa.table({"id": pa.array(ids[is_new].tolist(), pa.string())})
            # No clean-up on failure: if COMMIT raised after landing, the catalog points to this file.
            with self.transaction():
                if images is not None:
                    self.upsert_images(images, _in_transaction=True)
                with self.registered("_new_ids", missing), self.registered("_rows", rows_table):
                    self.con.execute("INSERT INTO images (id, added_at) SELECT id, ? FROM _new_ids ANTI JOIN images USING (id)", [_now()])
                    self.con.execute("INSERT INTO embedding_rows SELECT * FROM _rows")
                self.con.execute("DELETE FROM embedding_sets WHERE model = ?", [model])
                self.con.execute("INSERT INTO embedding_sets VALUES (?, ?, ?, ?, ?, ?)",
                                 [model, vectors.shape[1], file, total, version, _now()])
                if also is not None:
                    also(self.con)
                self.describe(f"stored {{n}} vector(s) for model {model}", len(ids))
            if self._txn is None:  # committed (not part of an enclosing transaction): drop the old version
                self.collect_garbage()
        return n_new, len(ids) - n_new

    def collect_garbage(self) -> int:
        """Delete embedding version files no committed catalog state refers to (left by an earlier
        update or by a crash before its commit). Returns how many were removed."""
        emb_dir = self.sidecar / "embeddings"
        if self.read_only or not emb_dir.is_dir():
            return 0
        removed = 0
        with _EMBEDDINGS_LOCK, self._lock:
            if self._txn is not None:
                return 0
            keep = {r[0] for r in self.con.execute("SELECT file FROM embedding_sets").fetchall()}
            for p in emb_dir.iterdir():
                if p.name not in keep and _VERSION_FILE.match(p.name):
                    with contextlib.suppress(OSError):
                        p.unlink()
                        removed += 1
        return removed

    # -- runs ------------------------------------------------------------------------------
    def next_run_id(self) -> int:
        return int(self.one("SELECT nextval('run_id_seq')")[0])

    def runs_in_force(self, model: str, scope_key: str = "all") -> list[int]:
        """The applied runs of one model and scope: one, unless a run was recorded with ``replace=False``."""
        rows = self.con.execute(
            "SELECT id FROM runs WHERE status = 'applied' AND model = ? AND coalesce(scope_key, scope, 'all') = ? "
            "ORDER BY id", [model, scope_key]).fetchall()
        return [int(r[0]) for r in rows]

    def record_run(self, info: dict[str, Any], members: pa.Table, *, replace: bool = True) -> "RecordedRun":
        """Store a run and its members and apply its suppression, all in one transaction.

        With ``replace`` (the default) the applied runs of the same model and scope (``info["scope_key"]``)
        stop being in force in the same transaction: status ``replaced``, ``replaced_by`` the new run. So one
        run is in force per model and scope, and a union of runs with different policies cannot hide a
        group. When a run in force has the same settings and exactly the same groups, masters and
        suppression, nothing is written: that run is returned with ``unchanged=True``.

        ``info["summary"]`` (a dict) is completed with what the catalog shows after the command:
        ``retained`` (the run's images that are visible), ``suppressed``, ``visible`` (rows of the
        ``visible`` view), ``replaced`` and ``run_id``.
        """
        scope_key = str(info.get("scope_key") or info.get("scope") or "all")
        summary = info.setdefault("summary", {})
        with self.transaction(), self.registered("_members", members):
            in_force = self.runs_in_force(info["model"], scope_key)
            same = self._identical_run(in_force, info)
            if same is not None:
                retained, visible = self._visible_counts(same)
                summary.update(run_id=same, unchanged=True, replaced=[], retained=retained,
                               suppressed=int(members.num_rows) - retained, visible=visible)
                return RecordedRun(same, [], retained, visible, unchanged=True)
            run_id = self.next_run_id()
            replaced = in_force if replace else []
            self.con.execute(
                "INSERT INTO runs (id, created_at, model, threshold, mode, policy, scope, n_images, n_groups, "
                "n_suppressed, n_retained, largest_group, status, restored_at, summary, scope_key, replaced_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'applied', NULL, NULL, ?, NULL)",
                [run_id, _now(), info["model"], info["threshold"], info["mode"], info["policy"],
                 info.get("scope", "all"), info["n_images"], info["n_groups"], info["n_suppressed"],
                 info["n_retained"], info["largest_group"], scope_key],
            )
            if replaced:
                self.con.execute(
                    f"UPDATE runs SET status = 'replaced', replaced_by = ? WHERE id IN ({', '.join('?' * len(replaced))})",
                    [run_id, *replaced])
            cols = [c for c in ("group_size", "group_score", "decided_by") if c in members.column_names]
            extra = "".join(f", {c}" for c in cols)
            self.con.execute(
                "INSERT INTO run_members (run_id, image_id, group_id, master_id, is_master, is_suppressed, "
                f"sim_to_master{extra}) SELECT ?, image_id, group_id, master_id, is_master, is_suppressed, "
                f"sim_to_master{extra} FROM _members",
                [run_id],
            )
            self._recompute_suppression()
            retained, visible = self._visible_counts(run_id)
            summary.update(run_id=run_id, replaced=replaced, retained=retained,
                           suppressed=int(info["n_images"]) - retained, visible=visible)
            self.con.execute("UPDATE runs SET summary = ? WHERE id = ?", [json.dumps(summary, default=float), run_id])
            self.describe(f"applied dedup run {run_id} (undo with `neardup restore {run_id}`)"
                          + (f"; run {', '.join(map(str, replaced))} replaced" if replaced else ""))
        return RecordedRun(run_id, list(replaced), retained, visible)

    def _identical_run(self, candidates: Sequence[int], info: dict[str, Any]) -> int | None:
        """The first of ``candidates`` with the same settings and the same rows as the registered ``_members``."""
        cols = "image_id, group_id, master_id, is_master, is_suppressed"
        n = int(self.one("SELECT count(*) FROM _members")[0])
        bound = (info.get("summary") or {}).get("bound")
        for rid in candidates:
            row = self.one("SELECT threshold, mode, policy, summary FROM runs WHERE id = ?", [rid])
            if row is None or (float(row[0]), row[1], row[2]) != (float(info["threshold"]), info["mode"], info["policy"]):
                continue
            if (json.loads(row[3]) if row[3] else {}).get("bound") != bound:   # bounded grouping: same bound too
                continue
            if int(self.one("SELECT count(*) FROM run_members WHERE run_id = ?", [rid])[0]) != n:
                continue
            diff = self.one(f"SELECT count(*) FROM (SELECT {cols} FROM _members EXCEPT ALL "
                            f"SELECT {cols} FROM run_members WHERE run_id = ?)", [rid])[0]
            if diff == 0:
                return rid
        return None

    def _visible_counts(self, run_id: int) -> tuple[int, int]:
        """``(visible images of the run, rows of the visible view)``."""
        retained = self.one("SELECT count(*) FROM run_members m JOIN images i ON i.id = m.image_id "
                            "WHERE m.run_id = ? AND NOT i.is_suppressed", [run_id])[0]
        return int(retained), int(self.one("SELECT count(*) FROM visible")[0])

    def _recompute_suppression(self) -> None:
        """is_suppressed = suppressed by some applied run, not kept or un-grouped by a reviewer.

        Then every group of every applied run keeps a visible image: where runs in force together
        (different models or scopes, or ``replace=False``) would hide a whole group, its master stays.
        """
        self.con.execute(
            """
            UPDATE images SET is_suppressed = (
                id IN (SELECT m.image_id FROM run_members m JOIN runs r ON r.id = m.run_id
                       WHERE r.status = 'applied' AND m.is_suppressed)
                AND id NOT IN (SELECT image_id FROM overrides WHERE kind IN ('keep', 'not_duplicate')))
            """
        )
        self.con.execute(
            """
            UPDATE images SET is_suppressed = false WHERE id IN (
                SELECT m.master_id FROM run_members m JOIN runs r ON r.id = m.run_id AND r.status = 'applied'
                JOIN images i ON i.id = m.image_id
                GROUP BY m.run_id, m.group_id, m.master_id HAVING bool_and(i.is_suppressed))
            """
        )

    def restore_runs(self, run_id: int | None = None) -> "RestoreResult":
        """Undo one applied run (or every applied run when ``run_id`` is None), in one transaction.

        Undoing a run that replaced others puts those back in force (the state before that dedup),
        so ``restore`` of the newest run steps back one dedup. ``--all`` puts nothing back: every
        image becomes visible (but what a reviewer decided stays recorded).
        """
        with self.transaction():
            back: list[int] = []
            if run_id is None:
                ids = [r[0] for r in self.con.execute("SELECT id FROM runs WHERE status = 'applied' ORDER BY id").fetchall()]
            else:
                row = self.one("SELECT status, replaced_by FROM runs WHERE id = ?", [run_id])
                if row is None:
                    raise CatalogError(f"no run {run_id} in {self.path} (see `neardup runs`)")
                if row[0] == "replaced":
                    raise CatalogError(f"run {run_id} was replaced by run {row[1]}: restore run {row[1]} to put it back in force")
                if row[0] != "applied":
                    raise CatalogError(f"run {run_id} is already {row[0]}")
                ids = [run_id]
                back = [r[0] for r in self.con.execute(
                    "SELECT id FROM runs WHERE status = 'replaced' AND replaced_by = ? ORDER BY id", [run_id]).fetchall()]
            if ids:
                self.con.execute(
                    f"UPDATE runs SET status = 'restored', restored_at = ? WHERE id IN ({', '.join('?' * len(ids))})",
                    [_now(), *ids],
                )
                self.describe(f"restored run{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}")
            if back:
                self.con.execute(
                    f"UPDATE runs SET status = 'applied', replaced_by = NULL WHERE id IN ({', '.join('?' * len(back))})", back)
                for rid in back:  # decisions made while it was replaced take effect in it too
                    for img in self._decided_members(rid):
                        self._apply_decision(rid, img)
            self._recompute_suppression()
            visible = int(self.one("SELECT count(*) FROM visible")[0])
        return RestoreResult([int(i) for i in ids], [int(i) for i in back], visible)

    def restore(self, run_id: int | None = None) -> list[int]:
        """Undo one applied run (or every applied run when ``run_id`` is None). Returns the runs undone."""
        return self.restore_runs(run_id).undone

    def runs(self) -> list[dict[str, Any]]:
        t = self.sql("SELECT * EXCLUDE (summary), summary FROM runs ORDER BY id")
        out = t.to_pylist()
        for r in out:
            r["summary"] = json.loads(r["summary"]) if r["summary"] else {}
        return out

    def run(self, run_id: int) -> dict[str, Any]:
        for r in self.runs():
            if r["id"] == run_id:
                return r
        raise CatalogError(f"no run {run_id} in {self.path} (see `neardup runs`)")

    def latest_run_id(self, status: str | None = "applied") -> int | None:
        q = "SELECT max(id) FROM runs" + (" WHERE status = ?" if status else "")
        row = self.one(q, [status] if status else [])
        return None if row is None or row[0] is None else int(row[0])

    def run_members(self, run_id: int) -> pa.Table:
        self.run(run_id)
        return self.sql(
            "SELECT image_id, group_id, master_id, is_master, is_suppressed, sim_to_master, group_size, group_score, decided_by "
            "FROM run_members "
            "WHERE run_id = ? ORDER BY group_id, NOT is_master, image_id",
            [run_id],
        )

    # -- reviewer overrides ----------------------------------------------------------------
    def add_override(self, image_id: str, kind: str, note: str | None = None) -> None:
        """Record a reviewer decision: effective at once in the runs in force, and respected by later runs.

        ``keep``: never suppressed. ``master``: it becomes the master of its group in every applied
        run (the previous master is suppressed; an earlier ``master`` decision for another member of
        that group is dropped, one master per group). ``not_duplicate``: it leaves its group and
        stays visible; if it was the master, the group's best other member by the run's policy
        takes over. The group is otherwise left as it is until the next dedup (which also splits a
        chain that ran through a not-duplicate image).
        """
        if kind not in OVERRIDE_KINDS:
            raise InputError(f"override kind {kind!r}: use one of {', '.join(OVERRIDE_KINDS)}")
        with self.transaction():
            if not self.one("SELECT 1 FROM images WHERE id = ?", [image_id]):
                raise InputError(f"no image {image_id!r} in the catalog")
            if kind == "master":
                self.con.execute(
                    """DELETE FROM overrides WHERE kind = 'master' AND image_id <> ? AND image_id IN (
                         SELECT o.image_id FROM run_members m JOIN runs r ON r.id = m.run_id AND r.status = 'applied'
                         JOIN run_members o ON o.run_id = m.run_id AND o.group_id = m.group_id
                         WHERE m.image_id = ?)""", [image_id, image_id])
            self.con.execute("DELETE FROM overrides WHERE image_id = ? AND kind = ?", [image_id, kind])
            self.con.execute("INSERT INTO overrides VALUES (?, ?, ?, ?)", [image_id, kind, _now(), note])
            from .incremental import record_decision_basis  # what the decision was made on (see dedup)

            record_decision_basis(self, image_id)
            for rid in self._applied_runs_of(image_id):
                self._apply_decision(rid, image_id)
            self._recompute_suppression()
            self.describe(f"recorded the decision {kind!r} for image {image_id!r}")

    def remove_override(self, image_id: str, kind: str) -> None:
        """Withdraw a reviewer decision. Its group in the runs in force follows at once, except that an
        image withdrawn from ``not_duplicate`` rejoins a group only at the next dedup."""
        with self.transaction():
            self.con.execute("DELETE FROM overrides WHERE image_id = ? AND kind = ?", [image_id, kind])
            for rid in self._applied_runs_of(image_id):
                self._apply_decision(rid, image_id, withdrawn_master=kind == "master")
            self._recompute_suppression()
            self.describe(f"removed the decision {kind!r} for image {image_id!r}")

    def _applied_runs_of(self, image_id: str) -> list[int]:
        rows = self.con.execute("SELECT m.run_id FROM run_members m JOIN runs r ON r.id = m.run_id "
                                "WHERE r.status = 'applied' AND m.image_id = ? ORDER BY m.run_id", [image_id]).fetchall()
        return [int(r[0]) for r in rows]

    def _decided_members(self, run_id: int) -> list[str]:
        rows = self.con.execute("SELECT DISTINCT o.image_id FROM overrides o JOIN run_members m "
                                "ON m.image_id = o.image_id AND m.run_id = ? ORDER BY 1", [run_id]).fetchall()
        return [r[0] for r in rows]

    def _apply_decision(self, run_id: int, image_id: str, *, withdrawn_master: bool = False) -> None:
        """Bring the group of ``image_id`` in run ``run_id`` in line with the reviewer's decisions now recorded."""
        from .policy import parse_policy, policy_columns, priority_rank

        row = self.one("SELECT group_id, master_id FROM run_members WHERE run_id = ? AND image_id = ?", [run_id, image_id])
        if row is None:
            return
        gid, master = row
        members = [r[0] for r in self.con.execute(
            "SELECT image_id FROM run_members WHERE run_id = ? AND group_id = ? ORDER BY image_id", [run_id, gid]).fetchall()]
        if len(members) < 2:
            return
        ov = self.overrides()
        if image_id in ov["not_duplicate"]:       # out of the group: a visible singleton of its own
            new_gid = int(self.one("SELECT max(group_id) + 1 FROM run_members WHERE run_id = ?", [run_id])[0])
            self.con.execute("UPDATE run_members SET group_id = ?, master_id = image_id, is_master = true, "
                             "is_suppressed = false, sim_to_master = 1.0 WHERE run_id = ? AND image_id = ?",
                             [new_gid, run_id, image_id])
            members = [m for m in members if m != image_id]
        forced = [m for m in members if m in ov["master"]]
        if forced or master not in members or (withdrawn_master and master == image_id):
            run = self.one("SELECT model, policy FROM runs WHERE id = ?", [run_id])
            candidates = forced or members
            policy = parse_policy(run[1] or None)
            have = set(self.image_columns())
            cols = [c for c in policy_columns(policy) if c in have]
            meta = self.sql(f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM images "
                            f"WHERE id IN ({', '.join('?' * len(candidates))}) ORDER BY id", candidates)
            master = meta["id"][int(np.argmin(priority_rank(meta, policy)))].as_py()
        sims = self._similarities(run_id, members, master)
        keep = ov["keep"]
        upd = pa.table({"image_id": pa.array(members, pa.string()),
                        "is_master": pa.array([m == master for m in members]),
                        "is_suppressed": pa.array([m != master and m not in keep for m in members]),
                        "sim_to_master": pa.array(sims, pa.float32())})
        with self.registered("_upd", upd):
            self.con.execute("UPDATE run_members SET master_id = ?, is_master = u.is_master, is_suppressed = u.is_suppressed, "
                             "sim_to_master = u.sim_to_master FROM _upd u "
                             "WHERE run_members.run_id = ? AND run_members.image_id = u.image_id", [master, run_id])
        self._refresh_group_votes(run_id, members, image_id if image_id not in members else None)
        if forced and self.one("SELECT 1 FROM information_schema.columns WHERE table_name = 'run_members' "
                               "AND column_name = 'decided_by'"):
            self.con.execute("UPDATE run_members SET decided_by = 'reviewer' WHERE run_id = ? AND group_id = ?",
                             [run_id, gid])
        self.con.execute(
            """UPDATE runs SET n_groups = c.g, n_suppressed = c.s, n_retained = c.n - c.s, largest_group = c.big FROM (
                 SELECT count(*) FILTER (WHERE size >= 2) AS g, sum(sup) AS s, sum(size) AS n, max(size) AS big FROM (
                   SELECT group_id, count(*) AS size, count(*) FILTER (WHERE is_suppressed) AS sup
                   FROM run_members WHERE run_id = ? GROUP BY group_id)) c WHERE runs.id = ?""", [run_id, run_id])

    def _refresh_group_votes(self, run_id: int, members: Sequence[str], alone: str | None) -> None:
        """Keep ``group_size``/``group_score`` (when the run records them) true after a group changed.

        ``members`` are the group's images now; ``alone`` an image just taken out of it (its own group).
        The scores are aggregated as the run did (its summary's ``group_score``: sum, max or mean).
        """
        have = {r[0] for r in self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'run_members'").fetchall()}
        if "group_size" not in have:
            return
        ids = [*members, *([alone] if alone else [])]
        score = dict(self.con.execute(
            f"SELECT id, score FROM images WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall())
        vals = [float(score[m]) for m in members if score.get(m) is not None]
        summary = self.one("SELECT summary FROM runs WHERE id = ?", [run_id])[0]
        how = (json.loads(summary) if summary else {}).get("group_score", "sum")
        agg = None if not vals else (max(vals) if how == "max" else sum(vals) / len(vals) if how == "mean" else sum(vals))
        sets = "group_size = ?" + (", group_score = ?" if "group_score" in have else "")
        self.con.execute(f"UPDATE run_members SET {sets} WHERE run_id = ? AND image_id IN ({', '.join('?' * len(members))})",
                         [len(members), *([agg] if "group_score" in have else []), run_id, *members])
        if alone:
            own = score.get(alone)
            self.con.execute(f"UPDATE run_members SET {sets} WHERE run_id = ? AND image_id = ?",
                             [1, *([own] if "group_score" in have else []), run_id, alone])

    def _similarities(self, run_id: int, ids: Sequence[str], master: str) -> np.ndarray:
        """Cosine similarity of each of ``ids`` to ``master`` under the run's model (NaN where a vector is missing)."""
        model = self.one("SELECT model FROM runs WHERE id = ?", [run_id])[0]
        out = np.full(len(ids), np.nan, dtype=np.float32)
        try:
            _, _, vectors = self.embedding_vectors(model)
        except CatalogError:
            return out
        rows, row_ids = self.embedding_rows(model, [*ids, master])
        where = dict(zip(row_ids.tolist(), rows.tolist()))
        if master not in where:
            return out
        m = np.asarray(vectors[where[master]], dtype=np.float32)
        for k, i in enumerate(ids):
            if i in where:
                out[k] = 1.0 if i == master else float(np.asarray(vectors[where[i]], dtype=np.float32) @ m)
        return out

    def overrides(self) -> dict[str, set[str]]:
        """``{kind: {image ids}}`` for every reviewer decision."""
        out: dict[str, set[str]] = {k: set() for k in OVERRIDE_KINDS}
        for image_id, kind in self.con.execute("SELECT image_id, kind FROM overrides").fetchall():
            out.setdefault(kind, set()).add(image_id)
        return out
