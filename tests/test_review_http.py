"""The review app over HTTP (FastAPI TestClient): routes, escaping, traversal, POST-only actions, 4xx.

The catalog is a small seed-shaped collection (embeddings only) with one hostile id, one image
with real pixels (a PNG written here) and one whose catalog path points at a non-image file.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from neardup.catalog import Catalog
from neardup.dedup import dedup
from neardup.ingest import import_embeddings
from neardup.review import create_app, write_report
from neardup.synthetic import seed_shaped

EVIL = "<script>alert(1)</script>"
EVIL_PATH_ID = 'x"><img src=x onerror=alert(2)>.jpg'
HOSTILE_PATH = '/no/such/dir/"><script>alert(3)</script>.jpg'


@pytest.fixture(scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 600-image seed-shaped catalog, dedup'd at 0.98, with a hostile id inside the largest group."""
    tmp_path = tmp_path_factory.mktemp("review_template")
    col = seed_shaped(600, seed=3)
    ids = col.ids.astype(object).copy()
    X = col.vectors
    db = tmp_path / "cat.duckdb"
    with Catalog(db) as cat:
        # find the largest group first, so the hostile id and the pixel image land inside it
        import_embeddings(cat, X, ids, meta=col.meta_table())
        r = dedup(cat, 0.98, dry_run=True)
        m = r.members.to_pylist()
        big = [x for x in m if x["group_id"] == 1 and not x["is_master"]]
        evil_old, pix_old, bad_old = big[0]["image_id"], big[1]["image_id"], big[2]["image_id"]
        hostile_path_id = big[3]["image_id"]
    db.unlink()
    for f in tmp_path.glob("cat.duckdb*"):
        if f.is_dir():
            import shutil
            shutil.rmtree(f)
    ids[ids == evil_old] = EVIL
    ids[ids == bad_old] = EVIL_PATH_ID
    pix_id = pix_old
    meta = col.meta_table().set_column(0, "id", pa.array(ids.tolist(), pa.string()))
    png = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)).save(png)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret, not an image\n")
    with Catalog(db) as cat:
        import_embeddings(cat, X, ids, meta=meta)
        cat.upsert_images(pa.table({"id": [pix_id, EVIL_PATH_ID, EVIL, hostile_path_id],
                                    "path": [str(png), str(secret), "/etc/passwd", HOSTILE_PATH]}))
        res = dedup(cat, 0.98)
        run_id = res.run_id
        sizes = {r["group_id"]: r["n"] for r in cat.sql(
            "SELECT group_id, count(*) AS n FROM run_members WHERE run_id = ? GROUP BY 1", [run_id]).to_pylist()}
        no_pixels = next(i for i in ids.tolist() if i not in (pix_id, EVIL, EVIL_PATH_ID))
    return dict(db=db, run_id=run_id, pix_id=pix_id, no_pixels=no_pixels, sizes=sizes, png=png, secret=secret, tmp=tmp_path)


@pytest.fixture()
def catalog(_template: dict, tmp_path: Path) -> dict:
    """A fresh copy of the template catalog (and its sidecar folder) for each test."""
    import shutil

    src: Path = _template["db"]
    db = tmp_path / "cat.duckdb"
    shutil.copy(src, db)
    side = src.with_name(src.name + ".d")
    if side.is_dir():
        shutil.copytree(side, db.with_name(db.name + ".d"))
    return dict(_template, db=db)


@pytest.fixture()
def client(catalog: dict) -> TestClient:
    app = create_app(catalog["db"], idle_close_s=0)
    with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        c.app_state = app.state  # type: ignore[attr-defined]
        yield c
    app.state.holder.close()


def token(client: TestClient) -> str:
    html = client.get("/runs").text
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "the runs page has a form token"
    return m.group(1)


def check_catalog(catalog: dict, client: TestClient):
    """Read the catalog on the app's own connection (DuckDB allows one writer)."""
    return client.app_state.holder.open()


# -- pages -----------------------------------------------------------------------------------

