"""Precomputed embeddings in: read ``.npy`` + ids or Parquet, validate, L2-normalise, store.

Every check names the file and the row, and nothing is written unless every check passes.
The vectors stream: they are read, checked, normalised and written to the new store version in
chunks of a few thousand rows, so an import needs memory for one chunk (plus the ids), not for
the vectors (docs/benchmarks-scale.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .catalog import Catalog
from .catalog.embeddings import _chunk_rows  # rows per streamed chunk: the store copies in the same steps
from .errors import InputError
from .npyfile import NpyRowReader, npy_layout
from .paths import require_regular_file

DEFAULT_MODEL = "precomputed"


@dataclass
class ImportReport:
    model: str
    added: int
    updated: int
    dim: int
    meta_rows: int = 0
    meta_unmatched: list[str] = field(default_factory=list)


def read_ids(path: str | Path) -> np.ndarray:
    """One id per line (blank trailing lines ignored; blank lines inside are an error)."""
    p = require_regular_file(path, "ids file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{p}: cannot read ids ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{p}: ids file is not UTF-8 text") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return np.asarray([ln.strip() for ln in lines], dtype=object)


def _ids_array(ids: Any) -> pa.Array:
    """Ids as an Arrow string array: each value ``str(v)``, and ``None`` kept as null (an empty id)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if isinstance(ids, pa.Array):
        if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type) or (
                pa.types.is_dictionary(ids.type) and pa.types.is_string(ids.type.value_type)):
            return ids.cast(pa.string())
        ids = ids.to_pylist()
    return pa.array([None if v is None else str(v) for v in ids], pa.string())


def _id_at(ids: Any, row: int) -> Any:
    """The id of one row (for messages), from an Arrow array or a sequence."""
    v = ids[row]
    return v.as_py() if isinstance(v, pa.Scalar) else v


@dataclass
class VectorSource:
    """Vectors to import, read in row chunks: ids (an Arrow string array), row count, dimension.

    ``chunks(step)`` yields ``(first_row, rows)`` for consecutive row ranges; a file is read as it
    is consumed (never whole), so memory stays at one chunk.
    """

    name: str
    ids: pa.Array
    rows: int
    dim: int
    _chunks: Callable[[int], Iterator[tuple[int, np.ndarray]]]
    _close: Callable[[], None] = lambda: None

    def chunks(self, step: int) -> Iterator[tuple[int, np.ndarray]]:
        return self._chunks(step)

    def close(self) -> None:
        self._close()

    def read_all(self) -> np.ndarray:
        """Every row, as one float32 array."""
        out = np.empty((self.rows, self.dim), dtype=np.float32)
        for s, block in self.chunks(_chunk_rows(self.dim)):
            out[s:s + len(block)] = block
        return out


def _array_source(vectors: np.ndarray, ids: Any) -> VectorSource:
    """An in-memory array (rows are normalised from its own dtype, as given)."""
    if ids is None:
        raise InputError("ids are required with an in-memory array")
    if vectors.ndim != 2:
        raise InputError(f"vectors: expected a 2-D array, got shape {vectors.shape}")
    id_arr = _ids_array(read_ids(ids) if isinstance(ids, (str, Path)) else ids)

    def chunks(step: int) -> Iterator[tuple[int, np.ndarray]]:
        for s in range(0, vectors.shape[0], step):
            yield s, vectors[s:s + step]

    return VectorSource("vectors", id_arr, int(vectors.shape[0]), int(vectors.shape[1]), chunks)


def _npy_source(p: Path, ids: str | Path | Sequence[str] | None) -> VectorSource:
    try:
        layout = npy_layout(p)
    except (ValueError, OSError) as exc:
        raise InputError(f"{p}: not a readable .npy array ({exc})") from None
    if len(layout.shape) != 2:
        raise InputError(f"{p}: expected a 2-D array (rows x dimensions), got shape {layout.shape}")
    if not np.issubdtype(layout.dtype, np.floating) and not np.issubdtype(layout.dtype, np.integer):
        raise InputError(f"{p}: array dtype {layout.dtype} is not numeric")
    if ids is None:
        raise InputError(f"{p}: a .npy has no ids; give them with --ids FILE (one id per line)")
    id_arr = _ids_array(read_ids(ids) if isinstance(ids, (str, Path)) else ids)
    src = str(ids) if isinstance(ids, (str, Path)) else "ids"
    if len(id_arr) != layout.shape[0]:
        raise InputError(f"{src}: {len(id_arr)} ids but {p} has {layout.shape[0]} vector rows")
    reader = NpyRowReader(layout)

    def chunks(step: int) -> Iterator[tuple[int, np.ndarray]]:
        try:
            for s, block in reader.chunks(step):
                yield s, np.asarray(block, dtype=np.float32)  # float32 first, as np.load(...).astype would
        except (EOFError, OSError) as exc:
            raise InputError(f"{p}: cannot read the vectors ({exc})") from None

    return VectorSource(str(p), id_arr, layout.shape[0], layout.shape[1], chunks, reader.close)


