"""The review app and the static report in a real browser (Debian's Chromium driven by Playwright).

Skipped when /usr/bin/chromium (apt-get install chromium) or the playwright package is missing.
Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

CHROMIUM = Path(os.environ.get("NEARDUP_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 600-image seed-shaped catalog dedup'd at 0.98; a few group-1 members have real pixels."""
    from neardup.catalog import Catalog
    from neardup.dedup import dedup
    from neardup.ingest import import_embeddings
    from neardup.synthetic import seed_shaped

    tmp = tmp_path_factory.mktemp("browser")
    col = seed_shaped(600, seed=5)
    db = tmp / "cat.duckdb"
    with Catalog(db) as cat:
        import_embeddings(cat, col.vectors, col.ids, meta=col.meta_table())
        run_id = dedup(cat, 0.98).run_id
        members = cat.run_members(run_id).to_pylist()
        g1 = [m["image_id"] for m in members if m["group_id"] == 1]
        rng = np.random.default_rng(1)
        paths = []
        for k, image_id in enumerate(g1[:8]):
            p = tmp / f"img{k}.jpg"
            base = np.array([40 + 20 * k, 120, 200 - 15 * k], dtype=float)
            arr = np.clip(base + rng.normal(0, 25, (240, 320, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(p, quality=85)
            paths.append(str(p))
        cat.upsert_images(pa.table({"id": g1[:8], "path": paths}))
    return dict(db=db, run_id=run_id, tmp=tmp)


@contextlib.contextmanager
def review_server(db) -> Iterator[dict]:
    """The review app on a free loopback port, served by uvicorn in a thread (shared by the browser tests)."""
    import uvicorn

    from neardup.review import create_app

    port = _free_port()
    app = create_app(db, idle_close_s=0)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.monotonic()
    while not srv.started:
        if time.monotonic() - t0 > 20:
            raise RuntimeError("review server did not start")
        time.sleep(0.05)
    yield dict(url=f"http://127.0.0.1:{port}", app=app)
    srv.should_exit = True
    th.join(10)
    app.state.holder.close()


@pytest.fixture(scope="module")
def server(catalog: dict) -> Iterator[dict]:
    with review_server(catalog["db"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def _shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)  # type: ignore[attr-defined]


def test_keep_this_one_too_unsuppresses_in_the_catalog(server: dict, browser: object) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = ctx.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server["url"] + "/")
    assert page.locator("svg.chart").count() == 1
    _shot(page, "review-overview")
    page.click("nav >> text=Groups")
    page.wait_for_url("**/groups")
    _shot(page, "review-groups")
    page.click("a.group-head >> nth=0")
    page.wait_for_url("**/groups/1?*")
    # a suppressed member with a visible "keep this one too" button
    card = page.locator("figure.img-card.member.suppressed").first
    image_id = card.get_attribute("data-image-id")
    assert image_id
    _shot(page, "review-group-before")
    with server["app"].state.holder.open() as cat:
        assert cat.sql("SELECT is_suppressed FROM images WHERE id = ?", [image_id]).to_pylist()[0]["is_suppressed"]
    card.locator("button[data-action=keep]").click()
    page.wait_for_load_state("load")
    assert "Kept" in page.locator(".flash").inner_text()
    same = page.locator(f'figure.img-card[data-image-id="{image_id}"]')
    assert same.count() == 1 and "kept by you" in same.inner_text()
    _shot(page, "review-group-after-keep")
    with server["app"].state.holder.open() as cat:
        row = cat.sql("SELECT is_suppressed FROM images WHERE id = ?", [image_id]).to_pylist()[0]
        assert row["is_suppressed"] is False
        assert image_id in cat.sql("SELECT id FROM visible").column(0).to_pylist()
        assert image_id in cat.overrides()["keep"]
    # thumbnails with pixels really load (naturalWidth > 0), placeholders show ids
    loaded = page.eval_on_selector_all("img.thumb", "els => els.filter(e => e.complete && e.naturalWidth > 0).length")
    assert loaded >= 1
    for path in ("/clusters", "/explore", "/runs"):
        page.goto(server["url"] + path)
        _shot(page, "review" + path.replace("/", "-"))
    assert errors == []
    ctx.close()


def test_static_report_opens_offline_without_console_errors(catalog: dict, browser: object) -> None:
    from neardup.catalog import Catalog
    from neardup.review import write_report

    out = catalog["tmp"] / "report.html"
    with Catalog(catalog["db"], read_only=False) as cat:
        write_report(cat, out, max_groups=10)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)  # type: ignore[attr-defined]
    blocked: list[str] = []

    def route(r: object) -> None:
        url = r.request.url  # type: ignore[attr-defined]
        if url.startswith(("file:", "data:")):
            r.continue_()  # type: ignore[attr-defined]
        else:
            blocked.append(url)
            r.abort()  # type: ignore[attr-defined]

    ctx.route("**/*", route)
    page = ctx.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: messages.append(str(e)))
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    assert page.locator("#groups .report-group").count() == 10
    assert page.locator("svg.chart").count() == 1
    broken = page.eval_on_selector_all("img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0)).length")
    assert broken == 0
    _shot(page, "report-overview")
    page.goto(out.as_uri() + "#groups")
    _shot(page, "report-groups")
    assert messages == [] and blocked == []
    ctx.close()
    shutil.copy(out, ARTIFACTS / "report.html")
