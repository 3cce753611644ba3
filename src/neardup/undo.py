"""Review actions with their history: each is recorded with the rows it changed, so it can be undone exactly.

An action (a group decision, a bulk accept, a decision on one image) runs inside
:func:`record`: the rows it may touch are copied first (every reviewer decision, judgment,
group review and decision basis, and the members of the runs in force), the action runs, and
the difference -- rows removed and rows added, per table -- is stored in ``review_actions``
beside what the action was. :func:`undo` puts those rows back exactly, then derives what is
derived from them (each image's ``is_suppressed`` and the runs' counts) the way every writer does,
so the catalog is as it was just before the action, whatever the action did.

Undo goes back one action at a time. It refuses (one line, nothing changed) when a later action
still in force touched the same rows (undo that one first), or when a dedup or a restore changed
the runs in force since (their groups were computed with the decision; withdraw it instead).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Callable, Iterable, Sequence

from .catalog import Catalog
from .errors import InputError

#: Tables an action may change: (name, rows considered, key columns or None for whole-row identity).
_TRACKED: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("run_members", "run_id IN (SELECT id FROM runs WHERE status = 'applied')", ("run_id", "image_id")),
    ("overrides", "true", None),
    ("judgments", "true", None),
    ("group_reviews", "true", ("run_id", "group_id")),
    ("decision_basis", "true", ("image_id", "model")),
)
#: What identifies a row of a whole-row table for conflicts between actions.
_CONFLICT_KEY = {"overrides": ("image_id", "kind"), "judgments": ("a", "b", "model")}


class UndoRefused(InputError):
    """The action cannot be undone exactly now; the message says why and what to do instead."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _enc(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, dt.date):
        return {"$d": v.isoformat()}
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, dict) and "$dt" in v:
        return dt.datetime.fromisoformat(v["$dt"])
    if isinstance(v, dict) and "$d" in v:
        return dt.date.fromisoformat(v["$d"])
    return v


def _columns(cat: Catalog, table: str) -> list[str]:
    return [r[0] for r in cat.con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [table]).fetchall()]


def _runs_state(cat: Catalog) -> list[list[Any]]:
    return [[int(r[0]), str(r[1])] for r in cat.con.execute("SELECT id, status FROM runs ORDER BY id").fetchall()]


def _key(row: dict[str, Any], cols: Sequence[str]) -> tuple[Any, ...]:
    return tuple(row[c] for c in cols)


def record(cat: Catalog, kind: str, apply: Callable[[], Any], *, run_id: int | None = None,
           groups: Iterable[int] = (), image_id: str | None = None, detail: dict[str, Any] | None = None) -> tuple[int, Any]:
    """Run ``apply()`` as one transaction and record what it changed: ``(action id, apply's result)``."""
    with cat.transaction() as con:
        cols = {t: _columns(cat, t) for t, _, _ in _TRACKED}
        for t, where, _ in _TRACKED:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _undo_{t} AS SELECT * FROM {t} WHERE {where}")
        try:
            result = apply()
            changes: dict[str, dict[str, list[list[Any]]]] = {}
            for t, where, _ in _TRACKED:
                sel = ", ".join(f'"{c}"' for c in cols[t])
                removed = con.execute(f"SELECT {sel} FROM _undo_{t} EXCEPT ALL SELECT {sel} FROM {t} WHERE {where}").fetchall()
                added = con.execute(f"SELECT {sel} FROM {t} WHERE {where} EXCEPT ALL SELECT {sel} FROM _undo_{t}").fetchall()
                if removed or added:
                    changes[t] = dict(columns=cols[t], removed=[[_enc(v) for v in r] for r in removed],
                                      added=[[_enc(v) for v in r] for r in added])
        finally:
            for t, _, _ in _TRACKED:
                con.execute(f"DROP TABLE IF EXISTS _undo_{t}")
        action_id = int(con.execute("SELECT coalesce(max(id), 0) + 1 FROM review_actions").fetchone()[0])
        con.execute("INSERT INTO review_actions VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                    [action_id, kind, run_id, json.dumps(sorted(int(g) for g in groups)), image_id,
                     json.dumps(detail or {}), _now(), json.dumps(changes), json.dumps(_runs_state(cat))])
    return action_id, result


