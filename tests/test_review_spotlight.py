"""Compare (side by side + difference view) and the cluster spotlight pages, over HTTP."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from neardup import Catalog
from neardup.review import create_app
from test_group_review import planted


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from neardup.cluster import cluster

    tmp = tmp_path_factory.mktemp("spot")
    db = tmp / "cat.duckdb"
    run, vec = planted(db, n_groups=12)
    rng = np.random.default_rng(0)
    ids = sorted(vec)
    paths = {}
    for k, i in enumerate(ids):
        p = tmp / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(p)
        paths[i] = str(p)
    paths[ids[1]] = paths[ids[0]]            # two ids, one file: their difference is black
    with Catalog(db) as cat:
        cat.upsert_images(pa.table({"id": ids, "path": [paths[i] for i in ids]}))
        cluster(cat, 3, seed=0)
    client = TestClient(create_app(db, idle_close_s=0), base_url="http://127.0.0.1")
    return dict(db=db, run=run, vec=vec, ids=ids, client=client)


def test_compare_shows_both_and_their_similarity(setup):
    a, b = "g00_0", "g00_1"
    r = setup["client"].get("/compare", params={"a": a, "b": b, "run": setup["run"], "group": 1})
    assert r.status_code == 200
    assert a in r.text and b in r.text and 'id="toggle-diff"' in r.text
    sim = float(re.search(r"similarity (\d\.\d{4})", r.text).group(1))
    assert sim == pytest.approx(float(setup["vec"][a] @ setup["vec"][b]), abs=6e-5)
    r = setup["client"].get("/compare", params={"a": a, "b": b, "diff": 1})
    assert 'id="diff-img"' in r.text
    assert setup["client"].get("/compare", params={"a": a, "b": "nope"}).status_code == 404


def test_difference_image_is_black_for_one_file_and_not_for_two(setup):
    ids = setup["ids"]
    same = setup["client"].get("/diff", params={"a": ids[0], "b": ids[1]})
    other = setup["client"].get("/diff", params={"a": ids[0], "b": ids[2]})
    assert same.headers["content-type"] == "image/jpeg" and other.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(same.content))).max() <= 8          # JPEG noise at most
    assert np.asarray(Image.open(io.BytesIO(other.content))).max() >= 128


def test_cluster_spotlight_lists_exactly_its_groups(setup):
    with setup["client"].app.state.holder.open() as cat:   # the app holds the catalog open
        rows = cat.sql("""SELECT m.group_id, i.cluster_id FROM run_members m JOIN images i ON i.id = m.image_id
                          WHERE m.run_id = ?""", [setup["run"]]).to_pylist()
        sizes = dict(cat.con.execute("SELECT group_id, count(*) FROM run_members WHERE run_id = ? GROUP BY 1",
                                     [setup["run"]]).fetchall())
    clusters = sorted({r["cluster_id"] for r in rows})
    page = setup["client"].get("/clusters").text
    for c in clusters:
        assert f'href="/clusters/{c}"' in page
        expected = {r["group_id"] for r in rows if r["cluster_id"] == c and sizes[r["group_id"]] >= 2}
        html = setup["client"].get(f"/clusters/{c}").text
        shown = {int(g) for g in re.findall(r'<li class="card" data-group="(\d+)"', html)}
        assert shown == expected
    assert setup["client"].get("/clusters/999").status_code == 404
