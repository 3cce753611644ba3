"""The judging page: one pair at a time, side by side; keys answer same / different / skip.

Every answer is a row of the catalog's ``judgments`` table (source ``review:judge``); a skip is a
row of ``judgment_skips`` (never offered again, also after a restart, and never fitted). The page
refits after each one (:func:`neardup.calibration.calibrate`, not saved) and shows the threshold,
its 95% interval and the progress; the next pair is the one the fit wants most
(:func:`neardup.calibration.offer_pairs`). Neither reads the whole collection per answer: the
pair histogram and a pool of candidate pairs are computed once per model version
(:mod:`neardup.judge_pool`). "Apply" saves the calibration and runs dedup at it.
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

#: Judgments the benchmark needed for a threshold within 0.02 of the best (docs/benchmarks-calibration.md).
SUGGESTED = 60
#: Bootstrap resamples per page (the CLI uses 1000; 300 keeps a page under a second on a small catalog).
PAGE_BOOT = 300


def judge_model(cat: Any, model: str | None = None) -> str:
    """The model the judging page works on: the one asked for, else the latest run's, else the catalog's default."""
    from . import data as D

    known = {m["model"] for m in cat.embedding_models()}
    if model:
        if model not in known:
            raise HTTPException(400, f"no embeddings for model {model!r}")
        return model
    r = D.pick_run(cat, None)
    if r and r["model"] in known:
        return str(r["model"])
    return cat.default_model()


def judge_context(cat: Any, model: str, seed: int | None = None) -> dict[str, Any]:
    """Fit, progress and the next pair for the judging page."""
    from ..calibration import CalibrationNeedsMore, calibrate, judgments, offer_pairs, skipped_pairs
    from . import data as D

    skipped = skipped_pairs(cat, model)
    seed = len(skipped) if seed is None else seed
    jt = judgments(cat, model)
    n = jt.num_rows
    n_same = int(sum(jt["same"].to_pylist())) if n else 0
    try:
        fit: Any = calibrate(cat, model, n_boot=PAGE_BOOT, seed=0, save=False, run_counts=False)
        need = None
    except CalibrationNeedsMore as exc:
        fit, need = None, exc
    pairs, how = offer_pairs(cat, 1, model, seed=seed, fitted=fit or need)
    pair = pairs[0] if pairs else None
    imgs = D.image_rows(cat, [pair["a"], pair["b"]]) if pair else {}
    n_images = int(cat.scalar("SELECT count(*) FROM embedding_rows WHERE model = ?", [model]) or 0)
    return dict(model=model, fit=fit, need=str(need) if need else None, pair=pair, how=how, imgs=imgs,
                n=n, n_same=n_same, n_diff=n - n_same, suggested=SUGGESTED, n_images=n_images,
                skipped=len(skipped))


def register(app: FastAPI, holder: Any, page: Callable[..., HTMLResponse],
             check_post: Callable[[Request, str | None], None]) -> None:
    """Add GET /judge, POST /judge and POST /judge/apply to the review app."""
    @app.get("/judge", response_class=HTMLResponse)
    def judge_page(request: Request) -> HTMLResponse:
        from . import data as D

        with holder.open() as cat:
            model = judge_model(cat, request.query_params.get("model"))
            ctx = judge_context(cat, model)
            st = D.status_counts(cat)
        return page(request, "judge.html", active="judge", statusline=st, **ctx)

    @app.post("/judge")
    def judge_answer(request: Request, a: str = Form(..., min_length=1, max_length=4096),
                     b: str = Form(..., min_length=1, max_length=4096),
                     answer: str = Form(..., pattern="^(same|different|skip)$"),
                     model: str = Form(..., min_length=1, max_length=64),
                     csrf: str | None = Form(None)) -> Response:
        check_post(request, csrf)
        from ..calibration import add_judgments, skip_pair

        with holder.open() as cat:
            model = judge_model(cat, model)
            if a == b:
                raise HTTPException(400, "a pair needs two different images")
            if answer == "skip":
                skip_pair(cat, a, b, model)
                flash = "judge_skip"
            else:
                add_judgments(cat, [(a, b, answer == "same")], model, source="review:judge")
                flash = "judge_" + answer
        return RedirectResponse(f"/judge?flash={flash}", status_code=303)

    @app.post("/judge/apply")
    def judge_apply(request: Request, model: str = Form(..., min_length=1, max_length=64),
                    csrf: str | None = Form(None)) -> Response:
        """Save the calibration and run dedup at it (the latest applied whole-collection run of the model is replaced)."""
        check_post(request, csrf)
        from ..calibration import CalibrationNeedsMore, calibrate
        from ..dedup import dedup

        with holder.open() as cat:
            model = judge_model(cat, model)
            try:
                cal = calibrate(cat, model, save=True)
            except CalibrationNeedsMore as exc:
                raise HTTPException(409, f"cannot fit a threshold yet: {exc}") from None
            prev = [r for r in cat.runs() if r["status"] == "applied" and r["model"] == model
                    and r.get("scope") in (None, "all")]
            for r in prev:
                cat.restore(r["id"])
            res = dedup(cat, cal.threshold, model=model)
        return RedirectResponse(f"/groups?run={res.run_id}&flash=judge_applied&run_new={res.run_id}", status_code=303)

    for path in ("/judge/apply",):
        app.add_api_route(path, _post_only, methods=["GET"], include_in_schema=False)


def _post_only() -> Response:
    raise HTTPException(405, "this action changes the catalog: it only accepts POST", headers={"Allow": "POST"})
