"""The catalog's reviewer decisions (overrides): keep, master, not a duplicate; recorded, withdrawn,
and applied at once to the groups of the runs in force.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

from ..errors import CatalogError, InputError
from .connection import _now
from .embeddings import EmbeddingStore
from .runs import RunLedger

if TYPE_CHECKING:  # numpy and Arrow load where a decision is applied
    import numpy as np

OVERRIDE_KINDS = ("keep", "master", "not_duplicate")


class Decisions(RunLedger, EmbeddingStore):
    """Reviewer decisions and their effect on the groups of the applied runs."""

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
            from ..incremental import record_decision_basis  # what the decision was made on (see dedup)

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

    def _reapply_decisions(self, run_id: int) -> None:
        """Apply every recorded decision about a member of ``run_id`` (a run put back in force)."""
        for img in self._decided_members(run_id):
            self._apply_decision(run_id, img)

    def _apply_decision(self, run_id: int, image_id: str, *, withdrawn_master: bool = False) -> None:
        """Bring the group of ``image_id`` in run ``run_id`` in line with the reviewer's decisions now recorded."""
        import numpy as np
        import pyarrow as pa

        from ..policy import parse_policy, policy_columns, priority_rank

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
        left = image_id in ov["not_duplicate"]
        decided: str | None = None
        if forced or master not in members or (withdrawn_master and master == image_id) or left:
            candidates = forced or members
            choice, decided = self._decide_master(run_id, candidates)
            if forced or master not in members or (withdrawn_master and master == image_id):
                master = choice
            elif choice != master:       # the master stays (it did not leave); say what decided it over the rest
                decided = self._decide_master(run_id, members, keep_master=master)[1]
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
        if self.one("SELECT 1 FROM information_schema.columns WHERE table_name = 'run_members' "
                    "AND column_name = 'decided_by'"):
            if forced:
                decided = "reviewer"
            if forced or decided is not None or len(members) < 2:
                # the group's master was re-decided: record by what (NULL for a group of one)
                self.con.execute("UPDATE run_members SET decided_by = ? WHERE run_id = ? AND group_id = ?",
                                 [decided if len(members) >= 2 else None, run_id, gid])
            if left:                                  # the image taken out is a group of its own
                self.con.execute("UPDATE run_members SET decided_by = NULL WHERE run_id = ? AND image_id = ?",
                                 [run_id, image_id])
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

    def _decide_master(self, run_id: int, ids: Sequence[str], keep_master: str | None = None) -> tuple[str, str | None]:
        """The master of a group of ``ids`` under run ``run_id``'s policy, as dedup decides it (``central`` over
        these members), and the policy key that decided it; with ``keep_master``, the key by which that
        member beats the best of the others."""
        import numpy as np
        import pyarrow as pa

        from ..policy import master_of_group, parse_policy, policy_columns

        model, policy_text = self.one("SELECT model, policy FROM runs WHERE id = ?", [run_id])
        policy = parse_policy(policy_text or None)
        have = set(self.image_columns())
        cols = [c for c in policy_columns(policy) if c in have]
        ids = sorted(ids)
        meta = self.sql(f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM images "
                        f"WHERE id IN ({', '.join('?' * len(ids))}) ORDER BY id", ids)
        vectors = None
        try:
            _, _, store = self.embedding_vectors(model)
            rows, row_ids = self.embedding_rows(model, ids)
            where = dict(zip(row_ids.tolist(), rows.tolist()))
            if all(i in where for i in ids):
                from ..similarity.canonical import canonical_vectors

                vectors = canonical_vectors(np.asarray(store[[where[i] for i in ids]], dtype=np.float32))
        except CatalogError:
            pass
        if keep_master is not None:   # the master first: the key at which it beats the runner-up
            from ..policy import decided_by, group_centrality

            if "central" in {k for k, _ in policy} and vectors is not None:
                meta = meta.append_column("central", pa.array(group_centrality(vectors, np.zeros(len(ids), np.int64))))
            k = ids.index(keep_master)
            key = decided_by(np.zeros(len(ids), np.int64), np.full(len(ids), k), meta, policy)[k]
            return keep_master, key
        m, key = master_of_group(meta, policy, vectors)
        return ids[m], key

    def _similarities(self, run_id: int, ids: Sequence[str], master: str) -> np.ndarray:
        """Cosine similarity of each of ``ids`` to ``master`` under the run's model (NaN where a vector is missing)."""
        import numpy as np

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
