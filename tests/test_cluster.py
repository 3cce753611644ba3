"""k-means labelling, per-cluster before/after, and sweeps scoped to one cluster.

References are independent: numpy argmax against the stored centroids, counts recomputed from
an exported CSV with the csv module, and a sweep over a cluster's vectors imported alone.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from neardup.catalog import Catalog
from neardup.cluster import (FIRST_CLUSTER_ID, centroids_path, cluster, cluster_ids, cluster_table, clusterings,
                             get_clustering, kmeans)
from neardup.dedup import dedup, export_run
from neardup.errors import InputError
from neardup.ingest import import_embeddings
from neardup.sweep import sweep
from neardup.synthetic import seed_shaped

N = 2000


@pytest.fixture(scope="module")
def col():
    return seed_shaped(N, seed=3)


@pytest.fixture(scope="module")
def cat(tmp_path_factory, col):
    path = tmp_path_factory.mktemp("cl") / "cat.duckdb"
    c = Catalog(path)
    import_embeddings(c, col.vectors, col.ids, meta=col.meta_table())
    cluster(c, 25, seed=0)
    yield c
    c.close()


def _labels(cat: Catalog) -> dict[str, int]:
    return {r[0]: r[1] for r in cat.con.execute("SELECT id, cluster_id FROM images").fetchall()}


def test_sizes_sum_to_collection_and_are_ordered(cat, col):
    lab = _labels(cat)
    assert len(lab) == N and all(v is not None for v in lab.values())
    counts = Counter(lab.values())
    c = get_clustering(cat)
    assert sum(c.sizes) == N == c.n_images
    assert [counts[i] for i in range(FIRST_CLUSTER_ID, FIRST_CLUSTER_ID + 25)] == c.sizes
    assert c.sizes == sorted(c.sizes, reverse=True)
    assert sum(len(cluster_ids(cat, i)) for i in range(25)) == N


def test_assignment_is_nearest_stored_centroid(cat, col):
    cent = np.load(centroids_path(cat, get_clustering(cat).id)).astype(np.float64)
    want = (col.vectors.astype(np.float64) @ cent.T).argmax(axis=1) + FIRST_CLUSTER_ID
    lab = _labels(cat)
    got = np.array([lab[i] for i in col.ids])
    assert (got == want).mean() > 0.999  # float32 vs float64 rounding may flip exact ties only


def test_well_separated_blobs_are_recovered_and_numbered_by_size():
    rng = np.random.default_rng(5)
    sizes = [50, 400, 120, 300, 200]
    centers = rng.standard_normal((5, 64))
    X = np.concatenate([centers[i] + 0.05 * rng.standard_normal((s, 64)) for i, s in enumerate(sizes)])
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    truth = np.repeat(np.arange(5), sizes)
    perm = rng.permutation(len(X))
    res = kmeans(X[perm], 5, seed=1)
    by_size = np.argsort(sizes)[::-1]  # planted blob index of cluster 0, 1, ...
    assert (res.labels - FIRST_CLUSTER_ID == np.argsort(by_size)[truth[perm]]).all()
    assert res.sizes.tolist() == sorted(sizes, reverse=True)


def test_deterministic_and_reclustering_is_a_new_labelling(tmp_path, col):
    c = Catalog(tmp_path / "d.duckdb")
    import_embeddings(c, col.vectors, col.ids)
    a = cluster(c, 8, seed=7)
    first = _labels(c)
    b = cluster(c, 8, seed=7)
    assert _labels(c) == first and a.sizes == b.sizes and a.id != b.id
    cluster(c, 5, seed=1)
    assert get_clustering(c).k == 5 and [x.is_current for x in clusterings(c)] == [False, False, True]
    # the first labelling is still readable, unchanged
    old = dict(c.con.execute("SELECT image_id, cluster_id FROM cluster_members WHERE clustering_id = ?", [a.id]).fetchall())
    assert old == first
    assert cluster_ids(c, 0, clustering=a.id) == sorted(k for k, v in first.items() if v == 0)
    c.close()


def test_errors(tmp_path, col, cat):
    c = Catalog(tmp_path / "e.duckdb")
    import_embeddings(c, col.vectors[:10], col.ids[:10])
    with pytest.raises(InputError, match="no clusters yet"):
        cluster_ids(c, 0)
    with pytest.raises(InputError, match="more than"):
        cluster(c, 11)
    with pytest.raises(InputError, match=">= 1"):
        cluster(c, 0)
    with pytest.raises(InputError, match="does not exist"):
        cluster_ids(cat, 25)
    c.close()


def _from_export(path: Path, labels: dict[str, int]) -> dict[int, dict[str, int]]:
    """Brute-force per-cluster counts from an exported run (csv module only)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    gsize = Counter(r["group_id"] for r in rows if r["group_id"])  # no group id: an image with no duplicate
    assert all(int(r["group_size"]) == (gsize[r["group_id"]] if r["group_id"] else 1) for r in rows)
    run_supp = {r["image_id"]: r["is_suppressed"].lower() == "true" for r in rows}
    per: dict[int, dict] = defaultdict(lambda: dict(images=0, suppressed=0, members=Counter()))
    for img, cl in labels.items():
        per[cl]["images"] += 1
        per[cl]["suppressed"] += run_supp.get(img, False)
    for r in rows:
        if r["group_id"] and gsize[r["group_id"]] >= 2:
            per[labels[r["image_id"]]]["members"][r["group_id"]] += 1
    return {cl: dict(images=v["images"], unique=v["images"] - v["suppressed"], groups=len(v["members"]),
                     largest_group=max(v["members"].values(), default=0)) for cl, v in per.items()}


