"""The catalog's run ledger: dedup runs and their members, which runs are in force (replace,
restore), and the suppression they add up to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import CatalogError
from .connection import Connection, _now

if TYPE_CHECKING:  # Arrow loads where run members are written or read (DuckDB imports it)
    import pyarrow as pa


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


class RunLedger(Connection):
    """Records, replaces and restores runs; ``images.is_suppressed`` follows the runs in force."""

    if TYPE_CHECKING:
        def _reapply_decisions(self, run_id: int) -> None: ...  # Decisions

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
                    self._reapply_decisions(rid)
            self._recompute_suppression()
            visible = int(self.one("SELECT count(*) FROM visible")[0])
        return RestoreResult([int(i) for i in ids], [int(i) for i in back], visible)

    def restore(self, run_id: int | None = None) -> list[int]:
        """Undo one applied run (or every applied run when ``run_id`` is None). Returns the runs undone."""
        return self.restore_runs(run_id).undone

    def runs(self) -> list[dict[str, Any]]:
        out = self.rows("SELECT * EXCLUDE (summary), summary FROM runs ORDER BY id")
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
