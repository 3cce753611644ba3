"""The review web app: FastAPI routes over one catalog, server-rendered Jinja pages, POST actions.

Safety: meant for 127.0.0.1. Images are served by catalog id only (never by a path from the
request), re-encoded by Pillow, so nothing outside the catalog can be read. Every page is
autoescaped. State changes are POST-only and need the per-server form token plus a same-origin
``Origin`` (when the browser sends one). Malformed requests get a 4xx page, and unexpected
errors a plain 500 page without a traceback.

The DuckDB catalog is opened for each request, used under one lock, and closed as soon as no
request needs it, so every `neardup` command in another terminal can open it while the pages are
open (DuckDB lets one process at a time have the file). While a command holds it, a request waits
for it (up to :data:`REQUEST_LOCK_WAIT_S`, then a 503 page). Every action that writes is one
transaction: a failure leaves the catalog as it was.
"""

from __future__ import annotations

import functools
import io
import logging
import secrets
import threading
import time
import urllib.parse
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence

from fastapi import FastAPI, Form, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..catalog import OVERRIDE_KINDS, Catalog
from ..errors import CatalogError, NeardupError
from . import data as D
from .render import make_env

log = logging.getLogger("neardup.review")

HERE = Path(__file__).parent
THUMB_SIZES = {"small": 256, "large": 1200}
#: Seconds without a request after which the catalog connection is closed (0: when the last
#: request in flight ends, so other processes get the file between requests).
IDLE_CLOSE_S = 0.0
#: Seconds a request waits for a `neardup` command that holds the catalog before answering 503.
REQUEST_LOCK_WAIT_S = 20.0

#: Largest run or group id a URL may carry (DuckDB INTEGER for runs).
MAX_ID = 2**31 - 1
#: Host names a loopback server answers to (anything else may be a DNS-rebinding attempt).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")

#: Messages shown after an action (keys travel in the redirect; the text never comes from the request).
FLASH = {
    "keep": "Kept: this image stays visible now and in every later run.",
    "master": "Made master: it is its group's master now (the old master is suppressed), and in every later run.",
    "not_duplicate": "Marked as not a duplicate: it is out of its group and visible now, and every later run leaves it out.",
    "removed": "Decision removed.",
    "restored": "Run restored: its images are visible again.",
    "restored_back": "Run restored: the run it had replaced is in force again (one dedup back).",
    "restored_all": "All runs restored: every image is visible again.",
    "reapplied": "Re-applied with your decisions: a new run replaced the old one.",  # + "run N" when known
    "nothing": "Nothing to restore.",
    "reapply_unchanged": "Nothing changed: the run in force already has exactly this result.",
    "judge_same": "Saved: the same image.",
    "judge_different": "Saved: different images.",
    "judge_skip": "Skipped: this pair is not offered again (kept in the catalog) and not used in the fit.",
    "judge_applied": "Applied the calibrated threshold: a new run replaced this model's previous one.",
}


class CatalogHolder:
    """One DuckDB connection used under a lock, opened on demand and closed when no request needs it.

    With ``idle_close_s == 0`` (the default) the connection closes when the last request in flight
    (or waiting for the lock) is done; requests that overlap share one open.
    """

    def __init__(self, db_path: Path, idle_close_s: float = IDLE_CLOSE_S,
                 wait_s: float = REQUEST_LOCK_WAIT_S) -> None:
        self.db_path = Path(db_path)
        self.idle_close_s = idle_close_s
        self.wait_s = wait_s
        self._lock = threading.RLock()
        self._count = threading.Lock()
        self._users = 0
        self._cat: Catalog | None = None
        self._last = 0.0
        self._timer: threading.Timer | None = None

    @contextmanager
    def open(self) -> Iterator[Catalog]:
        with self._count:
            self._users += 1
        counted = True
        try:
            with self._lock:
                try:
                    if self._cat is None:
                        if not self.db_path.exists():
                            raise CatalogError(f"{self.db_path}: no catalog here")
                        self._cat = Catalog(self.db_path, wait=self.wait_s)
                    yield self._cat
                finally:
                    with self._count:
                        self._users -= 1
                        counted = False
                        last = self._users == 0
                    self._last = time.monotonic()
                    if last and self.idle_close_s <= 0 and self._cat is not None:
                        self._cat.close()
                        self._cat = None
                    elif last:
                        self._schedule_close()
        finally:
            if counted:
                with self._count:
                    self._users -= 1

    def _schedule_close(self) -> None:
        if self.idle_close_s <= 0:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self.idle_close_s, self._close_if_idle)
        self._timer.daemon = True
        self._timer.start()

    def _close_if_idle(self) -> None:
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._cat is not None and time.monotonic() - self._last >= self.idle_close_s - 0.05:
                self._cat.close()
                self._cat = None
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self._cat is not None:
                self._cat.close()
                self._cat = None