def test_before_after_matches_export(tmp_path, col):
    c = Catalog(tmp_path / "r.duckdb")
    import_embeddings(c, col.vectors, col.ids, meta=col.meta_table())
    cluster(c, 10, seed=2)
    labels = _labels(c)
    run1 = dedup(c, 0.98).run_id
    export_run(c, run1, tmp_path / "run1.csv")
    want = _from_export(tmp_path / "run1.csv", labels)
    for tab in (cluster_table(c, run1), cluster_table(c)):  # the run's decisions == the catalog state now
        assert len(tab) == 10
        for row in tab:
            w = want.get(row["cluster"], dict(images=0, unique=0, groups=0, largest_group=0))
            assert {k: row[k] for k in w} == w, row["cluster"]
        assert tab.total["images"] == N
    assert cluster_table(c).total["unique"] == N - int(c.sql("SELECT count(*) FROM images WHERE is_suppressed").column(0)[0].as_py())
    # a second run scoped to one cluster; run 1 still reads back as it was
    ids2 = cluster_ids(c, 3)
    c.restore(run1)
    run2 = dedup(c, 0.95, ids=ids2).run_id
    export_run(c, run2, tmp_path / "run2.csv")
    want2 = _from_export(tmp_path / "run2.csv", labels)
    tab2 = cluster_table(c, run2)
    for row in tab2:
        w = want2[row["cluster"]]
        assert {k: row[k] for k in w} == w
        if row["cluster"] != 3:
            assert row["unique"] == row["images"] and row["groups"] == 0
    for row in cluster_table(c, run1):
        w = want[row["cluster"]]
        assert {k: row[k] for k in w} == w
    # catalog state after restoring everything: nothing suppressed
    c.restore()
    assert all(r["unique"] == r["images"] for r in cluster_table(c))
    c.close()


@pytest.mark.parametrize("which", [0, 7])
def test_sweep_on_a_cluster_equals_the_cluster_alone(tmp_path, cat, col, which):
    ids = cluster_ids(cat, which)
    ts = [0.99, 0.98, 0.97, 0.95, 0.9]
    got = sweep(cat, ts, ids=ids)
    pos = {k: i for i, k in enumerate(col.ids.tolist())}
    rows = np.array([pos[i] for i in ids])
    alone = Catalog(tmp_path / f"alone{which}.duckdb")
    import_embeddings(alone, col.vectors[rows], np.asarray(ids, dtype=object))
    want = sweep(alone, ts)
    alone.close()
    assert got == want
    assert got[0]["retained"] + got[0]["suppressed"] == len(ids)


