"""Precomputed embeddings in: read ``.npy`` + ids or Parquet, validate, L2-normalise, store.

Every check names the file and the row, and nothing is written unless every check passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .catalog import Catalog
from .errors import InputError
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


def _vectors_from_list_column(col: pa.ChunkedArray, source: str, name: str) -> np.ndarray:
    col = col.combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        if col.null_count:
            row = int(np.flatnonzero(np.asarray(col.is_null()))[0])
            raise InputError(f"{source} row {row}: vector column {name!r} is null")
        flat = col.flatten()
        return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), col.type.list_size)
    lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False), dtype=float)
    if np.isnan(lengths).any():
        row = int(np.flatnonzero(np.isnan(lengths))[0])
        raise InputError(f"{source} row {row}: vector column {name!r} is null")
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise InputError(f"{source} row {row}: vector has {int(lengths[row])} values, row 0 has {int(lengths[0])}")
    dim = int(lengths[0]) if len(lengths) else 0
    flat = pc.list_flatten(col)
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), dim)


def read_vectors(path: str | Path, ids: str | Path | Sequence[str] | None = None, *,
                 id_column: str = "id", vector_column: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(ids, vectors)`` from a ``.npy`` (ids from a text file, one per line) or a Parquet file."""
    p = require_regular_file(path, "vectors file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            vectors = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{p}: not a readable .npy array ({exc})") from None
        if vectors.ndim != 2:
            raise InputError(f"{p}: expected a 2-D array (rows x dimensions), got shape {vectors.shape}")
        if not np.issubdtype(vectors.dtype, np.floating) and not np.issubdtype(vectors.dtype, np.integer):
            raise InputError(f"{p}: array dtype {vectors.dtype} is not numeric")
        if ids is None:
            raise InputError(f"{p}: a .npy has no ids; give them with --ids FILE (one id per line)")
        id_arr = read_ids(ids) if isinstance(ids, (str, Path)) else np.asarray(list(ids), dtype=object)
        src = str(ids) if isinstance(ids, (str, Path)) else "ids"
        if len(id_arr) != vectors.shape[0]:
            raise InputError(f"{src}: {len(id_arr)} ids but {p} has {vectors.shape[0]} vector rows")
        return id_arr, np.asarray(vectors, dtype=np.float32)
    if suffix in (".parquet", ".pq"):
        try:
            table = pq.read_table(p)
        except Exception as exc:  # pyarrow raises several kinds
            raise InputError(f"{p}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        if id_column not in table.column_names:
            raise InputError(f"{p}: no {id_column!r} column (columns: {', '.join(table.column_names)})")
        if vector_column is None:
            cands = [f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                     or pa.types.is_large_list(f.type)]
            if len(cands) != 1:
                raise InputError(f"{p}: found {len(cands)} list columns ({', '.join(cands) or 'none'}); "
                                 "name the vector column with --vector-column")
            vector_column = cands[0]
        if vector_column not in table.column_names:
            raise InputError(f"{p}: no {vector_column!r} column")
        id_col = table[id_column]
        if id_col.null_count:
            row = int(np.flatnonzero(np.asarray(id_col.is_null()))[0])
            raise InputError(f"{p} row {row}: id is empty")
        id_arr = np.asarray([str(v) for v in id_col.to_pylist()], dtype=object)
        return id_arr, _vectors_from_list_column(table[vector_column], str(p), vector_column)
    raise InputError(f"{p}: unsupported vectors format {suffix!r} (use .npy with --ids, or .parquet)")


def validate_and_normalise(ids: np.ndarray, vectors: np.ndarray, source: str) -> np.ndarray:
    """Check ids and vectors, and return unit-norm float32 rows (input may have any norm).

    Rows already unit-norm (to float32 rounding) or already canonical are returned unchanged.
    """
    ids = np.asarray(ids, dtype=object)
    if len(ids) != len(vectors):
        raise InputError(f"{source}: {len(ids)} ids but {len(vectors)} vector rows")
    if len(ids) == 0:
        raise InputError(f"{source}: no vectors")
    for row, v in enumerate(ids.tolist()):
        if v is None or not str(v).strip():
            raise InputError(f"{source} row {row}: id is empty")
    uniq, first, counts = np.unique(ids.astype(str), return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = str(uniq[counts > 1][0])
        rows = np.flatnonzero(ids.astype(str) == dup)[:2]
        raise InputError(f"{source} rows {rows[0]} and {rows[1]}: duplicate id {dup!r}")
    if vectors.shape[1] == 0:
        raise InputError(f"{source}: vectors have no dimensions")
    out = np.empty(vectors.shape, dtype=np.float32)
    step = 1 << 15
    for s in range(0, len(vectors), step):
        block = np.asarray(vectors[s:s + step], dtype=np.float64)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            r = s + int(np.flatnonzero(bad)[0])
            raise InputError(f"{source} row {r} (id {ids[r]!r}): vector has NaN or infinite values")
        norms = np.linalg.norm(block, axis=1)
        zero = norms == 0
        if zero.any():
            r = s + int(np.flatnonzero(zero)[0])
            raise InputError(f"{source} row {r} (id {ids[r]!r}): vector is all zeros (cannot be normalised)")
        # rows that are unit already (float32 rounding) or canonical already (a re-import) are
        # kept bit for bit, so the stored vectors are exactly canonical_vectors(these rows)
        on_grid = (np.rint(block * 2048.0) == block * 2048.0).all(axis=1)
        keep = (np.abs(norms - 1.0) <= 1e-6) | (on_grid & (np.abs(norms - 1.0) <= np.sqrt(block.shape[1]) / 4096))
        out[s:s + step] = np.where(keep[:, None], block, block / norms[:, None])
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


def import_embeddings(catalog: Catalog, vectors: str | Path | np.ndarray, ids: str | Path | Sequence[str] | None = None,
                      *, meta: str | Path | pa.Table | None = None, model: str = DEFAULT_MODEL,
                      id_column: str = "id", vector_column: str | None = None) -> ImportReport:
    """Validate and store precomputed embeddings (and optional metadata) in one transaction.

    Re-importing ids already present updates their vectors and metadata; nothing is duplicated.
    """
    if isinstance(vectors, np.ndarray):
        if ids is None:
            raise InputError("ids are required with an in-memory array")
        source = "vectors"
        id_arr = np.asarray(list(ids) if not isinstance(ids, (str, Path)) else read_ids(ids), dtype=object)
        raw = vectors
        if raw.ndim != 2:
            raise InputError(f"vectors: expected a 2-D array, got shape {raw.shape}")
    else:
        source = str(vectors)
        id_arr, raw = read_vectors(vectors, ids, id_column=id_column, vector_column=vector_column)
    unit = validate_and_normalise(id_arr, raw, source)
    meta_table = None
    unmatched: list[str] = []
    if meta is not None:
        meta_table = meta if isinstance(meta, pa.Table) else read_meta(meta)
        # before anything is written, and before filtering, so a bad value's row is the file's row
        catalog.check_images(meta_table, source="meta" if isinstance(meta, pa.Table) else str(meta))
        meta_ids = meta_table["id"].to_pylist()
        known = set(id_arr.tolist()) | catalog.existing_ids(meta_ids)
        mask = np.array([m in known for m in meta_ids], dtype=bool)
        unmatched = [m for m, ok in zip(meta_ids, mask) if not ok]
        meta_table = meta_table.filter(pa.array(mask))
    added, updated = catalog.put_embeddings(model, id_arr, unit, images=meta_table)
    return ImportReport(model=model, added=added, updated=updated, dim=unit.shape[1],
                        meta_rows=0 if meta_table is None else meta_table.num_rows, meta_unmatched=unmatched)
