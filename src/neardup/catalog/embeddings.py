"""The catalog's embedding store: each model's vectors in a memory-mapped version file in the sidecar
folder, switched to in one transaction, and old versions collected once nothing refers to them.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from ..errors import CatalogError, InputError
from .connection import _now
from .images import ImageTable

if TYPE_CHECKING:  # numpy and Arrow load where vectors are read or written: `neardup runs` needs neither
    import duckdb
    import numpy as np
    import pyarrow as pa

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Embedding version files (and their temporaries) that the collector may remove when unreferenced.
_VERSION_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.v[0-9]+\.npy(\.tmp)?$")
#: Writing a version file and switching to it, or collecting old ones: one at a time in a process
#: (other processes are kept out by DuckDB's file lock).
_EMBEDDINGS_LOCK = threading.RLock()


def _chunk_rows(dim: int) -> int:
    """Rows per chunk when vectors stream through memory: ~16 MB of float64 at a time."""
    return max(1, (1 << 21) // max(int(dim), 1))


def _string_array(ids: Any) -> pa.Array:
    """Ids as one Arrow string array (from a list, a numpy array or Arrow)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if isinstance(ids, pa.Array):
        return ids if ids.type == pa.string() else ids.cast(pa.string())
    if isinstance(ids, np.ndarray):
        ids = ids.astype(object, copy=False)
    return pa.array(ids if isinstance(ids, np.ndarray) else list(ids), pa.string())


def _canonical(model: str, block: np.ndarray, first_row: int) -> np.ndarray:
    """Rows of unit vectors rounded to canonical float32 (:func:`canonical_vectors`), a bad row named
    by its row in the whole input."""
    import numpy as np

    from ..similarity.canonical import canonical_vectors  # numba: only where vectors are written

    try:
        return np.ascontiguousarray(canonical_vectors(np.asarray(block, dtype=np.float32)))
    except ValueError as exc:
        text = str(exc)
        if text.startswith("row "):
            k, rest = text[4:].split(":", 1)
            text = f"row {first_row + int(k)}:{rest}"
        raise InputError(f"vectors for model {model!r}: {text}") from None


def _disk_error(path: Path, nbytes: int, exc: OSError) -> CatalogError:
    """One line for a version file that could not be written (the unfinished file is already gone)."""
    import errno

    why = f"not enough free disk space for {nbytes / 1e9:.2f} GB of vectors" if exc.errno == errno.ENOSPC else \
        (exc.strerror or str(exc))
    return CatalogError(f"{path}: cannot write the new vector file ({why}); the catalog is unchanged")


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk before the catalog may point to it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


