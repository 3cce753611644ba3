"""Keyboard review of a 50-group run in a real browser (Debian's Chromium via Playwright):
<= 60 key presses, progress, confirmation in view, undo; the catalog is checked afterwards.

Skipped when /usr/bin/chromium or the playwright package is missing. Screenshots: test-artifacts/.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from test_group_review import planted, snapshot
from test_review_browser import ARGS, CHROMIUM, _shot, review_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from neardup.catalog import Catalog

    tmp = tmp_path_factory.mktemp("keys")
    db = tmp / "cat.duckdb"
    run, vec = planted(db)
    rng = np.random.default_rng(3)
    ids, paths = [], []
    for k, image_id in enumerate(sorted(vec)):
        w, h = (200, 120) if k % 3 else (120, 200)       # wide and tall: thumbnails must not crop
        arr = np.clip(rng.integers(40, 200, 3) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        p = tmp / f"{image_id}.jpg"
        Image.fromarray(arr).save(p, quality=80)
        ids.append(image_id)
        paths.append(str(p))
    with Catalog(db) as cat:
        cat.upsert_images(pa.table({"id": ids, "path": paths}))
    return dict(db=db, run=run)


@pytest.fixture(scope="module")
def server(catalog: dict) -> Iterator[dict]:
    with review_server(catalog["db"]) as srv:
        yield srv


def _in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    vh = page.viewport_size["height"]
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= vh


def test_a_50_group_run_by_keyboard(server: dict, catalog: dict) -> None:
    run = catalog["run"]
    presses = 0
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server["url"] + "/review")
        assert page.locator("#review-count").inner_text() == "0 of 50 groups reviewed"
        fits = page.eval_on_selector_all(".review-group img.thumb", "els => els.map(e => getComputedStyle(e).objectFit)")
        assert fits and set(fits) == {"contain"}
        _shot(page, "review-keys-first")

        def key(k: str, navigates: bool = True) -> None:
            nonlocal presses
            presses += 1
            if navigates:
                with page.expect_navigation():
                    page.keyboard.press(k)
            else:
                page.keyboard.press(k)

        seen: list[int] = []
        special = {}
        while True:
            count = page.locator("#review-count").inner_text()
            if count.startswith("50 of 50"):
                break
            g = int(page.locator(".review-group").get_attribute("data-group"))
            assert g not in seen, "a reviewed group came back"
            seen.append(g)
            n_members = page.locator(".review-member").count()
            if len(seen) == 10 and n_members >= 2:
                key("2", navigates=False)                       # select the second member ...
                sel = page.locator(".review-member.selected").get_attribute("data-image-id")
                key("n")                                        # ... it is not a duplicate (stays on the group)
                assert "not a duplicate" in page.locator("#confirm").inner_text()
                assert _in_view(page, "#confirm")
                _shot(page, "review-keys-not-duplicate")
                special["not_dup"] = (g, sel)
                key("a")
            elif len(seen) == 20:
                with server["app"].state.holder.open() as cat:
                    special["before_keep"] = snapshot(cat)
                key("k")                                        # keep all
                special["keep_all"] = g
                assert "Kept every member" in page.locator("#confirm").inner_text()
                assert _in_view(page, "#confirm")
            else:
                key("a")
                assert _in_view(page, "#confirm")
            assert page.locator("#review-count").inner_text().startswith(f"{len(seen)} of 50")
        assert len(seen) == 50 and presses <= 60, presses
        _shot(page, "review-keys-done")

        with server["app"].state.holder.open() as cat:
            reviews = cat.sql("SELECT group_id, decision FROM group_reviews WHERE run_id = ?", [run]).to_pylist()
            assert len(reviews) == 50
            dec = {r["group_id"]: r["decision"] for r in reviews}
            assert dec[special["keep_all"]] == "keep_all"
            assert sum(d == "accept" for d in dec.values()) == 49
            g_nd, img_nd = special["not_dup"]
            assert img_nd in cat.overrides()["not_duplicate"]
            kept = cat.overrides()["keep"]
            kg = cat.sql("SELECT image_id FROM run_members WHERE run_id = ? AND group_id = ? AND NOT is_master",
                         [run, special["keep_all"]]).column(0).to_pylist()
            assert set(kg) <= kept
            # (the not-a-duplicate image left its group at once: it is a group of its own, numbered after 50)
            assert cat.scalar("SELECT group_id FROM run_members WHERE run_id = ? AND image_id = ?", [run, img_nd]) > 50
            n_members = cat.scalar("SELECT count(*) FROM run_members WHERE run_id = ? AND group_id <= 50 AND NOT is_master", [run])
            same = cat.scalar("SELECT count(*) FROM judgments WHERE same")
            assert same == n_members - len(kg)               # every accepted member (not the not-a-duplicate one)

        # undo the keep-all: the catalog is exactly as before it
        page.goto(server["url"] + f"/review?run={run}&group={special['keep_all']}")
        with page.expect_navigation():
            page.keyboard.press("u")
        assert "Undid the last decision" in page.locator("#confirm").inner_text()
        assert page.locator("#review-count").inner_text().startswith("49 of 50")
        _shot(page, "review-keys-undo")
        with server["app"].state.holder.open() as cat:
            now = snapshot(cat)
        before = special["before_keep"]
        # the keep-all group is unreviewed again, everything it wrote is gone, the rest is untouched
        assert now["images"] == before["images"] and now["overrides"] == before["overrides"]
        later = lambda rows: [r for r in rows if r.get("group_id") != special["keep_all"]]  # noqa: E731
        assert len(now["group_reviews"]) == 49
        assert not [j for j in now["judgments"] if j["source"] == f"review:group:{run}:{special['keep_all']}"]

        # C: compare the selected member with its master, then the difference view
        key("2", navigates=False)
        sel = page.locator(".review-member.selected").get_attribute("data-image-id")
        master = page.locator(".review-group").get_attribute("data-master")
        with page.expect_navigation():
            page.keyboard.press("c")
        assert page.url.split("?")[0].endswith("/compare")
        page.wait_for_function("() => [...document.querySelectorAll('img.full')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.eval_on_selector_all("img.full", "els => els.map(e => e.alt)") == [master, sel]
        assert set(page.eval_on_selector_all("img.full", "els => els.map(e => getComputedStyle(e).objectFit)")) == {"contain"}
        _shot(page, "review-compare")
        with page.expect_navigation():
            page.click("#toggle-diff")
        page.wait_for_function("() => { const i = document.getElementById('diff-img'); return i && i.complete && i.naturalWidth > 0; }")
        _shot(page, "review-compare-difference")
        page.goto(server["url"] + f"/review?run={run}&group={special['keep_all']}")

        # bulk accept from the page, then the groups page agrees on the count of groups
        page.fill("#bulk-span", "-1")
        with page.expect_navigation():
            page.click("#bulk-accept")
        assert "Accepted 1 groups" in page.locator("#confirm").inner_text()
        assert page.locator("#review-count").inner_text().startswith("50 of 50")
        assert errors == []
        browser.close()


# --------------------------------------------------------------------------------------------
# counts agree on every page after every action
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """8 groups with pixels, every image in one of 3 clusters (so the cluster pages cover the catalog)."""
    from neardup.catalog import Catalog

    tmp = tmp_path_factory.mktemp("counts")
    db = tmp / "cat.duckdb"
    run, vec = planted(db, n_groups=8, seed=5)
    rng = np.random.default_rng(5)
    ids, paths = [], []
    for image_id in sorted(vec):
        arr = np.clip(rng.integers(40, 200, 3) + rng.normal(0, 20, (90, 140, 3)), 0, 255).astype(np.uint8)
        p = tmp / f"{image_id}.jpg"
        Image.fromarray(arr).save(p, quality=80)
        ids.append(image_id)
        paths.append(str(p))
    with Catalog(db) as cat:
        cat.upsert_images(pa.table({"id": ids, "path": paths}))
        cat.con.execute("UPDATE images SET cluster_id = hash(id) % 3")
    return dict(db=db, run=run)


def _expected(cat, run: int) -> dict:
    """The counts from the catalog by plain SQL: the visible view, and the run's groups of 2+ and their reviews."""
    retained = cat.scalar("SELECT count(*) FROM visible")
    n = cat.scalar("SELECT count(*) FROM images")
    groups = {r[0] for r in cat.con.execute("SELECT group_id FROM run_members WHERE run_id = ? GROUP BY group_id "
                                            "HAVING count(*) >= 2", [run]).fetchall()}
    reviewed = {r[0] for r in cat.con.execute("SELECT group_id FROM group_reviews WHERE run_id = ?", [run]).fetchall()}
    return dict(retained=int(retained), suppressed=int(n - retained), total=len(groups),
                reviewed=len(groups & reviewed), groups=sorted(groups))