def actions(cat: Catalog, *, run_id: int | None = None, group_id: int | None = None, image_id: str | None = None,
            in_force: bool = True) -> list[dict[str, Any]]:
    """Recorded actions, newest first (only those not undone with ``in_force``), filtered by run, group or image."""
    q = "SELECT id, kind, run_id, groups, image_id, detail, created_at, undone_at FROM review_actions"
    where, params = [], []
    if in_force:
        where.append("undone_at IS NULL")
    if run_id is not None:
        where.append("run_id = ?")
        params.append(run_id)
    if image_id is not None:
        where.append("image_id = ?")
        params.append(image_id)
    rows = cat.sql(q + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC", params).to_pylist()
    for r in rows:
        r["groups"] = json.loads(r["groups"] or "[]")
        r["detail"] = json.loads(r["detail"] or "{}")
    if group_id is not None:
        rows = [r for r in rows if group_id in r["groups"]]
    return rows


def _touched(changes: dict[str, Any]) -> set[tuple[Any, ...]]:
    out: set[tuple[Any, ...]] = set()
    keys = {t: k for t, _, k in _TRACKED}
    for t, ch in changes.items():
        cols = ch["columns"]
        kc = keys.get(t) or _CONFLICT_KEY.get(t) or tuple(cols)
        for r in ch["removed"] + ch["added"]:
            row = dict(zip(cols, r))
            out.add((t, *(json.dumps(row.get(c)) for c in kc)))
    return out


def undo(cat: Catalog, action_id: int) -> dict[str, Any]:
    """Put back exactly the rows action ``action_id`` changed (see module doc); returns the action."""
    row = cat.one("SELECT kind, changes, runs_state, undone_at FROM review_actions WHERE id = ?", [action_id])
    if row is None:
        raise UndoRefused(f"no review action {action_id}")
    kind, changes_text, runs_text, undone_at = row
    if undone_at is not None:
        raise UndoRefused(f"review action {action_id} ({kind}) was undone already")
    changes = json.loads(changes_text)
    if json.loads(runs_text) != _runs_state(cat):
        raise UndoRefused(f"the runs in force changed since this {kind.replace('_', ' ')} (a dedup or a restore): "
                          "it cannot be undone exactly; withdraw the decision on the group page instead")
    mine = _touched(changes)
    for later in cat.sql("SELECT id, kind, groups, changes FROM review_actions WHERE id > ? AND undone_at IS NULL "
                         "ORDER BY id", [action_id]).to_pylist():
        if mine & _touched(json.loads(later["changes"])):
            gs = json.loads(later["groups"] or "[]")
            where = f" on group {gs[0]}" if len(gs) == 1 else ""
            raise UndoRefused(f"a later decision ({later['kind'].replace('_', ' ')}{where}) changed the same images: "
                              "undo it first")
    keys = {t: k for t, _, k in _TRACKED}
    with cat.transaction() as con:
        for t, ch in changes.items():
            cols = ch["columns"]
            removed = [[_dec(v) for v in r] for r in ch["removed"]]
            added = [[_dec(v) for v in r] for r in ch["added"]]
            kc = keys.get(t)
            if kc is not None:   # keyed rows: drop the current row of every key touched, put the old one back
                kidx = [cols.index(c) for c in kc]
                cond = " AND ".join(f'"{c}" IS NOT DISTINCT FROM ?' for c in kc)
                for k in {tuple(r[i] for i in kidx) for r in removed + added}:
                    con.execute(f"DELETE FROM {t} WHERE {cond}", list(k))
            else:                # whole rows: remove exactly the added copies
                cond = " AND ".join(f'"{c}" IS NOT DISTINCT FROM ?' for c in cols)
                seen: dict[tuple[Any, ...], int] = {}
                for r in added:
                    seen[tuple(r)] = seen.get(tuple(r), 0) + 1
                for r, m in seen.items():
                    have = int(con.execute(f"SELECT count(*) FROM {t} WHERE {cond}", list(r)).fetchone()[0])
                    con.execute(f"DELETE FROM {t} WHERE {cond}", list(r))
                    for _ in range(max(have - m, 0)):
                        removed.append(list(r))
            marks = ", ".join("?" * len(cols))
            for r in removed:
                con.execute(f"INSERT INTO {t} ({', '.join(chr(34) + c + chr(34) for c in cols)}) VALUES ({marks})", r)
        runs = {int(dict(zip(ch["columns"], r))["run_id"]) for ch in [changes.get("run_members")] if ch
                for r in ch["removed"] + ch["added"]}
        for rid in sorted(runs):
            _recount(con, rid)
        cat._recompute_suppression()
        con.execute("UPDATE review_actions SET undone_at = ? WHERE id = ?", [_now(), action_id])
        cat.describe(f"undid review action {action_id} ({kind})")
    return dict(id=action_id, kind=kind)


def _recount(con: Any, run_id: int) -> None:
    """A run's group and suppression counts from its members (as every decision keeps them)."""
    con.execute(
        """UPDATE runs SET n_groups = c.g, n_suppressed = c.s, n_retained = c.n - c.s, largest_group = c.big FROM (
             SELECT count(*) FILTER (WHERE size >= 2) AS g, sum(sup) AS s, sum(size) AS n, max(size) AS big FROM (
               SELECT group_id, count(*) AS size, count(*) FILTER (WHERE is_suppressed) AS sup
               FROM run_members WHERE run_id = ? GROUP BY group_id)) c WHERE runs.id = ?""", [run_id, run_id])


def undo_last(cat: Catalog, *, run_id: int | None = None, group_id: int | None = None,
              image_id: str | None = None) -> dict[str, Any] | None:
    """Undo the newest action in force on this run / group / image (None when there is none)."""
    found = actions(cat, run_id=run_id, group_id=group_id, image_id=image_id)
    if not found:
        return None
    undo(cat, int(found[0]["id"]))
    return found[0]


__all__ = ["UndoRefused", "actions", "record", "undo", "undo_last"]