def _host_name(host_header: str) -> str:
    """``"127.0.0.1:8765"`` -> ``"127.0.0.1"``, ``"[::1]:8765"`` -> ``"::1"`` (lower case)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _safe_next(target: str | None, default: str = "/") -> str:
    """A redirect target that stays on this site (a path, not ``//host`` or a full URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def _with_flash(target: str, key: str, **extra: str) -> str:
    parts = urllib.parse.urlsplit(target)
    q = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in ("flash", "img", "run_new")]
    q.append(("flash", key))
    q.extend(extra.items())
    return urllib.parse.urlunsplit(("", "", parts.path, urllib.parse.urlencode(q), parts.fragment))


@functools.lru_cache(maxsize=256)
def _encode_image(path: str, mtime: float, size: int) -> bytes:
    """A JPEG of the image at ``path`` no larger than ``size`` px (cached by path and mtime)."""
    from PIL import Image, ImageOps

    from ..embed.base import to_rgb

    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))
        im.load()
        im = ImageOps.exif_transpose(im)
        rgb = to_rgb(im)
        rgb.thumbnail((size, size), Image.BILINEAR)
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=85)
        return buf.getvalue()


def image_bytes(cat: Catalog, row: dict[str, Any], size: int) -> bytes | None:
    """JPEG bytes for an image row: the scanner's thumbnail when small is enough, else the file downscaled."""
    src = D.image_source(cat, row)
    if src is None:
        return None
    kind, p = src
    if kind == "thumb" and size <= THUMB_SIZES["small"]:
        try:
            return p.read_bytes()
        except OSError:
            return None
    if kind == "thumb":
        orig = row.get("path")
        if orig and Path(orig).is_absolute() and Path(orig).is_file():
            p = Path(orig)
    try:
        return _encode_image(str(p), p.stat().st_mtime, size)
    except Exception:  # unreadable or not an image: nothing to show, never a traceback
        return None


