"""The judging page in a real browser (Debian's Chromium driven by Playwright): keys answer,
progress and the fitted threshold update, "apply" runs dedup at it; the catalog is checked after.

Skipped when /usr/bin/chromium or the playwright package is missing. Screenshots: test-artifacts/.
"""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import pyarrow as pa
import pytest
from reference import canonical_f64
from PIL import Image

from test_review_browser import ARGS, CHROMIUM, _shot, review_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

T0 = 0.7   # the simulated person calls a pair "same" exactly when its similarity is >= T0


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """240 images in 48 groups of 5 with varied spread; every image has pixels, wide or tall."""
    from neardup.catalog import Catalog

    tmp = tmp_path_factory.mktemp("judge")
    rng = np.random.default_rng(7)
    d, vecs, ids, paths = 64, [], [], []
    for g in range(48):
        base = rng.normal(size=d)
        base /= np.linalg.norm(base)
        sig = rng.uniform(0.05, 0.9)
        colour = rng.integers(30, 220, 3)
        for k in range(5):
            v = base + rng.normal(size=d) * sig / np.sqrt(d)
            vecs.append(v / np.linalg.norm(v))
            image_id = f"g{g:02d}_{k}"
            ids.append(image_id)
            w, h = (360, 180) if g % 2 == 0 else (180, 360)
            arr = np.clip(colour + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            p = tmp / f"{image_id}.jpg"
            Image.fromarray(arr).save(p, quality=80)
            paths.append(str(p))
    V = np.array(vecs, np.float32)
    db = tmp / "cat.duckdb"
    with Catalog(db) as cat:
        cat.put_embeddings("sscd", ids, V, images=pa.table({"id": ids, "path": paths}))
    return dict(db=db, vectors=dict(zip(ids, canonical_f64(V))))  # as stored: similarities are their exact dots


@pytest.fixture(scope="module")
def server(catalog: dict) -> Iterator[dict]:
    with review_server(catalog["db"]) as srv:
        yield srv


def test_judging_by_keyboard_calibrates_and_applies(server: dict, catalog: dict) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server["url"] + "/judge")
        assert page.locator("#fit-none").count() == 1          # nothing judged yet: no threshold
        # both images load, uncropped: object-fit contain
        page.wait_for_function("() => [...document.querySelectorAll('.judge-img img.full')].every(i => i.complete && i.naturalWidth > 0)")
        fits = page.eval_on_selector_all(".judge-img img.full", "els => els.map(e => getComputedStyle(e).objectFit)")
        assert fits == ["contain", "contain"]
        _shot(page, "judge-first-pair")

        vec = catalog["vectors"]
        answers: list[tuple[str, str, bool]] = []
        skipped: tuple[str, str] | None = None
        thresholds: list[float] = []
        for step in range(26):
            pair = page.locator(".judge-pair")
            a, b = pair.get_attribute("data-a"), pair.get_attribute("data-b")
            sim = float(vec[a] @ vec[b])
            shown = float(page.locator("#pair-sim").inner_text())
            assert shown == pytest.approx(sim, abs=6e-5)         # the page shows the pair's real similarity
            if step == 3:
                key, skipped = "k", (a, b)
            else:
                same = sim >= T0
                key = "s" if same else "d"
                answers.append((a, b, same))
            with page.expect_navigation():
                page.keyboard.press(key)
            assert page.locator(".flash").count() == 1
            text = page.locator("#progress-text").inner_text()
            assert re.match(rf"{len(answers)} judged", text), text
            if page.locator("#fit-threshold").count():
                thresholds.append(float(page.locator("#fit-threshold").inner_text()))
            if step == 12:
                _shot(page, "judge-midway")
        assert len(thresholds) >= 5 and len(set(thresholds)) >= 2   # the fit appeared and moved as answers came
        low = float(page.locator("#fit-low").inner_text())
        high = float(page.locator("#fit-high").inner_text())
        t_fit = thresholds[-1]
        assert low <= t_fit <= high
        assert abs(t_fit - T0) < 0.1
        _shot(page, "judge-fitted")

        # the catalog holds exactly the answers given (the skipped pair is not judged, nor offered again)
        with server["app"].state.holder.open() as cat:
            rows = cat.sql("SELECT a, b, same, source, similarity FROM judgments").to_pylist()
        got = {(r["a"], r["b"]): r["same"] for r in rows}
        assert got == {(min(a, b), max(a, b)): s for a, b, s in answers}
        assert all(r["source"] == "review:judge" for r in rows)
        assert all(r["similarity"] == pytest.approx(float(vec[r["a"]] @ vec[r["b"]]), abs=1e-6) for r in rows)
        assert skipped is not None and (min(skipped), max(skipped)) not in got

        # apply: a run at the fitted threshold, saved as this catalog's calibration
        with page.expect_navigation():
            page.click("#apply")
        assert "Applied the calibrated threshold" in page.locator(".flash").inner_text()
        _shot(page, "judge-applied")
        with server["app"].state.holder.open() as cat:
            runs = cat.runs()
            cal = cat.sql("SELECT threshold, judgments FROM calibrations").to_pylist()
        assert len(cal) == 1 and cal[0]["judgments"] == len(answers)
        assert runs[-1]["status"] == "applied" and runs[-1]["threshold"] == pytest.approx(cal[0]["threshold"])
        assert cal[0]["threshold"] == pytest.approx(t_fit, abs=1e-4)   # the point fit does not depend on the resamples
        assert errors == []
        ctx.close()
        browser.close()