def test_cli_cluster_clusters_pairs(tmp_path, col, capsys):
    import json as _json

    from neardup.cli import main

    db = str(tmp_path / "cli.duckdb")
    c = Catalog(db)
    import_embeddings(c, col.vectors[:600], col.ids[:600], meta=col.meta_table().slice(0, 600))
    c.close()

    def run(*args: str) -> str:
        capsys.readouterr()
        try:
            main([*args, "--db", db])
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr().err
        return capsys.readouterr().out

    info = _json.loads(run("cluster", "--k", "6", "--seed", "1", "--json"))
    assert sum(info["sizes"]) == 600 and info["k"] == 6
    run("dedup", "--threshold", "0.98")
    tab = _json.loads(run("clusters", "--run", "1", "--json"))
    assert [r["cluster"] for r in tab["clusters"]] == list(range(6)) and tab["total"]["images"] == 600
    assert "browse" in run("clusters")
    pairs = _json.loads(run("pairs", "--band", "0.97:0.98", "--sample", "4", "--cluster", "0", "--json"))
    assert pairs["scope"] == "cluster 0" and len(pairs["sample"]) == min(4, pairs["pairs_in_band"])
    sheet = tmp_path / "sheet.png"
    two = _json.loads(run("pairs", "--band", "0.9:0.97,0.97:0.98", "--sample", "2", "--cluster", "0", "--json",
                          "--sheet", str(sheet)))
    assert [b["band"] for b in two] == [[0.9, 0.97], [0.97, 0.98]] and two[1] == pairs | {"sample": two[1]["sample"],
                                                                                           "seconds": two[1]["seconds"]}
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["pairs", "--band", "0.97", "--db", db])
    assert exc.value.code == 2 and "LOW:HIGH" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["clusters", "--run", "9", "--db", db])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no run 9" in err and "Traceback" not in err


def test_table_flags_images_added_after_clustering(tmp_path, col):
    c = Catalog(tmp_path / "late.duckdb")
    import_embeddings(c, col.vectors[:300], col.ids[:300])
    cluster(c, 4, seed=0)
    assert cluster_table(c).unclustered == 0 and not cluster_table(c).stale
    import_embeddings(c, col.vectors[300:350], col.ids[300:350])
    tab = cluster_table(c)
    assert tab.unclustered == 50 and tab.stale and tab.total["images"] == 300
    c.close()


def test_cli_sweep_cluster_and_plot_equal_the_cluster_alone(tmp_path, col, capsys):
    """`neardup sweep --cluster C --plot` (the core command calling cluster_ids / plot_sweep)."""
    import json as _json

    from neardup.cli import main
    from neardup.plots import SWEEP_SIZE

    db = tmp_path / "s.duckdb"
    c = Catalog(db)
    import_embeddings(c, col.vectors[:800], col.ids[:800])
    cluster(c, 5, seed=0)
    ids = cluster_ids(c, 2)
    c.close()
    alone = Catalog(tmp_path / "alone.duckdb")
    pos = {k: i for i, k in enumerate(col.ids[:800].tolist())}
    import_embeddings(alone, col.vectors[[pos[i] for i in ids]], np.asarray(ids, dtype=object))
    want = sweep(alone, [0.99, 0.98, 0.97, 0.95])
    alone.close()
    capsys.readouterr()
    try:
        main(["sweep", "--cluster", "2", "--json", "--plot", str(tmp_path / "p.png"), "--chosen", "0.98", "--db", str(db)])
    except SystemExit as exc:
        assert not exc.code
    assert _json.loads(capsys.readouterr().out) == want
    import struct

    head = (tmp_path / "p.png").read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == SWEEP_SIZE