def _list_rows(col: pa.Array, first_row: int, source: str, name: str, dim: int) -> np.ndarray:
    """One batch of a list (or fixed-size list) vector column as float32 rows, checked: no null
    vectors, every vector ``dim`` values (rows named by their row in the file)."""
    if col.null_count:
        row = first_row + int(np.flatnonzero(np.asarray(col.is_null()))[0])
        raise InputError(f"{source} row {row}: vector column {name!r} is null")
    if not pa.types.is_fixed_size_list(col.type):
        lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False), dtype=np.int64)
        if (lengths != dim).any():
            k = int(np.flatnonzero(lengths != dim)[0])
            raise InputError(f"{source} row {first_row + k}: vector has {int(lengths[k])} values, row 0 has {dim}")
    try:
        flat = np.asarray(pc.list_flatten(col).to_numpy(zero_copy_only=False), dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{source}: vector column {name!r} has values that are not numbers ({exc})") from None
    return flat.reshape(len(col), dim)


def _parquet_source(p: Path, id_column: str, vector_column: str | None) -> VectorSource:
    def unreadable(exc: BaseException) -> InputError:
        return InputError(f"{p}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")

    try:  # buffered, no pre-buffering: a column chunk is not read into memory at once (with pyarrow's
        # default pre_buffer, iterating a 2 GB file's batches held all 2 GB until the end)
        pf = pq.ParquetFile(p, buffer_size=1 << 23, pre_buffer=False)
        schema = pf.schema_arrow
    except Exception as exc:  # pyarrow raises several kinds
        raise unreadable(exc) from None
    names = schema.names
    if id_column not in names:
        raise InputError(f"{p}: no {id_column!r} column (columns: {', '.join(names)})")
    listy = (pa.types.is_list, pa.types.is_fixed_size_list, pa.types.is_large_list)
    if vector_column is None:
        cands = [f.name for f in schema if any(t(f.type) for t in listy)]
        if len(cands) != 1:
            raise InputError(f"{p}: found {len(cands)} list columns ({', '.join(cands) or 'none'}); "
                             "name the vector column with --vector-column")
        vector_column = cands[0]
    if vector_column not in names:
        raise InputError(f"{p}: no {vector_column!r} column")
    vtype = schema.field(vector_column).type
    if not any(t(vtype) for t in listy):
        raise InputError(f"{p}: column {vector_column!r} is not a list column (it is {vtype})")
    try:
        id_col = pf.read(columns=[id_column]).column(0)
    except Exception as exc:
        raise unreadable(exc) from None
    if id_col.null_count:
        row = int(np.flatnonzero(np.asarray(id_col.is_null()))[0])
        raise InputError(f"{p} row {row}: id is empty")
    id_arr = _ids_array(id_col)
    del id_col
    n = int(pf.metadata.num_rows)
    if pa.types.is_fixed_size_list(vtype):
        dim = int(vtype.list_size)
    elif n == 0:
        dim = 0
    else:
        try:
            first = next(pf.iter_batches(batch_size=1, columns=[vector_column])).column(0)
        except Exception as exc:
            raise unreadable(exc) from None
        if first.null_count:
            raise InputError(f"{p} row 0: vector column {vector_column!r} is null")
        dim = int(pc.list_value_length(first)[0].as_py())

    def chunks(step: int) -> Iterator[tuple[int, np.ndarray]]:
        batches = pf.iter_batches(batch_size=step, columns=[vector_column], use_threads=False)
        s = 0
        while True:
            try:
                batch = next(batches, None)
            except Exception as exc:
                raise unreadable(exc) from None
            if batch is None:
                break
            rows = _list_rows(batch.column(0), s, str(p), vector_column, dim)
            del batch
            yield s, rows
            s += len(rows)

    return VectorSource(str(p), id_arr, n, dim, chunks, pf.close if hasattr(pf, "close") else lambda: None)


def open_vectors(path: str | Path, ids: str | Path | Sequence[str] | None = None, *,
                 id_column: str = "id", vector_column: str | None = None) -> VectorSource:
    """Open a ``.npy`` (ids from a text file, one per line) or a Parquet file for a streamed read:
    the header, the ids and the shape are checked now; the vectors are read chunk by chunk."""
    p = require_regular_file(path, "vectors file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _npy_source(p, ids)
    if suffix in (".parquet", ".pq"):
        return _parquet_source(p, id_column, vector_column)
    raise InputError(f"{p}: unsupported vectors format {suffix!r} (use .npy with --ids, or .parquet)")


def read_vectors(path: str | Path, ids: str | Path | Sequence[str] | None = None, *,
                 id_column: str = "id", vector_column: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(ids, vectors)`` from a ``.npy`` (ids from a text file, one per line) or a Parquet file."""
    src = open_vectors(path, ids, id_column=id_column, vector_column=vector_column)
    try:
        return src.ids.to_numpy(zero_copy_only=False).astype(object, copy=False), src.read_all()
    finally:
        src.close()


def check_ids(ids: pa.Array, rows: int, source: str) -> None:
    """One line naming the first problem: no rows, an empty id, a duplicate id (its first two rows)."""
    if len(ids) != rows:
        raise InputError(f"{source}: {len(ids)} ids but {rows} vector rows")
    if rows == 0:
        raise InputError(f"{source}: no vectors")
    empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0), True)
    if pc.any(empty).as_py():
        row = int(np.flatnonzero(np.asarray(empty.to_numpy(zero_copy_only=False)))[0])
        raise InputError(f"{source} row {row}: id is empty")
    order = pc.sort_indices(ids)  # stable: equal ids stay in row order
    sorted_ids = ids.take(order)
    same = pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, len(sorted_ids) - 1))
    if pc.any(same).as_py():
        k = int(np.flatnonzero(np.asarray(same.to_numpy(zero_copy_only=False)))[0])  # the smallest duplicate id
        a, b = int(order[k].as_py()), int(order[k + 1].as_py())
        raise InputError(f"{source} rows {a} and {b}: duplicate id {sorted_ids[k].as_py()!r}")


def normalise_rows(block: np.ndarray, first_row: int, ids: Any, source: str) -> np.ndarray:
    """Check one chunk of vector rows (finite, not all zero) and return them unit-norm, float32.

    Rows already unit-norm (to float32 rounding) or already canonical are returned unchanged, so
    the stored vectors are exactly ``canonical_vectors`` of these rows; rows are named by their
    row in the whole input (``first_row`` + offset).
    """
    block = np.asarray(block, dtype=np.float64)
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        r = first_row + int(np.flatnonzero(bad)[0])
        raise InputError(f"{source} row {r} (id {_id_at(ids, r)!r}): vector has NaN or infinite values")
    norms = np.linalg.norm(block, axis=1)
    zero = norms == 0
    if zero.any():
        r = first_row + int(np.flatnonzero(zero)[0])
        raise InputError(f"{source} row {r} (id {_id_at(ids, r)!r}): vector is all zeros (cannot be normalised)")
    # rows that are unit already (float32 rounding) or canonical already (a re-import) are
    # kept bit for bit, so the stored vectors are exactly canonical_vectors(these rows)
    keep = np.abs(norms - 1.0) <= 1e-6
    maybe = ~keep & (np.abs(norms - 1.0) <= np.sqrt(block.shape[1]) / 4096)
    if maybe.any():
        sub = block[maybe] * 2048.0
        keep[maybe] = (np.rint(sub) == sub).all(axis=1)
    return np.where(keep[:, None], block, block / norms[:, None]).astype(np.float32)


def validate_and_normalise(ids: np.ndarray, vectors: np.ndarray, source: str) -> np.ndarray:
    """Check ids and vectors, and return unit-norm float32 rows (input may have any norm).

    Rows already unit-norm (to float32 rounding) or already canonical are returned unchanged.
    """
    id_arr = _ids_array(ids)
    if len(id_arr) != len(vectors):
        raise InputError(f"{source}: {len(id_arr)} ids but {len(vectors)} vector rows")
    check_ids(id_arr, len(id_arr), source)
    if vectors.shape[1] == 0:
        raise InputError(f"{source}: vectors have no dimensions")
    out = np.empty(vectors.shape, dtype=np.float32)
    step = _chunk_rows(vectors.shape[1])
    for s in range(0, len(vectors), step):
        out[s:s + step] = normalise_rows(vectors[s:s + step], s, id_arr, source)
    return out


def read_meta(path: str | Path) -> pa.Table:
    """Read image metadata (CSV or Parquet) with an ``id`` column; ids are cast to strings."""
    p = require_regular_file(path, "metadata file")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(p)
        elif p.suffix.lower() in (".csv", ".tsv", ".txt"):
            opts = pacsv.ParseOptions(delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
            table = pacsv.read_csv(p, parse_options=opts,
                                   convert_options=pacsv.ConvertOptions(column_types={"id": pa.string()}))
        else:
            raise InputError(f"{p}: metadata must be .csv, .tsv or .parquet")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{p}: cannot read metadata ({str(exc).splitlines()[0]})") from None
    if "id" not in table.column_names:
        raise InputError(f"{p}: no 'id' column (columns: {', '.join(table.column_names)})")
    table = table.set_column(table.column_names.index("id"), "id", pc.cast(table["id"], pa.string()))
    ids = table["id"].to_pylist()
    seen: dict[str, int] = {}
    for row, v in enumerate(ids):
        if v is None or not v.strip():
            raise InputError(f"{p} row {row}: id is empty")
        if v in seen:
            raise InputError(f"{p} rows {seen[v]} and {row}: duplicate id {v!r}")
        seen[v] = row
    for col in ("score", "brightness"):
        if col in table.column_names:
            try:
                table = table.set_column(table.column_names.index(col), col, pc.cast(table[col], pa.float64()))
            except pa.ArrowInvalid:
                raise InputError(f"{p}: column {col!r} must be numeric") from None
    if "brightness" in table.column_names:
        b = np.asarray(table["brightness"].to_numpy(zero_copy_only=False), dtype=float)
        bad = np.flatnonzero((b < 0) | (b > 1))
        if len(bad):
            raise InputError(f"{p} row {bad[0]}: brightness {b[bad[0]]} is outside 0..1")
    return table


def _checked_chunks(src: VectorSource, progress: Callable[[int, int], None] | None) -> Iterator[tuple[int, np.ndarray]]:
    """The source's rows chunk by chunk, checked and normalised (:func:`normalise_rows`)."""
    if progress is not None:
        progress(0, src.rows)
    for s, block in src.chunks(_chunk_rows(src.dim)):
        yield s, normalise_rows(block, s, src.ids, src.name)
        if progress is not None:
            progress(s + len(block), src.rows)


def import_embeddings(catalog: Catalog, vectors: str | Path | np.ndarray, ids: str | Path | Sequence[str] | None = None,
                      *, meta: str | Path | pa.Table | None = None, model: str = DEFAULT_MODEL,
                      id_column: str = "id", vector_column: str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Validate and store precomputed embeddings (and optional metadata) in one transaction.

    Re-importing ids already present updates their vectors and metadata; nothing is duplicated.
    The vectors stream through memory in chunks into the store's new version file; the ids, the
    metadata and the dimension are checked before it is started, each row as it passes, and any
    error (or Ctrl-C) deletes the unfinished file: the catalog is changed only by the final commit.
    ``progress(rows_done, rows)`` is called after each chunk.
    """
    src = _array_source(vectors, ids) if isinstance(vectors, np.ndarray) else \
        open_vectors(vectors, ids, id_column=id_column, vector_column=vector_column)
    try:
        check_ids(src.ids, src.rows, src.name)
        if src.dim == 0:
            raise InputError(f"{src.name}: vectors have no dimensions")
        meta_table = None
        unmatched: list[str] = []
        if meta is not None:
            meta_table = meta if isinstance(meta, pa.Table) else read_meta(meta)
            # before anything is written, and before filtering, so a bad value's row is the file's row
            catalog.check_images(meta_table, source="meta" if isinstance(meta, pa.Table) else str(meta))
            meta_ids = meta_table["id"].combine_chunks()
            in_new = np.asarray(pc.is_in(meta_ids, value_set=src.ids).to_numpy(zero_copy_only=False), dtype=bool)
            others = np.flatnonzero(~in_new)
            existing = catalog.existing_ids(meta_ids.take(pa.array(others)).to_pylist()) if len(others) else set()
            mask = in_new.copy()
            for k in others:
                mask[k] = meta_ids[int(k)].as_py() in existing
            unmatched = meta_ids.filter(pa.array(~mask)).to_pylist()
            meta_table = meta_table.filter(pa.array(mask))
        chunks = _checked_chunks(src, progress)
        added, updated = catalog.put_embedding_chunks(model, src.ids, src.dim, chunks, rows=src.rows,
                                                      images=meta_table)
    finally:
        src.close()
    return ImportReport(model=model, added=added, updated=updated, dim=src.dim,
                        meta_rows=0 if meta_table is None else meta_table.num_rows, meta_unmatched=unmatched)