def create_app(db_path: str | Path, *, idle_close_s: float = IDLE_CLOSE_S,
               allowed_hosts: Sequence[str] | None = None, lock_wait_s: float = REQUEST_LOCK_WAIT_S) -> FastAPI:
    """The review app for the catalog at ``db_path`` (opened per use; see :class:`CatalogHolder`).

    ``lock_wait_s``: how long a request waits while a `neardup` command holds the catalog (then 503).

    ``allowed_hosts``: host names the ``Host`` header may carry (default: loopback names only,
    which defeats DNS rebinding against a server on 127.0.0.1; ``["*"]`` allows any).
    """
    db_path = Path(db_path)
    hosts = {h.lower() for h in (allowed_hosts if allowed_hosts is not None else LOOPBACK_NAMES)}
    holder = CatalogHolder(db_path, idle_close_s, lock_wait_s)
    token = secrets.token_urlsafe(24)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        holder.close()

    app = FastAPI(title="neardup review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.holder = holder
    app.state.csrf_token = token
    app.state.weakest_cache = {}
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def thumb_url(img: dict[str, Any] | None, size: str = "small") -> str | None:
        if not img or not img.get("has_pixels"):
            return None
        q = urllib.parse.urlencode({"id": img["id"]} | ({"size": size} if size != "small" else {}))
        return f"/thumb?{q}"

    env = make_env(thumb_url=thumb_url, static=False)

    def page(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        flash = request.query_params.get("flash")
        ctx.setdefault("flash", FLASH.get(flash or ""))
        ctx.setdefault("flash_img", request.query_params.get("img") if flash else None)
        new_run = request.query_params.get("run_new") if flash in ("reapplied", "judge_applied") else None
        ctx.setdefault("flash_run", new_run if new_run and new_run.isdigit() else None)
        html = env.get_template(template).render(
            csrf_token=token, db_name=db_path.name, request_path=request.url.path,
            current_url=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
            static=False, **ctx)
        return HTMLResponse(html, status_code=status)

    def error_page(request: Request, status: int, message: str) -> HTMLResponse:
        try:
            return page(request, "error.html", status=status, status_code=status, message=message, active=None)
        except Exception:  # the error page itself must not fail
            return HTMLResponse(f"<h1>{status}</h1>", status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = exc.detail if isinstance(exc.detail, str) else "request refused"
        resp = error_page(request, exc.status_code, msg)
        if exc.status_code == 405:
            resp.headers["Allow"] = (exc.headers or {}).get("Allow", "POST")
        return resp

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "request" for e in exc.errors())
        return error_page(request, 400, f"malformed request: check {fields or 'the parameters'}")

    @app.exception_handler(CatalogError)
    async def catalog_error(request: Request, exc: CatalogError) -> Response:
        text = str(exc)
        if "in use" in text or "no catalog" in text or "cannot open" in text:
            status = 503
        elif "already" in text:
            status = 409
        elif text.startswith("no run"):
            status = 404
        else:
            status = 500
        return error_page(request, status, text)

    @app.exception_handler(NeardupError)
    async def neardup_error(request: Request, exc: NeardupError) -> Response:
        return error_page(request, 400, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("review: unexpected error on %s", request.url.path)
        return error_page(request, 500, "internal error (details are in the server's log)")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        if "*" not in hosts and _host_name(request.headers.get("host", "")) not in hosts:
            return HTMLResponse("<h1>400</h1><p>unexpected Host header (this server answers on loopback names only; "
                                "see <code>neardup review --host</code>)</p>", status_code=400)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        return response

    def check_post(request: Request, csrf: str | None) -> None:
        if not csrf or not secrets.compare_digest(csrf.encode("utf-8", "surrogatepass"), token.encode("ascii")):
            raise HTTPException(403, "missing or stale form token: reload the page and try again")
        origin = request.headers.get("origin")
        if origin and origin != "null":
            host = request.headers.get("host", "")
            if urllib.parse.urlsplit(origin).netloc != host:
                raise HTTPException(403, "cross-site request refused")

    # -- pages -----------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        with holder.open() as cat:
            ctx = overview_context(cat)
            st = D.status_counts(cat)
        return page(request, "overview.html", active="overview", statusline=st, **ctx)

    @app.get("/groups", response_class=HTMLResponse)
    def groups(request: Request, run: int | None = Query(None, ge=1, le=MAX_ID), page_: int = Query(1, ge=1, le=10**7, alias="page")) -> HTMLResponse:
        with holder.open() as cat:
            r = D.pick_run(cat, run)
            if run is not None and r is None:
                raise HTTPException(404, f"no run {run}")
            gl = D.group_list(cat, r["id"], page_) if r else None
            all_runs = D.runs(cat)
            st = D.status_counts(cat, r["id"] if r else None)
        return page(request, "groups.html", active="groups", run=r, gl=gl, runs=all_runs, statusline=st)

    @app.get("/groups/{group_id}", response_class=HTMLResponse)
    def group(request: Request, group_id: int = PathParam(..., ge=1, le=MAX_ID), run: int | None = Query(None, ge=1, le=MAX_ID),
              page_: int = Query(1, ge=1, le=10**7, alias="page"),
              sort: str = Query("sim_asc", pattern="^(sim_asc|sim_desc|id)$")) -> HTMLResponse:
        with holder.open() as cat:
            r = D.pick_run(cat, run)
            if r is None:
                raise HTTPException(404, "no runs yet" if run is None else f"no run {run}")
            g = D.group_detail(cat, r["id"], group_id, page_, sort=sort)
            if g is None:
                raise HTTPException(404, f"no group {group_id} in run {r['id']}")
            key = (r["id"], group_id)
            cache = app.state.weakest_cache
            if key not in cache:
                cache[key] = D.weakest_link(cat, r, group_id) if g["size"] > 2 else None
            wl = cache[key]
            wl_imgs = D.image_rows(cat, [wl.a, wl.b]) if wl else {}
            wl_pages = {x: D.member_page(cat, r["id"], group_id, x, sort) for x in ((wl.a, wl.b) if wl else ())}
            st = D.status_counts(cat, r["id"])
        return page(request, "group.html", active="groups", run=r, g=g, wl=wl, wl_imgs=wl_imgs, wl_pages=wl_pages,
                    sorts=D.MEMBER_SORTS, statusline=st)

    @app.get("/clusters", response_class=HTMLResponse)
    def clusters(request: Request) -> HTMLResponse:
        with holder.open() as cat:
            c = D.clusters(cat)
            st = D.status_counts(cat)
        return page(request, "clusters.html", active="clusters", c=c, statusline=st)

    @app.get("/explore", response_class=HTMLResponse)
    def explore(request: Request, lo: float | None = Query(None, ge=0.0, lt=1.0),
                step: float | None = Query(None, ge=0.001, le=0.2), per_band: int = Query(6, ge=1, le=24),
                seed: int = Query(0, ge=0, le=2**31)) -> HTMLResponse:
        with holder.open() as cat:
            r = D.pick_run(cat, None)
            chosen, default = D.centre(cat, r)
            bands = D.bands_for(chosen, lo, step)
            ex = D.sample_pairs(cat, bands, per_band, model=r["model"] if r else None, seed=seed)
            D.mark_grouped(cat, ex, r["id"] if r else None)
            sw = D.sweep_data(cat, chosen, r["model"] if r else None, default=default, run=r)
            band_counts = D.band_pair_counts(sw, bands)
            st = D.status_counts(cat)
        return page(request, "explore.html", active="explore", statusline=st, ex=ex, chosen=chosen, default=default,
                    band_counts=band_counts, run=r,
                    step=round(bands[0][1] - bands[0][0], 6) if bands else step, lo=bands[0][0] if bands else lo, seed=seed, per_band=per_band)

    @app.get("/runs", response_class=HTMLResponse)
    def runs(request: Request) -> HTMLResponse:
        with holder.open() as cat:
            all_runs = D.runs(cat)
            ov = cat.sql("SELECT image_id, kind, created_at FROM overrides ORDER BY created_at DESC LIMIT 500").to_pylist()
            n = D.counts(cat)
            st = D.status_counts(cat)
        return page(request, "runs.html", active="runs", runs=all_runs, overrides=ov, counts=n, statusline=st)

    @app.get("/thumb")
    def thumb(id: str = Query(..., min_length=1, max_length=4096),
              size: str = Query("small", pattern="^(small|large)$")) -> Response:
        with holder.open() as cat:
            row = D.image_row(cat, id)
            if row is None:
                raise HTTPException(404, "no such image in the catalog")
            body = image_bytes(cat, row, THUMB_SIZES[size])
        if body is None:
            raise HTTPException(404, "no pixels for this image (embeddings only, or the file is gone)")
        return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    # -- actions (POST only) ---------------------------------------------------------------
    @app.post("/actions/override")
    def add_override(request: Request, image_id: str = Form(..., min_length=1, max_length=4096),
                     kind: str = Form(..., pattern="^(keep|master|not_duplicate)$"),
                     csrf: str | None = Form(None), next: str | None = Form(None)) -> Response:
        check_post(request, csrf)
        if kind not in OVERRIDE_KINDS:  # already checked by the form pattern; kept as the catalog's own rule
            raise HTTPException(400, f"unknown decision {kind!r}")
        with holder.open() as cat:
            if D.image_row(cat, image_id) is None:
                raise HTTPException(404, "no such image in the catalog")
            from ..calibration import JUDGMENT_SOURCES_REVIEW, add_judgments

            # "not a duplicate" / "keep this one too" judge the pair (image, its master) as it is
            # before the decision (a not-a-duplicate image has no master of its own afterwards);
            # the judgment is written after the decision, so undoing the decision forgets it
            pair = cat.one("""SELECT m.master_id, r.model FROM run_members m JOIN runs r ON r.id = m.run_id
                              WHERE m.image_id = ? AND r.status = 'applied' AND m.master_id <> m.image_id
                              ORDER BY r.id DESC LIMIT 1""", [image_id])
            def apply() -> None:
                cat.add_override(image_id, kind)   # changes the groups of the runs in force at once
                if pair is not None and kind in JUDGMENT_SOURCES_REVIEW:
                    add_judgments(cat, [(image_id, pair[0], JUDGMENT_SOURCES_REVIEW[kind])], pair[1],
                                  source=f"review:{kind}")

            from ..undo import record

            record(cat, f"override:{kind}", apply, image_id=image_id, detail=dict(kind=kind))   # undoable exactly
            app.state.weakest_cache.clear()
        return RedirectResponse(_with_flash(_safe_next(next), kind, img=image_id), status_code=303)

    @app.post("/actions/override/remove")
    def remove_override(request: Request, image_id: str = Form(..., min_length=1, max_length=4096),
                        kind: str = Form(..., pattern="^(keep|master|not_duplicate)$"),
                        csrf: str | None = Form(None), next: str | None = Form(None)) -> Response:
        check_post(request, csrf)
        with holder.open() as cat:
            from ..calibration import forget_review_judgment
            from ..undo import UndoRefused, actions, undo

            # "undo keep" restores exactly the state before the keep when it was this page's last
            # word on the image (neardup.undo); otherwise the decision is withdrawn
            mine = [a for a in actions(cat, image_id=image_id) if a["kind"].startswith("override:")]
            last = mine[0] if mine else None   # (``next`` is the form field here)
            exact = False
            if last is not None and last["kind"] == f"override:{kind}":
                try:
                    undo(cat, int(last["id"]))
                    exact = True
                except UndoRefused:
                    pass
            if not exact:
                forget_review_judgment(cat, image_id, kind)
                cat.remove_override(image_id, kind)
            app.state.weakest_cache.clear()
        return RedirectResponse(_with_flash(_safe_next(next), "removed", img=image_id), status_code=303)

    @app.post("/runs/{run_id}/restore")
    def restore_run(request: Request, run_id: int = PathParam(..., ge=1, le=MAX_ID), csrf: str | None = Form(None)) -> Response:
        check_post(request, csrf)
        with holder.open() as cat:
            res = cat.restore_runs(run_id)
        return RedirectResponse(_with_flash("/runs", "restored_back" if res.reinstated else "restored"), status_code=303)

    @app.post("/runs/restore-all")
    def restore_all(request: Request, csrf: str | None = Form(None)) -> Response:
        check_post(request, csrf)
        with holder.open() as cat:
            done = cat.restore(None)
        return RedirectResponse(_with_flash("/runs", "restored_all" if done else "nothing"), status_code=303)

    @app.post("/runs/{run_id}/reapply")
    def reapply(request: Request, run_id: int = PathParam(..., ge=1, le=MAX_ID), csrf: str | None = Form(None)) -> Response:
        """Dedup again with an applied run's settings (the new run replaces it), regrouping around the decisions."""
        check_post(request, csrf)
        from ..dedup import dedup
        from ..policy import parse_policy

        with holder.open() as cat:
            r = cat.run(run_id)
            if r["status"] != "applied":
                raise HTTPException(409, f"run {run_id} is {r['status']}: only an applied run can be re-applied")
            if r.get("scope") not in (None, "all"):
                raise HTTPException(409, f"run {run_id} covered part of the collection: re-run it from the command line")
            prefer = policy_spec(r["policy"])
            parse_policy(prefer)  # refuse before touching the catalog if the stored policy cannot be read back
            bound = (r.get("summary") or {}).get("bound") if isinstance(r.get("summary"), dict) else None
            # the new run replaces the applied one in its own transaction: both or neither
            res = dedup(cat, r["threshold"], model=r["model"], mode=r["mode"], prefer=prefer, bound=bound)
            app.state.weakest_cache.clear()
        if res.unchanged:
            return RedirectResponse(_with_flash("/runs", "reapply_unchanged"), status_code=303)
        return RedirectResponse(_with_flash("/runs", "reapplied", run_new=str(res.run_id)), status_code=303)

    from . import judge, keyboard, spotlight

    judge.register(app, holder, page, check_post)
    keyboard.register(app, holder, page, check_post)
    spotlight.register(app, holder, page)

    # GET on an action URL: say it is POST-only (405) rather than 404
    for path in ("/actions/override", "/actions/override/remove", "/runs/restore-all"):
        app.add_api_route(path, _post_only, methods=["GET"], include_in_schema=False)
    app.add_api_route("/runs/{run_id}/restore", _post_only, methods=["GET"], include_in_schema=False)
    app.add_api_route("/runs/{run_id}/reapply", _post_only, methods=["GET"], include_in_schema=False)

    return app


def policy_spec(text: str | None) -> str | None:
    """A run's stored policy (``"score desc,brightness desc,id asc"``) as ``dedup``'s ``prefer`` (``"score:desc,..."``)."""
    if not text:
        return None
    return ",".join(":".join(p.split()) for p in text.split(",") if p.strip())


def _post_only() -> Response:
    raise HTTPException(405, "this action changes the catalog: it only accepts POST", headers={"Allow": "POST"})


def overview_context(cat: Catalog) -> dict[str, Any]:
    """Everything the overview page shows (also used by the static report)."""
    r = D.pick_run(cat, None)
    chosen, default = D.centre(cat, r)
    sw = D.sweep_data(cat, chosen, r["model"] if r else None, default=default, run=r)
    return dict(counts=D.counts(cat), run=r, runs=D.runs(cat), sweep=sw, chart=D.sweep_svg(sw),
                models=cat.embedding_models())
