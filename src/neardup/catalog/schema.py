"""The catalog's schema: its tables and view, the version it is written at, and bringing a catalog
written by an older neardup up to date when it is opened.
"""

from __future__ import annotations

from ..defaults import DEFAULT_DB  # noqa: F401  (defined there, so the CLI reads it without DuckDB)
from ..errors import CatalogError
from .connection import Connection, _now

#: Version 2: version 1 (the first catalogs) plus the tables and columns added since (see
#: :meth:`Schema._migrate_1_to_2`). A catalog of a newer version is refused.
SCHEMA_VERSION = 2

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

#: derived by neardup (runs, clustering, scan time): never taken from user metadata
RESERVED_IMAGE_COLUMNS = ("is_suppressed", "added_at", "cluster_id")

#: Tables added after schema version 1: in _SCHEMA for new catalogs, created at open in older ones
#: (IF NOT EXISTS: a table added later is created in an existing catalog at its next read-write open).
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
CREATE TABLE IF NOT EXISTS review_actions(
    id BIGINT, kind VARCHAR, run_id INTEGER, groups VARCHAR, image_id VARCHAR, detail VARCHAR,
    created_at TIMESTAMP, undone_at TIMESTAMP, changes VARCHAR, runs_state VARCHAR);
CREATE TABLE IF NOT EXISTS judgment_skips(a VARCHAR, b VARCHAR, model VARCHAR, created_at TIMESTAMP);
"""
_LATER_TABLES = ("judgments", "calibrations", "group_reviews", "decision_basis", "overrides_invalidated",
                 "review_actions", "judgment_skips")

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


class Schema(Connection):
    """Creates a new catalog's tables, or checks an existing one's version and adds what it lacks."""

    def _init_schema(self) -> bool:
        """Create the tables of a new catalog, or check an existing one's version and bring it up to
        date (read-write opens). True if the catalog existed."""
        tables = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "meta" in tables:
            found = self._found_version()
            if found > SCHEMA_VERSION:
                raise CatalogError(f"{self.path}: catalog schema version {found} is newer than this neardup reads "
                                   f"(version {SCHEMA_VERSION}); use a newer neardup")
            if not self.read_only and (found < SCHEMA_VERSION or self._lacks_later_additions(tables)):
                with self.transaction():  # one transaction: migrated and up to date, or untouched
                    for version in range(found, SCHEMA_VERSION):
                        _MIGRATIONS[version](self)
                    self._add_later_additions()
            elif self.read_only:
                self._stand_in_for_later_tables(tables)
            return True
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
        return False

    def _found_version(self) -> int:
        """The catalog's recorded schema version; one line naming the file when it has none usable."""
        row = self.one("SELECT value FROM meta WHERE key = 'schema_version'")
        try:
            found = int(row[0]) if row else None
        except (TypeError, ValueError):
            found = None
        if found is None or found < 1:
            raise CatalogError(f"{self.path}: catalog has no valid schema version in its meta table "
                               f"(found {row[0] if row else 'none'!r}; this neardup reads version {SCHEMA_VERSION})")
        return found

    def _migrate_1_to_2(self) -> None:
        """Version 1 (the first catalogs) -> 2: the commit-marker table, the tables and columns added
        since (judgments, calibrations, group reviews, decision basis, invalidated overrides; runs'
        scope key and replaced_by; members' group size, score and decided_by; images' quality
        measures) and the visible view with group size and score. Then version 2 is recorded."""
        self._add_later_additions()
        self.con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    def _lacks_later_additions(self, tables: set[str]) -> bool:
        """True when a table, column or the view of :meth:`_add_later_additions` is missing."""
        if "txn_log" not in tables or not set(_LATER_TABLES) <= tables:
            return True
        have = {(r[0], r[1]) for r in self.con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_name IN ('images', 'runs', 'run_members')").fetchall()}
        want = {(stmt.split()[2], stmt.split()[-2]) for stmt in (*_QUALITY_COLUMNS, *_RUN_COLUMNS, *_ADDED_COLUMNS)}
        view = self.one("SELECT sql FROM duckdb_views() WHERE view_name = 'visible'")
        return not want <= have or not view or "group_score" not in str(view[0])

    def _stand_in_for_later_tables(self, tables: set[str]) -> None:
        """A read-only open of an older catalog (not migrated: nothing may be written): each table added
        since that it lacks is stood in for by an empty temporary one, so readers see no decisions,
        judgments or calibrations there rather than a missing table. The file is not touched."""
        later = [stmt for stmt in _LATER_SCHEMA.split(";") if stmt.strip()]
        later.append("CREATE TABLE IF NOT EXISTS txn_log(token VARCHAR, committed_at TIMESTAMP)")
        for stmt in later:
            name = stmt.split()[5].split("(")[0]   # CREATE TABLE IF NOT EXISTS <name>(
            if name not in tables:
                self.con.execute(stmt.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))

    def _add_later_additions(self) -> None:
        """Add what the current schema has beyond an older catalog's (each statement is idempotent)."""
        self.con.execute("CREATE TABLE IF NOT EXISTS txn_log(token VARCHAR, committed_at TIMESTAMP)")
        self.con.execute(_LATER_SCHEMA)
        for stmt in (*_RUN_COLUMNS, *_ADDED_COLUMNS, *_QUALITY_COLUMNS):
            self.con.execute(stmt)
        self.con.execute(_VISIBLE_VIEW)


#: ``version -> step`` bringing a catalog of that version to the next (applied in order at open).
_MIGRATIONS = {1: Schema._migrate_1_to_2}
