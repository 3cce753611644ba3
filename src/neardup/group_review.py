"""Reviewing a run group by group: accept as is, keep all, make a member the master, not a duplicate.

Each decision is one transaction that writes a ``group_reviews`` row (so progress is "groups
reviewed of total"), the judgments it implies (accept: every member is the same image as its
master; keep all: none is; not a duplicate: that member is not) and the reviewer decisions it
implies, through :meth:`Catalog.add_override` (in force at once in the runs in force, with the
decision basis that lets a changed image invalidate them). Each is recorded as an action of
:mod:`neardup.undo`: :func:`undo_group` undoes the last one on a group and leaves the catalog
exactly as it was before it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np

from .catalog import Catalog
from .errors import InputError

DECISIONS = ("accept", "keep_all", "master", "not_duplicate")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def group_ids(cat: Catalog, run_id: int) -> list[int]:
    """The run's duplicate groups (2+ members) in review order: largest first (the run's own numbering)."""
    rows = cat.con.execute("""SELECT group_id FROM run_members WHERE run_id = ? GROUP BY group_id
                              HAVING count(*) >= 2 ORDER BY group_id""", [run_id]).fetchall()
    return [int(r[0]) for r in rows]


def reviewed(cat: Catalog, run_id: int) -> dict[int, str]:
    """``{group id: decision}`` of the groups of a run reviewed so far."""
    rows = cat.con.execute("SELECT group_id, decision FROM group_reviews WHERE run_id = ?", [run_id]).fetchall()
    return {int(g): str(d) for g, d in rows}


def progress(cat: Catalog, run_id: int) -> tuple[int, int]:
    """``(groups reviewed, duplicate groups)`` of a run (a group a decision left with one image no longer counts)."""
    ids = group_ids(cat, run_id)
    return len(set(reviewed(cat, run_id)) & set(ids)), len(ids)


def next_group(cat: Catalog, run_id: int, after: int | None = None, *, unreviewed: bool = True,
               step: int = 1) -> int | None:
    """The next (``step`` 1) or previous (-1) group after ``after``, skipping reviewed ones when asked; wraps around."""
    ids = group_ids(cat, run_id)
    if not ids:
        return None
    done = reviewed(cat, run_id) if unreviewed else {}
    start = ids.index(after) if after in ids else (-1 if step > 0 else len(ids))
    for k in range(1, len(ids) + 1):
        g = ids[(start + step * k) % len(ids)]
        if g not in done:
            return g
    return None


def _members(cat: Catalog, run_id: int, group_id: int) -> list[dict[str, Any]]:
    rows = cat.sql("""SELECT image_id, master_id, is_master, is_suppressed, sim_to_master FROM run_members
                      WHERE run_id = ? AND group_id = ? ORDER BY is_master DESC, sim_to_master, image_id""",
                   [run_id, group_id]).to_pylist()
    if len(rows) < 2:
        raise InputError(f"run {run_id} has no duplicate group {group_id}")
    return rows


def _judged_pairs(cat: Catalog, run_id: int, group_id: int, decision: str, image_id: str | None,
                  members: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], list[tuple[str, str, bool]], str]:
    """``(overrides, judgments (image, master, same), master)`` a decision on a group implies."""
    master = next(m["image_id"] for m in members if m["is_master"])
    others = [m for m in members if not m["is_master"]]
    existing = {(r[0], r[1]) for r in cat.con.execute(
        "SELECT image_id, kind FROM overrides WHERE image_id IN (SELECT image_id FROM run_members "
        "WHERE run_id = ? AND group_id = ?)", [run_id, group_id]).fetchall()}
    overrides: list[tuple[str, str]] = []
    judged: list[tuple[str, str, bool]] = []
    if decision == "accept":   # members the reviewer called "not a duplicate" are not judged the same
        judged = [(m["image_id"], master, True) for m in others if (m["image_id"], "not_duplicate") not in existing]
    elif decision == "keep_all":
        overrides = [(m["image_id"], "keep") for m in others if (m["image_id"], "keep") not in existing]
        judged = [(m["image_id"], master, False) for m in others]
    elif decision == "master":
        overrides = [(str(image_id), "master")] if (image_id, "master") not in existing else []
    else:
        overrides = [(str(image_id), "not_duplicate")] if (image_id, "not_duplicate") not in existing else []
        if image_id != master:
            judged = [(str(image_id), master, False)]
    return overrides, judged, master


def _write(cat: Catalog, run_id: int, group_id: int, decision: str, detail: dict[str, Any],
           overrides: list[tuple[str, str]], judged: list[tuple[str, str, bool]], model: str, now: dt.datetime) -> None:
    """The rows of one group decision: its group_reviews row, the judgments, then the decisions (in force at once)."""
    from .calibration import pair_similarities

    pairs = [(min(a, b), max(a, b)) for a, b, _ in judged]
    sims = pair_similarities(cat, model, pairs) if pairs else np.zeros(0)
    source = f"review:group:{run_id}:{group_id}"
    con = cat.con
    con.execute("DELETE FROM group_reviews WHERE run_id = ? AND group_id = ?", [run_id, group_id])
    con.execute("INSERT INTO group_reviews VALUES (?, ?, ?, ?, ?)",
                [run_id, group_id, decision, json.dumps(detail), now])
    for (a, b), (_, _, same), s in zip(pairs, judged, sims.tolist()):
        con.execute("INSERT INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)", [a, b, same, source, model, s, now])
    for img, kind in overrides:   # as on the group page: the groups of the runs in force follow at once,
        cat.add_override(img, kind, note=source)   # and the decision basis is recorded (incremental)


def decide_group(cat: Catalog, run_id: int, group_id: int, decision: str, image_id: str | None = None) -> dict[str, Any]:
    """Record one decision on a group (see module doc) as one undoable action; returns what was written."""
    from .undo import record

    if decision not in DECISIONS:
        raise InputError(f"decision {decision!r}: use one of {', '.join(DECISIONS)}")
    run = cat.run(run_id)
    members = _members(cat, run_id, group_id)
    master = next(m["image_id"] for m in members if m["is_master"])
    if decision in ("master", "not_duplicate"):
        if image_id is None or image_id not in {m["image_id"] for m in members}:
            raise InputError(f"image {image_id!r} is not in group {group_id} of run {run_id}")
        if decision == "master" and image_id == master:
            raise InputError(f"{image_id!r} is already the master of group {group_id}")
    overrides, judged, _ = _judged_pairs(cat, run_id, group_id, decision, image_id, members)

    def apply() -> None:
        _write(cat, run_id, group_id, decision, dict(overrides=overrides, image_id=image_id), overrides, judged,
               run["model"], _now())
        cat.describe(f"recorded the review decision {decision!r} on group {group_id} of run {run_id}")

    action, _ = record(cat, decision, apply, run_id=run_id, groups=[group_id], image_id=image_id)
    return dict(decision=decision, group_id=group_id, overrides=overrides, judgments=len(judged), action=action)


def undo_group(cat: Catalog, run_id: int, group_id: int) -> dict[str, Any] | None:
    """Undo the last decision in force on the group (a bulk accept that took it in: the whole bulk accept).

    The catalog is then exactly as before that decision (:mod:`neardup.undo`); None if the group
    has none. Raises :class:`neardup.undo.UndoRefused` when it cannot be undone exactly now.
    """
    from .undo import undo_last

    return undo_last(cat, run_id=run_id, group_id=group_id)


def bulk_accept(cat: Catalog, run_id: int, min_span: float) -> tuple[int, int]:
    """Accept as is every unreviewed group whose lowest similarity to its master is >= ``min_span``.

    Each group is recorded as a single accept would be (its review row and the judgments "same"
    of each member with its master), all as one undoable action. Returns ``(groups, judgments)``.
    """
    from .undo import record

    if not (-1.0 <= min_span <= 1.0):
        raise InputError(f"span {min_span}: give a similarity in [-1, 1]")
    run = cat.run(run_id)
    rows = cat.con.execute(
        """SELECT group_id FROM run_members WHERE run_id = ? GROUP BY group_id
           HAVING count(*) >= 2 AND min(sim_to_master) >= ?
              AND group_id NOT IN (SELECT group_id FROM group_reviews WHERE run_id = ?) ORDER BY group_id""",
        [run_id, float(min_span), run_id]).fetchall()
    groups = [int(g) for (g,) in rows]
    if not groups:
        return 0, 0
    plans = []
    for g in groups:
        overrides, judged, _ = _judged_pairs(cat, run_id, g, "accept", None, _members(cat, run_id, g))
        plans.append((g, judged))
    now = _now()

    def apply() -> None:
        for g, judged in plans:
            _write(cat, run_id, g, "accept", dict(overrides=[], bulk=min_span), [], judged, run["model"], now)
        cat.describe("accepted {n} group(s) as they are", len(groups))

    n_judged = sum(len(j) for _, j in plans)
    record(cat, "bulk_accept", apply, run_id=run_id, groups=groups,
           detail=dict(span=min_span, groups=len(groups), judgments=n_judged))
    return len(groups), n_judged