def test_every_page_renders_with_real_numbers(client: TestClient, catalog: dict) -> None:
    with check_catalog(catalog, client) as cat:
        n = cat.count_images()
        n_supp = cat.sql("SELECT count(*) AS n FROM images WHERE is_suppressed").to_pylist()[0]["n"]
        n_groups = cat.run(catalog["run_id"])["n_groups"]
    home = client.get("/")
    assert home.status_code == 200
    text = re.sub(r"\s+", " ", home.text)
    assert f"{n:,}" in text and f"{n_supp:,}" in text and "<svg class=\"chart\"" in home.text
    g = client.get("/groups")
    assert g.status_code == 200 and f"{n_groups:,} groups, largest first" in g.text
    for url in ("/groups/1", "/clusters", "/explore", "/runs", f"/groups?run={catalog['run_id']}&page=1"):
        r = client.get(url)
        assert r.status_code == 200, url
        assert "Traceback" not in r.text
    assert client.get("/static/review.css").status_code == 200


def test_group_paging_covers_every_member_once(client: TestClient, catalog: dict) -> None:
    size = catalog["sizes"][1]
    assert size > 60, "the fixture's largest group spans several pages"
    seen: list[str] = []
    page = 1
    while True:
        html = client.get(f"/groups/1?page={page}&sort=id").text
        got = re.findall(r'<figure class="card img-card member[^"]*" data-image-id="([^"]*)"', html)
        if not got or page > 50:
            break
        seen += got
        if 'rel="next"' not in html:
            break
        page += 1
    assert len(seen) == size - 1 and len(set(seen)) == size - 1
    with check_catalog(catalog, client) as cat:
        members = {r["image_id"] for r in cat.run_members(catalog["run_id"]).to_pylist()
                   if r["group_id"] == 1 and not r["is_master"]}
    import html as htmlmod
    assert {htmlmod.unescape(s) for s in seen} == members


def test_weakest_link_matches_the_run_summary(client: TestClient, catalog: dict) -> None:
    with check_catalog(catalog, client) as cat:
        top = cat.run(catalog["run_id"])["summary"]["largest_groups"][0]
    html = re.sub(r"\s+", " ", client.get(f"/groups/{top['group_id']}").text)
    m = re.search(r"Weakest link holding the group together: <strong>([0-9.]+)</strong>", html)
    assert m and abs(float(m.group(1)) - top["weakest_link"]) < 1e-3
    # each end of the weakest link is found on the page the header links to, highlighted
    ends = re.findall(r'<a href="(/groups/[^"]+)">on page (\d+) ›</a>', html)
    ends += [(None, None)] * html.count("on this page")
    assert len(ends) + html.count(">the master<") == 2
    for href, _ in ends:
        page = client.get(href.replace("&amp;", "&")).text if href else html
        weak_cards = re.findall(r'<figure class="card img-card member weak[^"]*" data-image-id="([^"]*)"', page)
        assert weak_cards, href


# -- escaping --------------------------------------------------------------------------------

def test_hostile_ids_are_escaped_everywhere(client: TestClient, catalog: dict) -> None:
    pages = [client.get(u).text for u in ("/groups/1?sort=id", "/groups/1?sort=sim_asc", "/groups", "/runs")]
    # every page of group 1 (the hostile ids are somewhere in it)
    for p in range(2, 20):
        r = client.get(f"/groups/1?sort=id&page={p}")
        pages.append(r.text)
        if 'rel="next"' not in r.text:
            break
    joined = "\n".join(pages)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in joined
    assert EVIL not in joined
    assert "alert(3)" in joined and "<script>alert(3)" not in joined  # a hostile path (title attribute) is escaped too
    assert "<img src=x onerror" not in joined
    assert "onerror=alert(2)" not in joined or "&#34;&gt;&lt;img" in joined or "&quot;&gt;&lt;img" in joined
    # the flash after an action echoes the id: escaped too
    t = token(client)
    r = client.post("/actions/override", data={"image_id": EVIL, "kind": "not_duplicate", "csrf": t, "next": "/runs"})
    assert r.status_code == 200 and EVIL not in r.text and "&lt;script&gt;" in r.text


# -- images and traversal --------------------------------------------------------------------

