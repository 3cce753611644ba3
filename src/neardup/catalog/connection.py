"""The catalog's DuckDB connection: opening it (waiting, bounded, for another process's write lock),
all-or-nothing transactions with a commit marker, and the small query helpers every part uses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .. import interrupts
from ..errors import CatalogError

if TYPE_CHECKING:  # Arrow loads with the first Arrow result (DuckDB imports it): `neardup runs` needs none
    import duckdb
    import pyarrow as pa

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


def duckdb_engine(sql_only: bool = False) -> Any:
    """The DuckDB module a connection is opened with: the Python package (relations, Arrow results and
    scans), or where only SQL with plain rows is run (``neardup runs``, ``skipped``) the C++ extension
    alone (``_duckdb``, whose classes the package re-exports): duckdb 2's own Python modules cost
    ~0.1 s of CPU to import. A connection opened either way is the same object; importing the
    package later (:meth:`Connection.sql` does) gives it the relation API."""
    if not sql_only or "duckdb" in sys.modules:
        import duckdb

        return duckdb
    try:
        import _duckdb
    except ImportError:  # a duckdb whose extension is not a top-level module
        import duckdb

        return duckdb
    return _duckdb


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Connection:
    """An open catalog file: the connection, its in-process lock, and transactions on it."""

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False,
                 wait: float | None = None, on_wait: Any = None, sql_only: bool = False) -> None:
        """Connect; while another process holds the file, retry for ``wait`` seconds
        (default :func:`lock_wait_default`), calling ``on_wait(message)`` once when waiting starts.
        ``sql_only``: the caller runs SQL and reads plain rows only (see :func:`duckdb_engine`)."""
        self.path = Path(path)
        self._duckdb = duckdb_engine(sql_only)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._txn: list[tuple[str, int]] | None = None
        if read_only and not self.path.exists():
            raise CatalogError(f"{self.path}: no catalog here (run `neardup import-embeddings` or `neardup scan` first)")
        self._wait = lock_wait_default() if wait is None else wait
        self._on_wait = on_wait
        self.con = self._connect(self._wait, on_wait)

    def _connect(self, wait: float, on_wait: Any) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + wait
        pause = 0.02
        told = False
        while True:
            try:
                return self._duckdb.connect(str(self.path), read_only=self.read_only)
            except self._duckdb.IOException as exc:  # another process holds the write lock, or not a DuckDB file
                msg = str(exc).splitlines()[0]
                if "lock" not in msg.lower():
                    raise CatalogError(f"{self.path}: cannot open catalog ({_why_not(self.path, msg)})") from None
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
            except self._duckdb.Error as exc:
                raise CatalogError(f"{self.path}: cannot open catalog ({str(exc).splitlines()[0]})") from None

    # -- lifecycle -------------------------------------------------------------------------
    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a Ctrl-C meanwhile is raised after it, so the file is left closed)."""
        with interrupts.critical(), contextlib.suppress(Exception):
            self.con.close()

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Close the catalog file for the block, so that other processes can open it meanwhile (a long
        computation that needs no query), then open it again (waiting, like opening does).

        Nothing may use the connection inside the block. On an error or Ctrl-C inside, the file stays
        closed (the caller is ending). Refused inside a transaction.
        """
        with self._lock:
            if self._txn is not None:
                raise RuntimeError("cannot release the catalog file inside a transaction")
            self.close()
            self.con = _Released(self.path)  # type: ignore[assignment]
        yield
        with self._lock:
            self.con = self._connect(self._wait, self._on_wait)

    @property
    def in_transaction(self) -> bool:
        """True inside :meth:`transaction` (a nested one joins it)."""
        return self._txn is not None

    @property
    def sidecar(self) -> Path:
        """Folder beside the DuckDB file holding embeddings, thumbnails and caches."""
        return self.path.with_name(self.path.name + ".d")

    def require_writable(self) -> None:
        """Refuse a change on a read-only open in one line, before anything (a statement or a file) is written."""
        if self.read_only:
            raise CatalogError(f"{self.path}: the catalog was opened read-only; this change needs a "
                               "read-write open (the catalog is unchanged)")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All-or-nothing: an exception (or Ctrl-C) inside rolls everything back. Refused on a read-only open.

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
            self.require_writable()  # every transaction writes: refused before any statement
            token = os.urandom(16).hex()  # random, as uuid4 (whose module imports platform: ~6 ms of `neardup runs`)
            self._txn = notes = []
            try:
                self.con.execute("BEGIN TRANSACTION")
                try:
                    yield self.con
                    interrupts.checkpoint()  # a Ctrl-C that something swallowed: do not commit after it
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
        import duckdb  # noqa: F401  (Arrow scans need DuckDB's Python package: loaded if this connection was opened without)

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

    def rows(self, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Run a read query and return its rows as dicts of plain Python values: no Arrow, no numpy
        (for small results that are printed, such as the runs and the skipped files)."""
        with self._lock:
            cur = self.con.execute(query, list(params) if params else [])
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run a read query and return an Arrow table."""
        import duckdb  # noqa: F401  (the relation API is DuckDB's Python package: loaded if this connection was opened without)

        with self._lock:
            return self.con.sql(query, params=list(params) if params else None).to_arrow_table()


def _why_not(path: Path, msg: str) -> str:
    """Why DuckDB could not open ``path``, in a user's words where the cause is plain (else DuckDB's line)."""
    if path.is_dir():
        return "it is a folder; give the catalog file"
    if "not a valid DuckDB database file" in msg:
        return "not a DuckDB database file"
    if path.parent.exists() and not path.parent.is_dir():
        return f"{path.parent} is not a folder"
    if not path.parent.exists():
        return f"folder {path.parent} does not exist; create it first"
    return msg


class _Released:
    """Stands for the connection while the file is released: any use is a bug, said in one line."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise CatalogError(f"{self._path}: the catalog file is released for a computation; "
                           f"it was used ({name}) before being opened again")
