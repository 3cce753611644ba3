"""Reviewing a run group by group: accept as is, keep all, make a member the master, not a duplicate.

Each decision is one transaction that writes a ``group_reviews`` row (so progress is "groups
reviewed of total"), the reviewer overrides it implies, and the judgments it implies (accept:
every member is the same image as its master; keep all: none is; not a duplicate: that member
is not). :func:`undo_group` removes exactly what the decision wrote, so the catalog is as before.
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
    """``(groups reviewed, duplicate groups)`` of a run."""
    return len(reviewed(cat, run_id)), len(group_ids(cat, run_id))


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


def decide_group(cat: Catalog, run_id: int, group_id: int, decision: str, image_id: str | None = None) -> dict[str, Any]:
    """Record one decision on a group (see module doc); returns what was written."""
    from .calibration import pair_similarities

    if decision not in DECISIONS:
        raise InputError(f"decision {decision!r}: use one of {', '.join(DECISIONS)}")
    run = cat.run(run_id)
    model = run["model"]
    members = _members(cat, run_id, group_id)
    master = next(m["image_id"] for m in members if m["is_master"])
    others = [m for m in members if not m["is_master"]]
    if decision in ("master", "not_duplicate"):
        if image_id is None or image_id not in {m["image_id"] for m in members}:
            raise InputError(f"image {image_id!r} is not in group {group_id} of run {run_id}")
        if decision == "master" and image_id == master:
            raise InputError(f"{image_id!r} is already the master of group {group_id}")
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
        overrides = [(image_id, "master")] if (image_id, "master") not in existing else []
    else:
        overrides = [(image_id, "not_duplicate")] if (image_id, "not_duplicate") not in existing else []
        if image_id != master:
            judged = [(image_id, master, False)]
    pairs = [(min(a, b), max(a, b)) for a, b, _ in judged]
    sims = pair_similarities(cat, model, pairs) if pairs else np.zeros(0)
    now = _now()
    source = f"review:group:{run_id}:{group_id}"
    with cat.transaction() as con:
        con.execute("DELETE FROM group_reviews WHERE run_id = ? AND group_id = ?", [run_id, group_id])
        con.execute("INSERT INTO group_reviews VALUES (?, ?, ?, ?, ?)",
                    [run_id, group_id, decision, json.dumps(dict(overrides=overrides, image_id=image_id)), now])
        for img, kind in overrides:
            con.execute("INSERT INTO overrides VALUES (?, ?, ?, ?)", [img, kind, now, source])
        for (a, b), (_, _, same), s in zip(pairs, judged, sims.tolist()):
            con.execute("INSERT INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)", [a, b, same, source, model, s, now])
        if overrides:
            cat._recompute_suppression()
        cat.describe(f"recorded the review decision {decision!r} on group {group_id} of run {run_id}")
    return dict(decision=decision, group_id=group_id, overrides=overrides, judgments=len(judged))


def undo_group(cat: Catalog, run_id: int, group_id: int) -> bool:
    """Remove the group's decisions and exactly the overrides and judgments they wrote; False if it had none."""
    row = cat.one("SELECT decision, detail FROM group_reviews WHERE run_id = ? AND group_id = ?", [run_id, group_id])
    if row is None:
        return False
    source = f"review:group:{run_id}:{group_id}"
    with cat.transaction() as con:   # every decision made on this group here, not only the last one
        con.execute("DELETE FROM overrides WHERE note = ?", [source])
        con.execute("DELETE FROM judgments WHERE source = ?", [source])
        con.execute("DELETE FROM group_reviews WHERE run_id = ? AND group_id = ?", [run_id, group_id])
        cat._recompute_suppression()
        cat.describe(f"undid the review decisions on group {group_id} of run {run_id}")
    return True


def bulk_accept(cat: Catalog, run_id: int, min_span: float) -> int:
    """Accept as is every unreviewed group whose lowest similarity to its master is >= ``min_span``; returns how many.

    No judgments are recorded for these (they were not looked at one by one).
    """
    if not (-1.0 <= min_span <= 1.0):
        raise InputError(f"span {min_span}: give a similarity in [-1, 1]")
    rows = cat.con.execute(
        """SELECT group_id FROM run_members WHERE run_id = ? GROUP BY group_id
           HAVING count(*) >= 2 AND min(sim_to_master) >= ?
              AND group_id NOT IN (SELECT group_id FROM group_reviews WHERE run_id = ?)""",
        [run_id, float(min_span), run_id]).fetchall()
    now = _now()
    with cat.transaction() as con:
        for (g,) in rows:
            con.execute("INSERT INTO group_reviews VALUES (?, ?, ?, ?, ?)",
                        [run_id, int(g), "accept", json.dumps(dict(overrides=[], bulk=min_span)), now])
        cat.describe("accepted {n} group(s) as they are", len(rows))
    return len(rows)