def test_thumbnails_only_for_catalog_images(client: TestClient, catalog: dict) -> None:
    r = client.get("/thumb", params={"id": catalog["pix_id"]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert max(im.size) <= 256 and im.size == (256, 192)
    big = client.get("/thumb", params={"id": catalog["pix_id"], "size": "large"})
    assert big.status_code == 200 and Image.open(io.BytesIO(big.content)).size == (400, 300)
    # ids that are paths, and catalog rows whose path is not an image: never served
    for bad in ("../../../../etc/passwd", "/etc/passwd", str(catalog["secret"]), str(catalog["png"]),
                "..%2f..%2fetc%2fpasswd", EVIL_PATH_ID, EVIL):
        r = client.get("/thumb", params={"id": bad})
        assert r.status_code == 404, bad
        assert b"top secret" not in r.content and b"root:" not in r.content
    # an image without pixels (embeddings only): 404, and the pages show a placeholder instead
    assert client.get("/thumb", params={"id": catalog["no_pixels"]}).status_code == 404
    for url in ("/static/../app.py", "/static/..%2fapp.py", "/static/%2e%2e/%2e%2e/catalog.py",
                "/static/..%2f..%2f..%2fcat.duckdb", "/thumb/../../etc/passwd", "/../../etc/passwd"):
        r = client.get(url)
        assert r.status_code in (400, 404, 405), url
        assert b"import" not in r.content and b"root:" not in r.content


# -- actions ---------------------------------------------------------------------------------

def _suppressed_member(client: TestClient, catalog: dict) -> str:
    with check_catalog(catalog, client) as cat:
        return cat.sql("SELECT id FROM images WHERE is_suppressed ORDER BY id LIMIT 1").to_pylist()[0]["id"]


def test_state_changes_only_through_post_with_token(client: TestClient, catalog: dict) -> None:
    victim = _suppressed_member(client, catalog)
    for url in ("/actions/override", "/actions/override/remove", f"/runs/{catalog['run_id']}/restore",
                "/runs/restore-all", f"/runs/{catalog['run_id']}/reapply"):
        r = client.get(url, params={"image_id": victim, "kind": "keep"})
        assert r.status_code == 405, url
    # no token, wrong token, foreign origin: refused, nothing written
    assert client.post("/actions/override", data={"image_id": victim, "kind": "keep"}).status_code == 403
    assert client.post("/actions/override", data={"image_id": victim, "kind": "keep", "csrf": "nope"}).status_code == 403
    assert client.post("/actions/override", data={"image_id": victim, "kind": "keep", "csrf": "tökén✓"}).status_code == 403
    t = token(client)
    r = client.post("/actions/override", data={"image_id": victim, "kind": "keep", "csrf": t},
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert client.post(f"/runs/{catalog['run_id']}/restore", data={}).status_code == 403
    with check_catalog(catalog, client) as cat:
        assert cat.overrides()["keep"] == set()
        assert cat.run(catalog["run_id"])["status"] == "applied"
    # the real thing: keep -> visible at once, recorded as a decision
    r = client.post("/actions/override", data={"image_id": victim, "kind": "keep", "csrf": t, "next": "/groups/1"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/groups/1?")
    with check_catalog(catalog, client) as cat:
        assert victim in cat.overrides()["keep"]
        assert cat.sql("SELECT is_suppressed FROM images WHERE id = ?", [victim]).to_pylist()[0]["is_suppressed"] is False
        # "keep this one too" is a judgment: this pair (the image and its master) is not the same for this user
        master = cat.scalar("SELECT master_id FROM run_members WHERE run_id = ? AND image_id = ?",
                            [catalog["run_id"], victim])
        judged = cat.sql("SELECT a, b, same, source FROM judgments").to_pylist()
        assert judged == [dict(a=min(victim, master), b=max(victim, master), same=False, source="review:keep")]
    # undo
    r = client.post("/actions/override/remove", data={"image_id": victim, "kind": "keep", "csrf": t},
                    follow_redirects=False)
    assert r.status_code == 303
    with check_catalog(catalog, client) as cat:
        assert cat.sql("SELECT is_suppressed FROM images WHERE id = ?", [victim]).to_pylist()[0]["is_suppressed"] is True
        # "undo keep" restores exactly the state before the keep: no override, no judgment
        assert cat.overrides()["keep"] == set()
        assert cat.scalar("SELECT count(*) FROM judgments") == 0


@pytest.mark.parametrize("kind", ["keep", "master", "not_duplicate"])
def test_undo_on_the_group_page_restores_exactly_the_state_before(client: TestClient, catalog: dict, kind: str) -> None:
    """"undo keep" (and master, not-a-duplicate) right after the decision: every table a decision touches,
    and the whole visible view, are as they were before it (a later undo of an older decision withdraws it)."""
    from test_group_review import snapshot

    t = token(client)
    victim = _suppressed_member(client, catalog)
    with check_catalog(catalog, client) as cat:
        before = snapshot(cat)
    r = client.post("/actions/override", data={"image_id": victim, "kind": kind, "csrf": t}, follow_redirects=False)
    assert r.status_code == 303
    with check_catalog(catalog, client) as cat:
        assert snapshot(cat) != before
    r = client.post("/actions/override/remove", data={"image_id": victim, "kind": kind, "csrf": t}, follow_redirects=False)
    assert r.status_code == 303
    with check_catalog(catalog, client) as cat:
        assert snapshot(cat) == before


def test_redirects_stay_on_site(client: TestClient, catalog: dict) -> None:
    t = token(client)
    victim = _suppressed_member(client, catalog)
    for nxt in ("//evil.example/x", "https://evil.example/", "\\\\evil.example", "javascript:alert(1)"):
        r = client.post("/actions/override", data={"image_id": victim, "kind": "keep", "csrf": t, "next": nxt},
                        follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/?"), nxt


def test_foreign_host_header_is_refused(client: TestClient, catalog: dict) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the catalog."""
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example"):
        r = client.get("/groups", headers={"Host": host})
        assert r.status_code == 400, host
        assert "group" not in r.text.lower()
    for host in ("localhost:8765", "127.0.0.1", "[::1]:8765"):
        assert client.get("/runs", headers={"Host": host}).status_code == 200, host
    anywhere = create_app(catalog["db"], idle_close_s=0, allowed_hosts=["*"])
    with TestClient(anywhere, base_url="http://192.168.1.20:8765") as c:
        assert c.get("/runs").status_code == 200
    anywhere.state.holder.close()


def test_master_and_not_duplicate_survive_a_reapply(client: TestClient, catalog: dict) -> None:
    t = token(client)
    with check_catalog(catalog, client) as cat:
        rows = cat.run_members(catalog["run_id"]).to_pylist()
    g2 = [r for r in rows if r["group_id"] == 2]
    new_master = next(r["image_id"] for r in g2 if not r["is_master"])
    loner = next(r["image_id"] for r in rows if r["group_id"] == 3 and not r["is_master"])
    for image_id, kind in ((new_master, "master"), (loner, "not_duplicate")):
        r = client.post("/actions/override", data={"image_id": image_id, "kind": kind, "csrf": t}, follow_redirects=False)
        assert r.status_code == 303
    r = client.post(f"/runs/{catalog['run_id']}/reapply", data={"csrf": t}, follow_redirects=False)
    assert r.status_code == 303
    with check_catalog(catalog, client) as cat:
        old = cat.run(catalog["run_id"])
        new_id = cat.latest_run_id("applied")
        new = cat.run(new_id)
        members = {r["image_id"]: r for r in cat.run_members(new_id).to_pylist()}
    assert old["status"] == "replaced" and old["replaced_by"] == new_id != catalog["run_id"]
    assert members[new_master]["is_master"] is True
    lone_group = members[loner]["group_id"]
    assert sum(1 for r in members.values() if r["group_id"] == lone_group) == 1
    assert new["summary"]["overrides_respected"]["master"] == 1
    assert new["summary"]["overrides_respected"]["not_duplicate"] == 1
    html = re.sub(r"\s+", " ", client.get("/").text)
    assert "It respected your decisions: 0 kept, 1 masters, 1 not duplicates" in html


def test_make_master_flips_visibility_at_once(client: TestClient, catalog: dict) -> None:
    t = token(client)
    with check_catalog(catalog, client) as cat:
        rows = cat.run_members(catalog["run_id"]).to_pylist()
    g2 = [r for r in rows if r["group_id"] == 2]
    old = next(r["image_id"] for r in g2 if r["is_master"])
    new = next(r["image_id"] for r in g2 if not r["is_master"])
    r = client.post("/actions/override", data={"image_id": new, "kind": "master", "csrf": t}, follow_redirects=False)
    assert r.status_code == 303
    with check_catalog(catalog, client) as cat:
        vis = {x[0] for x in cat.con.execute("SELECT id FROM visible").fetchall()}
        assert cat.run(catalog["run_id"])["status"] == "applied"       # no re-run, no restore needed
        now = {x["image_id"]: x for x in cat.run_members(catalog["run_id"]).to_pylist()}
    assert new in vis and old not in vis and now[new]["is_master"] and now[old]["master_id"] == new


def test_restore_one_and_all(client: TestClient, catalog: dict) -> None:
    t = token(client)
    r = client.post(f"/runs/{catalog['run_id']}/restore", data={"csrf": t}, follow_redirects=False)
    assert r.status_code == 303
    with check_catalog(catalog, client) as cat:
        assert cat.run(catalog["run_id"])["status"] == "restored"
        assert cat.sql("SELECT count(*) AS n FROM images WHERE is_suppressed").to_pylist()[0]["n"] == 0
        dedup(cat, 0.99)
        assert cat.sql("SELECT count(*) AS n FROM images WHERE is_suppressed").to_pylist()[0]["n"] > 0
    # restoring a restored run is a conflict, not a crash
    r = client.post(f"/runs/{catalog['run_id']}/restore", data={"csrf": t})
    assert r.status_code == 409 and "already restored" in r.text
    r = client.post("/runs/restore-all", data={"csrf": t}, follow_redirects=False)
    assert r.status_code == 303
    with check_catalog(catalog, client) as cat:
        assert cat.sql("SELECT count(*) AS n FROM images WHERE is_suppressed").to_pylist()[0]["n"] == 0
        assert all(r["status"] == "restored" for r in cat.runs())


# -- malformed requests ----------------------------------------------------------------------

@pytest.mark.parametrize("method,url,data,expected", [
    ("get", "/groups/abc", None, 400),
    ("get", "/groups/1?page=-1", None, 400),
    ("get", "/groups/1?page=abc", None, 400),
    ("get", "/groups/1?sort=drop%20table", None, 400),
    ("get", "/groups/999999", None, 404),
    ("get", "/groups/99999999999999999999999", None, 400),
    ("get", "/groups?run=99999999999999999999", None, 400),
    ("post", "/runs/99999999999999999999/restore", {"csrf": "TOKEN"}, 400),
    ("post", "/runs/0/reapply", {"csrf": "TOKEN"}, 400),
    ("get", "/groups?run=999", None, 404),
    ("get", "/groups?run=0", None, 400),
    ("get", "/thumb", None, 400),
    ("get", "/thumb?id=", None, 400),
    ("get", "/thumb?id=x&size=huge", None, 400),
    ("get", "/explore?lo=2", None, 400),
    ("get", "/explore?step=abc", None, 400),
    ("get", "/no/such/page", None, 404),
    ("post", "/actions/override", {"image_id": "img0000001", "kind": "delete", "csrf": "TOKEN"}, 400),
    ("post", "/actions/override", {"kind": "keep", "csrf": "TOKEN"}, 400),
    ("post", "/actions/override", {"image_id": "no-such-image", "kind": "keep", "csrf": "TOKEN"}, 404),
    ("post", "/runs/999/restore", {"csrf": "TOKEN"}, 404),
    ("post", "/runs/abc/restore", {"csrf": "TOKEN"}, 400),
])
def test_malformed_requests_get_4xx_not_500(client: TestClient, method: str, url: str, data: dict | None,
                                            expected: int) -> None:
    if data is not None:
        data = {k: (token(client) if v == "TOKEN" else v) for k, v in data.items()}
        r = client.post(url, data=data)
    else:
        r = client.get(url)
    assert r.status_code == expected, (url, r.status_code, r.text[:300])
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_a_locked_catalog_is_a_503_page(catalog: dict) -> None:
    """Another process holding the catalog for longer than a request waits gives a clear 503, not a crash."""
    import subprocess
    import sys
    import time

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, duckdb; c = duckdb.connect(sys.argv[1]); "
                               "print('ready', flush=True); time.sleep(30)", str(catalog["db"])],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        app = create_app(catalog["db"], idle_close_s=0, lock_wait_s=0.5)
        with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
            t0 = time.monotonic()
            r = c.get("/groups")
        assert r.status_code == 503 and "in use" in r.text
        assert time.monotonic() - t0 >= 0.45  # it waited for the holder first
    finally:
        holder.kill()
        holder.wait()
        time.sleep(0.1)


# -- static report ---------------------------------------------------------------------------

def test_static_report_is_self_contained_and_escaped(catalog: dict, tmp_path: Path) -> None:
    with Catalog(catalog["db"]) as cat:
        out = write_report(cat, tmp_path / "out" / "report.html", max_groups=5, members_per_group=600)
        n_groups = cat.run(catalog["run_id"])["n_groups"]
    html = out.read_text(encoding="utf-8")
    assert out.stat().st_size < 5_000_000
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and EVIL not in html and "<script" not in html.lower()
    assert "onerror=alert(2)>" not in html
    # nothing to fetch: only data: URIs and in-page anchors
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attr.startswith(("data:", "#")), attr
    assert "data:image/jpeg;base64," in html  # the one image with pixels is embedded
    assert f"the 5 largest of {n_groups:,}" in html
    for section in ("overview", "groups", "clusters", "explore", "runs"):
        assert f'id="{section}"' in html


def test_cli_report_and_loopback_default(catalog: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from neardup.cli import app
    from neardup.cli.review import is_loopback

    res = CliRunner().invoke(app, ["report", "--db", str(catalog["db"]), "--out", str(tmp_path / "r.html"), "--groups", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").exists() and "wrote" in res.output
    res = CliRunner().invoke(app, ["report", "--db", str(tmp_path / "missing.duckdb"), "--out", str(tmp_path / "x.html")])
    assert res.exit_code != 0 and not (tmp_path / "x.html").exists()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    import inspect

    from neardup.cli.review import review
    assert inspect.signature(review).parameters["host"].default == "127.0.0.1"


# -- other catalog states --------------------------------------------------------------------

def test_pages_work_without_runs_and_without_embeddings(tmp_path: Path) -> None:
    col = seed_shaped(300, seed=1)
    with_vectors = tmp_path / "v.duckdb"
    with Catalog(with_vectors) as cat:
        import_embeddings(cat, col.vectors, col.ids, meta=col.meta_table())
    empty = tmp_path / "e.duckdb"
    Catalog(empty).close()
    for db in (with_vectors, empty):
        app = create_app(db, idle_close_s=0)
        with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
            for url in ("/", "/groups", "/clusters", "/explore", "/runs"):
                r = c.get(url)
                assert r.status_code == 200, (db.name, url, r.text[:300])
            assert "No dedup run yet" in c.get("/groups").text
            assert c.get("/groups/1").status_code == 404
        app.state.holder.close()
    with Catalog(empty) as cat:
        out = write_report(cat, tmp_path / "empty.html")
    assert "No dedup run yet" in out.read_text()


def test_leader_mode_groups_have_no_weakest_link(catalog: dict) -> None:
    with Catalog(catalog["db"]) as cat:
        run_id = dedup(cat, 0.98, mode="leader").run_id
    app = create_app(catalog["db"], idle_close_s=0)
    with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        r = c.get(f"/groups/1?run={run_id}")
        assert r.status_code == 200 and "Weakest link holding" not in r.text
        assert "(leader)" in r.text
    app.state.holder.close()


def test_idle_server_lets_another_process_dedup_and_decisions_survive(catalog: dict) -> None:
    """The app lets go of the catalog when idle, so a CLI run can write; a kept image stays visible after it."""
    import subprocess
    import sys
    import time

    app = create_app(catalog["db"], idle_close_s=0.3)
    with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        t = token(c)
        html = c.get("/groups/1?sort=id").text
        victim = re.findall(r'data-image-id="(img[0-9]+)"', html)[-1]
        r = c.post("/actions/override", data={"image_id": victim, "kind": "keep", "csrf": t}, follow_redirects=False)
        assert r.status_code == 303
        time.sleep(1.0)
        code = ("import sys; from neardup.catalog import Catalog; from neardup.dedup import dedup\n"
                "with Catalog(sys.argv[1]) as cat:\n"
                "    cat.restore(None); s = dedup(cat, 0.97).summary; print(s['run_id'], s['overrides_respected']['keep'])")
        out = subprocess.run([sys.executable, "-c", code, str(catalog["db"])], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        new_run, kept = map(int, out.stdout.split())
        assert kept == 1
        page = c.get("/groups").text
        assert f"run {new_run} (applied)" in page
        with app.state.holder.open() as cat:
            assert cat.sql("SELECT is_suppressed FROM images WHERE id = ?", [victim]).to_pylist()[0]["is_suppressed"] is False
    app.state.holder.close()


def test_large_collections_use_the_cached_pass_for_the_sweep(catalog: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above SWEEP_AUTO_MAX the overview never starts a similarity pass: it uses the cached one or says how."""
    import shutil

    from neardup.review import data as D

    monkeypatch.setattr(D, "SWEEP_AUTO_MAX", 10)
    forests = catalog["db"].with_name(catalog["db"].name + ".d") / "forests"
    assert sorted(p.name.rsplit("-f", 1)[1] for p in forests.glob("*.npz")) == ["0.980000.state.npz"]
    app = create_app(catalog["db"], idle_close_s=0)
    with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        html = re.sub(r"\s+", " ", c.get("/").text)
        assert "limited to 0.98–1.00" in html
        shown = [float(t) for t in re.findall(r"<tr(?: class=\"chosen-row\")?><td>([0-9.]+)</td>", html)]
        assert shown and min(shown) >= 0.98 and 0.98 in shown
        with Catalog(catalog["db"]) as cat:  # the numbers are the library's own sweep
            want = {r["threshold"]: r["suppressed"] for r in __import__("neardup.sweep", fromlist=["sweep"]).sweep(cat, [0.98, 0.99])}
        for t, supp in want.items():
            assert re.search(rf"<td>{t}</td><td>[0-9,]+</td><td>[0-9,]+</td><td>{supp:,}</td>", html), t
        app.state.holder.close()
        shutil.rmtree(forests)
        html = c.get("/").text
        assert "run `neardup sweep --thresholds 0.95,1.0` once" in html and 'class="chart"' not in html
        assert not forests.exists() or not list(forests.glob("*.npz"))
    app.state.holder.close()


def test_explorer_pairs_are_real_pairs_in_their_band(client: TestClient, catalog: dict) -> None:
    """Every sampled pair's similarity is the vectors' dot product, inside its band; the grouped/apart tag is the run's."""
    import html as htmlmod

    text = client.get("/explore?per_band=4").text
    sections = re.split(r'<section class="card band', text)[1:]
    assert len(sections) == 5
    with check_catalog(catalog, client) as cat:
        es = cat.load_embeddings()
        row = {k: i for i, k in enumerate(es.ids.tolist())}
        group = {r["image_id"]: r["group_id"] for r in cat.run_members(catalog["run_id"]).to_pylist()}
    n_pairs = 0
    for sec in sections:
        lo, hi = map(float, re.search(r"<h2>([0-9.]+) – ([0-9.]+)", sec).groups())
        for a, sim, tag, b in re.findall(
                r'<div class="pair">.*?<div class="cap id" title="([^"]*)">.*?<div class="pair-sim">([0-9.]+)'
                r'(?:<br><span class="tag [^"]*" title="[^"]*">(grouped|apart)</span>)?</div>.*?'
                r'<div class="cap id" title="([^"]*)">', sec, flags=re.S):
            a, b = htmlmod.unescape(a), htmlmod.unescape(b)
            true = float(np.dot(es.vectors[row[a]], es.vectors[row[b]]))
            assert abs(true - float(sim)) < 1e-4
            assert lo - 1e-6 <= true < hi + 1e-6
            assert tag == ("grouped" if group[a] == group[b] else "apart")
            n_pairs += 1
    assert n_pairs >= 8


def test_junk_input_never_gets_a_500(client: TestClient) -> None:
    """Random junk in every parameter of every route: always an answer below 500, never a traceback."""
    rng = np.random.default_rng(7)
    alphabet = list("abc019-_./%\\'\"<>&;:#?=+ ") + ["é", "\u202e", "\x00", "../", "%00", "%2e%2e%2f", "\ud800"]
    t = token(client)

    def junk() -> str:
        return "".join(rng.choice(alphabet) for _ in range(int(rng.integers(0, 12))))

    for _ in range(30):
        j = junk()
        for method, url, params, data in (
            ("get", "/groups", {"run": j, "page": j}, None),
            ("get", "/groups/1", {"run": j, "page": j, "sort": j}, None),
            ("get", "/thumb", {"id": j, "size": j}, None),
            ("get", "/explore", {"lo": j, "step": j, "per_band": j, "seed": j}, None),
            ("get", "/groups/" + urllib_quote(j), None, None),
            ("post", "/actions/override", None, {"image_id": j, "kind": j, "csrf": t, "next": j}),
            ("post", "/actions/override", None, {"image_id": j, "kind": "keep", "csrf": t, "next": j}),
            ("post", "/actions/override/remove", None, {"image_id": j, "kind": "keep", "csrf": t, "next": j}),
            ("post", "/runs/" + urllib_quote(j) + "/restore", None, {"csrf": t}),
        ):
            try:
                r = client.get(url, params=params) if method == "get" else client.post(url, data=data, follow_redirects=False)
            except UnicodeEncodeError:  # the client itself cannot send a lone surrogate
                continue
            assert r.status_code < 500, (method, url, params, data, r.status_code)
            assert "Traceback" not in r.text


def urllib_quote(s: str) -> str:
    import urllib.parse

    return urllib.parse.quote(s.encode("utf-8", "surrogatepass"), safe="")


def test_clusters_page_before_after_per_cluster(catalog: dict) -> None:
    """Before/after per cluster equal the images table's own counts; strips show only visible images."""
    from neardup.cluster import cluster

    with Catalog(catalog["db"]) as cat:
        cluster(cat, k=4, seed=0)
        want = {r["cluster_id"]: (r["before"], r["after"]) for r in cat.sql(
            "SELECT cluster_id, count(*) AS before, sum(CASE WHEN is_suppressed THEN 0 ELSE 1 END) AS after "
            "FROM images GROUP BY cluster_id").to_pylist()}
        visible = set(cat.sql("SELECT id FROM visible").column(0).to_pylist())
    app = create_app(catalog["db"], idle_close_s=0)
    with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        html = re.sub(r"\s+", " ", c.get("/clusters").text)
    app.state.holder.close()
    rows = re.findall(r'<td class="cid"><a href="/clusters/\d+"[^>]*>(\d+)</a></td><td>([0-9,]+)</td><td><strong>([0-9,]+)</strong></td>', html)
    assert {int(a): (int(b.replace(",", "")), int(c_.replace(",", ""))) for a, b, c_ in rows} == want
    import html as htmlmod
    strip_ids = [htmlmod.unescape(x) for x in re.findall(r'<div class="thumb placeholder[^"]*" title="[^"]*"><span>([^<]*)</span>', html)]
    assert strip_ids and set(strip_ids) <= visible


def test_cli_review_serves_on_loopback_and_prints_the_url(catalog: dict) -> None:
    """`neardup review --port 0 --no-browser` prints a 127.0.0.1 URL that serves the pages."""
    import subprocess
    import sys
    import time
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "neardup", "review", "--db", str(catalog["db"]), "--port", "0",
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:(\d+)/)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        url = m.group(1)
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "runs", timeout=5) as r:
                    assert r.status == 200 and b"Runs &amp; decisions" in r.read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("server did not answer")
    finally:
        proc.terminate()
        proc.wait(10)
