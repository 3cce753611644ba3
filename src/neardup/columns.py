"""Checks that user metadata columns fit the catalog's ``images`` table, before anything is written.

DuckDB column names are case-insensitive and its columns are typed, so a user column can clash
with the catalog's (``Score`` beside ``score``), claim a name neardup derives itself
(``is_suppressed``), or hold values the catalog's column cannot take (``width=wide``). Each
case is one :class:`~neardup.errors.InputError` naming the file, the column and, for a value,
the row — instead of a failed statement inside a transaction.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import duckdb
import pyarrow as pa

from .errors import InputError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_image_columns(con: duckdb.DuckDBPyConnection, existing: Mapping[str, str], table: pa.Table, *,
                        source: str, reserved: Iterable[str], first_row: int = 0, cast: bool = True) -> pa.Table:
    """Raise :class:`InputError` unless every column of ``table`` can be upserted into ``images``.

    ``existing`` maps the catalog's column names to their DuckDB types; ``reserved`` names
    columns the user may not set (compared case-insensitively); a value's row is reported as
    ``first_row + its index`` (callers pass their file's numbering). Returns ``table`` with the
    columns the catalog already has cast to the catalog's types (DuckDB's casts, as an upsert
    would apply them; with ``cast=False``, ``table`` itself). ``id`` is never type-checked (ids
    are text and checked by the caller); a column already of the catalog's type needs no check.
    """
    reserved_lc = {r.lower() for r in reserved}
    by_lower: dict[str, str] = {}
    for name in table.column_names:
        low = name.lower()
        if low in by_lower:
            raise InputError(f"{source}: columns {by_lower[low]!r} and {name!r} are the same column to the catalog "
                             "(names are case-insensitive); keep one")
        by_lower[low] = name
        if low in reserved_lc:
            raise InputError(f"{source}: column {name!r} is set by neardup itself and cannot be imported; rename it")
    catalog_lower = {c.lower(): c for c in existing}
    for name in table.column_names:
        have = catalog_lower.get(name.lower())
        if have is not None and have != name:
            raise InputError(f"{source}: column {name!r} clashes with the catalog's column {have!r} "
                             f"(names are case-insensitive); rename it or call it {have!r}")
        if have is None and not _NAME.fullmatch(name):
            raise InputError(f"{source}: column {name!r}: names must be letters, digits and _ (at most 63)")
    to_check = [n for n in table.column_names if n in existing and n != "id"]
    if not to_check:
        return table
    view = "_neardup_check"
    rows = pa.array(range(table.num_rows), pa.int64())
    con.register(view, table.select(to_check).append_column("__neardup_row", rows))
    try:
        types = dict(zip(to_check, map(str, con.sql(f"SELECT * EXCLUDE (__neardup_row) FROM {view} LIMIT 0").types)))
        to_check = [n for n in to_check if types[n] != existing[n]]
        if not to_check:
            return table
        for name in to_check:
            dtype = existing[name]
            bad = con.execute(
                f"SELECT __neardup_row, CAST({_q(name)} AS VARCHAR) FROM {view} "
                f"WHERE {_q(name)} IS NOT NULL AND TRY_CAST({_q(name)} AS {dtype}) IS NULL ORDER BY __neardup_row LIMIT 1"
            ).fetchall()
            if bad:
                row, value = bad[0]
                raise InputError(f"{source} row {first_row + int(row)}, column {name!r}: {value!r} is not a valid "
                                 f"{dtype.lower()} (the catalog's type for {name!r})")
        if not cast:
            return table
        casts = ", ".join(f"CAST({_q(n)} AS {existing[n]}) AS {_q(n)}" for n in to_check)
        converted = con.sql(f"SELECT {casts} FROM {view} ORDER BY __neardup_row").to_arrow_table()
    finally:
        con.unregister(view)
    for name in to_check:
        table = table.set_column(table.column_names.index(name), name, converted[name])
    return table


def _q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