def _strip(page) -> dict:
    el = page.locator("#status-counts")
    return {k: int(el.get_attribute(f"data-{k}")) for k in ("retained", "suppressed", "total", "reviewed")}


def test_counts_agree_on_every_page_after_each_action(small_catalog: dict) -> None:
    import re

    run = small_catalog["run"]
    with review_server(small_catalog["db"]) as srv, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        url = srv["url"]

        def walk(label: str, group: int) -> None:
            with srv["app"].state.holder.open() as cat:
                want = _expected(cat, run)
                per_cluster = dict(cat.con.execute("SELECT cluster_id, count(*) FILTER (WHERE NOT is_suppressed) "
                                                   "FROM images GROUP BY 1").fetchall())
                g = group if group in want["groups"] else want["groups"][0]
                g_supp = cat.scalar("SELECT count(*) FROM run_members m JOIN images i ON i.id = m.image_id "
                                    "WHERE m.run_id = ? AND m.group_id = ? AND i.is_suppressed", [run, g])
            top = {k: want[k] for k in ("retained", "suppressed", "total", "reviewed")}
            pages = ["/", f"/groups/{g}?run={run}", "/judge", "/clusters", f"/review?run={run}&group={g}"]
            pages += [f"/clusters/{c}" for c in sorted(per_cluster)]
            for path in pages:
                page.goto(url + path)
                assert _strip(page) == top, (label, path)
                if path == "/":        # the overview's own tiles
                    assert page.locator(".tile.good .big").inner_text().replace(",", "") == str(want["retained"]), label
                    assert page.locator(".tile.muted .big").inner_text().replace(",", "") == str(want["suppressed"]), label
                elif path.startswith("/groups/"):   # the group's members, as the images table has them
                    facts = page.locator(".group-facts p").first.inner_text()
                    assert facts.startswith(f"{g_supp} of "), (label, facts)
                elif path == "/clusters":
                    m = re.search(r"([\d,]+) images before, ([\d,]+) after", page.locator("main").inner_text())
                    assert m and int(m.group(2).replace(",", "")) == want["retained"], label
                elif path.startswith("/clusters/"):
                    c = int(path.rsplit("/", 1)[1])
                    m = re.search(r"([\d,]+) images before, ([\d,]+) after", page.locator("h1").inner_text())
                    assert m and int(m.group(2).replace(",", "")) == per_cluster[c], (label, path)
                elif path.startswith("/review"):
                    assert page.locator("#review-count").inner_text().startswith(
                        f"{want['reviewed']} of {want['total']} groups reviewed"), label
            _shot(page, f"counts-{label}")

        def on_group(g: int) -> None:
            page.goto(url + f"/review?run={run}&group={g}")

        def press(k: str) -> None:
            with page.expect_navigation():
                page.keyboard.press(k)
            assert page.locator("#confirm").count() == 1

        with srv["app"].state.holder.open() as cat:
            gs = _expected(cat, run)["groups"]
        walk("start", gs[0])
        on_group(gs[0]); press("a"); walk("accept", gs[0])
        on_group(gs[1]); press("k"); walk("keep-all", gs[1])
        on_group(gs[2]); page.keyboard.press("2"); press("m"); walk("master", gs[2])
        on_group(gs[3]); page.keyboard.press("2"); press("n"); walk("not-duplicate", gs[3])
        on_group(gs[1]); press("u"); walk("undo-keep-all", gs[1])
        on_group(gs[0])
        page.fill("#bulk-span", "-1")
        with page.expect_navigation():
            page.click("#bulk-accept")
        assert re.search(r"recorded \d+ judgments", page.locator("#confirm").inner_text())
        walk("bulk", gs[4])
        on_group(gs[4]); press("u"); assert "bulk accept" in page.locator("#confirm").inner_text()
        walk("undo-bulk", gs[4])
        assert errors == []
        browser.close()