class EmbeddingStore(ImageTable):
    """Each model's vectors and the image of each row (new ids get an images row with them)."""

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
        with self._lock:  # DuckDB's own numpy result: Arrow's string-to-numpy conversion would import pandas
            ids = self.con.execute("SELECT image_id FROM embedding_rows WHERE model = ? ORDER BY row",
                                   [model]).fetchnumpy()["image_id"]
        return EmbeddingSet(model=model, ids=ids.astype(object, copy=False), vectors=vectors, version=version)

    def embedding_rows(self, model: str, ids: Sequence[str] | None = None,
                       exclude: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, ids)`` of a model's embedding matrix for some ids (or all but ``exclude``), in row order.

        The lookup runs in DuckDB, so a 2,000-id cluster of a million-image catalog is a join,
        not a Python scan of every id.
        """
        import numpy as np
        import pyarrow as pa

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
                t = self.con.execute(f"SELECT r.row, r.image_id FROM embedding_rows r WHERE {' AND '.join(conds)} "
                                     "ORDER BY r.row", [model]).fetchnumpy()
            finally:
                for name in tables:
                    self.con.unregister(name)
        return np.asarray(t["row"], dtype=np.int64), t["image_id"].astype(object, copy=False)

    def embedding_vectors(self, model: str | None = None) -> tuple[str, int, np.ndarray]:
        """``(model, version, vectors)`` without loading the ids (memory-mapped, read-only)."""
        import numpy as np

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
        reference to a missing file. See :meth:`put_embedding_chunks` for the streaming form.
        """
        import numpy as np

        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise InputError(f"{len(ids)} ids for {vectors.shape[0] if vectors.ndim else 0} vectors")
        step = _chunk_rows(vectors.shape[1])
        chunks = ((s, vectors[s:s + step]) for s in range(0, vectors.shape[0], step))
        return self.put_embedding_chunks(model, ids, vectors.shape[1], chunks, rows=vectors.shape[0],
                                         images=images, also=also)

    def put_embedding_chunks(self, model: str, ids: Sequence[str] | np.ndarray | pa.Array, dim: int,
                             chunks: Iterable[tuple[int, np.ndarray]], *, rows: int | None = None,
                             images: pa.Table | None = None,
                             also: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> tuple[int, int]:
        """:meth:`put_embeddings` from a stream: ``chunks`` yields ``(first_row, vectors)`` for
        consecutive row ranges of ``ids`` (unit-norm rows, any float dtype), in order.

        Memory stays at one chunk whatever the store's size: the new version file is written with
        plain file writes (the old version copied over chunk by chunk, updated rows written in
        place, new rows appended), never held in memory or mapped. Anything raised while the
        chunks are produced (a bad row found by the caller's validation, Ctrl-C) deletes the
        unfinished file and leaves the catalog exactly as it was.
        """
        if not _MODEL_NAME.match(model):
            raise InputError(f"model name {model!r}: use letters, digits, '.', '_' or '-'")
        self.require_writable()  # before the version file is written, not at its commit
        import numpy as np
        import pyarrow as pa

        from .. import interrupts
        from ..npyfile import NpyRowReader, NpyRowWriter, npy_layout

        id_arr = _string_array(ids)
        n = len(id_arr)
        if rows is not None and rows != n:
            raise InputError(f"{n} ids for {rows} vectors")
        self.require_sidecar()  # never start a new sidecar beside vectors that are elsewhere
        emb_dir = self.sidecar / "embeddings"
        with _EMBEDDINGS_LOCK, self._lock:
            emb_dir.mkdir(parents=True, exist_ok=True)
            cur = self.one("SELECT file, count, dim, version FROM embedding_sets WHERE model = ?", [model])
            if cur is not None and cur[2] != dim:
                raise InputError(f"model {model!r} has dimension {cur[2]} in this catalog; these vectors have {dim}")
            n_old = 0 if cur is None else int(cur[1])
            version = 1 if cur is None else int(cur[3]) + 1
            old_row = self._rows_of(model, id_arr) if cur is not None else np.full(n, -1, dtype=np.int64)
            is_new = old_row < 0
            n_new = int(is_new.sum())
            dest = old_row.copy()
            dest[is_new] = n_old + np.arange(n_new, dtype=np.int64)
            del old_row
            total = n_old + n_new
            file = f"{model}.v{version}.npy"
            tmp = emb_dir / (file + ".tmp")
            try:
                out = NpyRowWriter(tmp, (total, dim), np.float32)
            except OSError as exc:
                raise _disk_error(tmp, total * dim * 4, exc) from None
            try:
                if cur is not None:  # the current version, copied over (canonical: a catalog from before them)
                    layout = npy_layout(self._embeddings_file(cur[0]))
                    if layout.shape != (n_old, dim):
                        raise CatalogError(f"{self.path}: embeddings file {cur[0]} has shape {layout.shape}, "
                                           f"catalog says {(n_old, dim)}")
                    with NpyRowReader(layout) as old:
                        for s, block in old.chunks(_chunk_rows(dim)):
                            out.write(s, _canonical(model, block, s))
                expect = 0
                for s, block in chunks:
                    block = np.asarray(block)
                    if s != expect or block.ndim != 2 or block.shape[1] != dim or s + len(block) > n:
                        raise ValueError(f"chunk at row {s} of shape {block.shape} does not continue "
                                         f"rows 0..{expect} of {n} x {dim}")
                    out.write_at(dest[s:s + len(block)], _canonical(model, block, s))
                    expect = s + len(block)
                if expect != n:
                    raise InputError(f"{n} ids for {expect} vectors")
                interrupts.checkpoint()  # a Ctrl-C that something swallowed: do not put the file in place
                out.finish()
                os.replace(tmp, emb_dir / file)  # not referenced yet: a crash from here on leaves it unreferenced
            except OSError as exc:
                out.abort()
                raise _disk_error(tmp, total * dim * 4, exc) from None
            except BaseException:
                out.abort()
                raise
            _fsync(emb_dir)
            del dest
            new_ids = id_arr.filter(pa.array(is_new))
            rows_table = pa.table({"row": pa.array(np.arange(n_old, total, dtype=np.int64)), "image_id": new_ids})
            missing = pa.table({"id": new_ids})
            # No clean-up on failure: if COMMIT raised after landing, the catalog points to this file.
            with self.transaction():
                if images is not None:
                    self.upsert_images(images, _in_transaction=True)
                with self.registered("_new_ids", missing), self.registered("_rows", rows_table):
                    self.con.execute("INSERT INTO images (id, added_at) SELECT id, ? FROM _new_ids ANTI JOIN images USING (id)", [_now()])
                    self.con.execute("INSERT INTO embedding_rows (model, row, image_id) SELECT ?, row, image_id FROM _rows",
                                     [model])
                self.con.execute("DELETE FROM embedding_sets WHERE model = ?", [model])
                self.con.execute("INSERT INTO embedding_sets VALUES (?, ?, ?, ?, ?, ?)",
                                 [model, dim, file, total, version, _now()])
                if also is not None:
                    also(self.con)
                self.describe(f"stored {{n}} vector(s) for model {model}", n)
            if self._txn is None:  # committed (not part of an enclosing transaction): drop the old version
                self.collect_garbage()
        return n_new, n - n_new

    def _rows_of(self, model: str, ids: pa.Array) -> np.ndarray:
        """The row of each id in the model's current vectors, -1 for ids it does not have (a join in DuckDB)."""
        import numpy as np
        import pyarrow as pa

        out = np.full(len(ids), -1, dtype=np.int64)
        t = pa.table({"i": pa.array(np.arange(len(ids), dtype=np.int64)), "id": ids})
        with self._lock, self.registered("_put_ids", t):
            got = self.con.execute("SELECT t.i, r.row FROM _put_ids t JOIN embedding_rows r "
                                   "ON r.model = ? AND r.image_id = t.id", [model]).fetchnumpy()
        out[np.asarray(got["i"], dtype=np.int64)] = np.asarray(got["row"], dtype=np.int64)
        return out

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
