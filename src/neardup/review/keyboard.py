"""Keyboard review of a run's groups: one group per page, keys for every decision, progress.

Keys (static/keyboard.js): A accept as is · K keep all · M make the selected member the master ·
N selected member is not a duplicate · 1-9 / arrow up-down select a member · J or → next group ·
P or ← previous group · U undo the last decision on this group (exactly: :mod:`neardup.undo`).
Accept and keep all move on to the next unreviewed group, so a run of G groups that all look
right takes G key presses.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Callable

from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

MAX_ID = 2**31 - 1
#: Members shown on the keyboard page (the group page pages through bigger groups).
SHOWN = 60

MESSAGES = {
    "accept": "Accepted group {g} as is.",
    "keep_all": "Kept every member of group {g}: none is suppressed now or in later runs.",
    "master": "Group {g}: the selected image is its master now (the old master is suppressed), and in later runs.",
    "not_duplicate": "Group {g}: the selected image is not a duplicate: out of the group and visible now, "
                     "and left out of every later run.",
    "undo": "Undid the last decision on group {g}: the catalog is exactly as it was before it.",
    "undo_bulk": "Undid the bulk accept of {n} groups: the catalog is exactly as it was before it.",
    "bulk": "Accepted {n} groups whose lowest similarity to the master is at least {span}, "
            "and recorded {j} judgments (each member the same image as its master). U on one of them undoes them all.",
    "none": "Group {g} had no decision to undo.",
    "refused": "Cannot undo on group {g}: {why}",
}


def _url(run: int, group: int | None, flash: str | None = None, **extra: Any) -> str:
    q = {"run": run} | ({"group": group} if group is not None else {}) | ({"flash": flash} if flash else {}) | extra
    return "/review?" + urllib.parse.urlencode(q)


def register(app: FastAPI, holder: Any, page: Callable[..., HTMLResponse],
             check_post: Callable[[Request, str | None], None]) -> None:
    """Add GET /review and its POST actions to the review app."""
    from .. import group_review as GR
    from . import data as D

    @app.get("/review", response_class=HTMLResponse)
    def review_page(request: Request, run: int | None = Query(None, ge=1, le=MAX_ID),
                    group: int | None = Query(None, ge=1, le=MAX_ID),
                    flash: str | None = Query(None, max_length=40), g: int | None = Query(None, ge=0, le=MAX_ID),
                    n: int | None = Query(None, ge=0, le=MAX_ID), span: float | None = Query(None, ge=-1, le=1),
                    j: int | None = Query(None, ge=0, le=MAX_ID), why: str | None = Query(None, max_length=300)) -> HTMLResponse:
        with holder.open() as cat:
            r = D.pick_run(cat, run)
            if r is None:
                raise HTTPException(404, "no runs yet" if run is None else f"no run {run}")
            ids = GR.group_ids(cat, r["id"])
            done = {k: v for k, v in GR.reviewed(cat, r["id"]).items() if k in ids}
            if group is None:
                group = GR.next_group(cat, r["id"], None) or (ids[0] if ids else None)
            if group is not None and group not in ids:
                raise HTTPException(404, f"no duplicate group {group} in run {r['id']}")
            detail = D.group_detail(cat, r["id"], group, 1, per_page=SHOWN) if group is not None else None
            from ..undo import actions

            undoable = bool(group is not None and actions(cat, run_id=r["id"], group_id=group))
            st = D.status_counts(cat, r["id"])
            spans = cat.sql("""SELECT group_id, min(sim_to_master) AS span FROM run_members WHERE run_id = ?
                               GROUP BY group_id HAVING count(*) >= 2""", [r["id"]]).to_pylist()
        pos = ids.index(group) + 1 if group in ids else 0
        prev_g = ids[(pos - 2) % len(ids)] if ids else None
        next_g = ids[pos % len(ids)] if ids else None
        message = None
        if flash in MESSAGES:
            message = MESSAGES[flash].format(g=g if g is not None else group, n=n, span=span, j=j, why=why or "")
        suggested_span = sorted(s["span"] for s in spans)[len(spans) // 2] if spans else None
        return page(request, "review_keys.html", active="review", run=r, g=detail, group_id=group, pos=pos,
                    total=len(ids), n_reviewed=len(done), decision=done.get(group) if group else None,
                    prev_g=prev_g, next_g=next_g, message=message, flash=None,
                    suggested_span=suggested_span, undoable=undoable, statusline=st)

    @app.post("/review/decide")
    def review_decide(request: Request, run: int = Form(..., ge=1, le=MAX_ID), group: int = Form(..., ge=1, le=MAX_ID),
                      decision: str = Form(..., pattern="^(accept|keep_all|master|not_duplicate)$"),
                      image_id: str | None = Form(None, max_length=4096), csrf: str | None = Form(None)) -> Response:
        check_post(request, csrf)
        with holder.open() as cat:
            GR.decide_group(cat, run, group, decision, image_id or None)
            nxt: int | None = group
            if decision in ("accept", "keep_all") or group not in GR.group_ids(cat, run):
                nxt = GR.next_group(cat, run, group)   # (a not-a-duplicate can leave a group with one image)
        return RedirectResponse(_url(run, nxt, decision, g=group), status_code=303)

    @app.post("/review/undo")
    def review_undo(request: Request, run: int = Form(..., ge=1, le=MAX_ID), group: int = Form(..., ge=1, le=MAX_ID),
                    csrf: str | None = Form(None)) -> Response:
        check_post(request, csrf)
        from ..undo import UndoRefused

        with holder.open() as cat:
            try:
                done = GR.undo_group(cat, run, group)
            except UndoRefused as exc:
                return RedirectResponse(_url(run, group, "refused", g=group, why=str(exc)[:300]), status_code=303)
        if done and done["kind"] == "bulk_accept":
            return RedirectResponse(_url(run, group, "undo_bulk", g=group, n=len(done["groups"])), status_code=303)
        return RedirectResponse(_url(run, group, "undo" if done else "none", g=group), status_code=303)

    @app.post("/review/bulk")
    def review_bulk(request: Request, run: int = Form(..., ge=1, le=MAX_ID), span: float = Form(..., ge=-1, le=1),
                    csrf: str | None = Form(None)) -> Response:
        check_post(request, csrf)
        with holder.open() as cat:
            n, n_judged = GR.bulk_accept(cat, run, span)
            nxt = GR.next_group(cat, run, None)
        return RedirectResponse(_url(run, nxt, "bulk", n=n, span=span, j=n_judged), status_code=303)

    for path in ("/review/decide", "/review/undo", "/review/bulk"):
        app.add_api_route(path, _post_only, methods=["GET"], include_in_schema=False)


def _post_only() -> Response:
    raise HTTPException(405, "this action changes the catalog: it only accepts POST", headers={"Allow": "POST"})
