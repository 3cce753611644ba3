"""The catalog's images table: one row per image (core columns plus the user's metadata columns),
added or updated only after the whole table is checked.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Sequence

from ..errors import InputError
from .connection import Connection, _now
from .schema import RESERVED_IMAGE_COLUMNS

if TYPE_CHECKING:  # Arrow loads where a table is read or written
    import pyarrow as pa


class ImageTable(Connection):
    """Reads and writes of the ``images`` table."""

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
        from ..columns import check_image_columns

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
        import pyarrow as pa

        t = pa.table({"id": pa.array(list(ids), pa.string())})
        with self._lock:
            self.con.register("_ids", t)
            try:
                return {r[0] for r in self.con.execute("SELECT id FROM _ids SEMI JOIN images USING (id)").fetchall()}
            finally:
                self.con.unregister("_ids")
