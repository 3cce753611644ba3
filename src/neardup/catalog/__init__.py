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

One module per concern, composed here into :class:`Catalog`: ``connection`` (opening, locks,
transactions), ``schema`` (tables, version, migration), ``images`` (the images table),
``embeddings`` (the embedding store), ``runs`` (the run ledger) and ``decisions`` (overrides).
"""

from __future__ import annotations

import os
from typing import Any

from .connection import DEFAULT_LOCK_WAIT, Connection, lock_wait_default
from .decisions import OVERRIDE_KINDS, Decisions
from .embeddings import EmbeddingSet, EmbeddingStore
from .images import ImageTable
from .runs import RecordedRun, RestoreResult, RunLedger
from .schema import CORE_IMAGE_COLUMNS, DEFAULT_DB, RESERVED_IMAGE_COLUMNS, SCHEMA_VERSION, Schema

__all__ = [
    "CORE_IMAGE_COLUMNS", "Catalog", "Connection", "DEFAULT_DB", "DEFAULT_LOCK_WAIT", "Decisions",
    "EmbeddingSet", "EmbeddingStore", "ImageTable", "OVERRIDE_KINDS", "RESERVED_IMAGE_COLUMNS",
    "RecordedRun", "RestoreResult", "RunLedger", "SCHEMA_VERSION", "Schema", "lock_wait_default",
]


class Catalog(Decisions, Schema):
    """A neardup catalog on disk. Use as a context manager or call :meth:`close`.

    >>> with Catalog("cat.duckdb") as cat:          # doctest: +SKIP
    ...     cat.runs()
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_DB, *, read_only: bool = False,
                 wait: float | None = None, on_wait: Any = None, sql_only: bool = False) -> None:
        """Open (or create) the catalog; while another process holds it, retry for ``wait`` seconds
        (default :func:`lock_wait_default`), calling ``on_wait(message)`` once when waiting starts.
        ``sql_only``: only SQL with plain rows will be run (``rows``/``one``/``scalar``), so DuckDB's
        Python package need not load (:func:`~neardup.catalog.connection.duckdb_engine`)."""
        super().__init__(path, read_only=read_only, wait=wait, on_wait=on_wait, sql_only=sql_only)
        if self._init_schema() and not read_only:
            self.collect_garbage()  # version files a crash or an earlier update left unreferenced

    def __enter__(self) -> "Catalog":
        return self
