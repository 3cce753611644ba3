"""Example pairs in a band: only in-band pairs, exact counts vs numpy brute force, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from neardup.catalog import Catalog
from neardup.cluster import cluster, cluster_ids
from neardup.errors import InputError
from neardup.ingest import import_embeddings
from neardup.pairs import band_pairs, parse_band, sample_pairs
from neardup.synthetic import seed_shaped
from reference import all_pair_sims


@pytest.fixture(scope="module")
def col():
    return seed_shaped(2000, seed=6)


@pytest.fixture(scope="module")
def cat(tmp_path_factory, col):
    c = Catalog(tmp_path_factory.mktemp("pr") / "cat.duckdb")
    import_embeddings(c, col.vectors, col.ids, meta=col.meta_table())
    cluster(c, 10, seed=0)
    yield c
    c.close()


def brute(X: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j in the band, from the exact similarity matrix (tests/reference.py)."""
    S = all_pair_sims(X)
    i, j = np.triu_indices(len(X), 1)
    s = S[i, j]
    m = (s >= lo) & ((s < hi) if hi < 1 else True)
    return i[m], j[m], s[m]


@pytest.mark.parametrize("band", [(0.97, 0.98), (0.90, 0.95), (0.99, 1.0), (0.3, 0.6)])
def test_band_pairs_match_bruteforce(col, band):
    X = col.vectors
    lo, hi = band
    count, i, j, s = band_pairs(X, lo, hi, 50, seed=3, block_rows=300, col_chunk=700)
    bi, bj, bs = brute(X, lo, hi)
    assert count == len(bi)  # exact: no tolerance at the band edges
    assert len(i) == min(50, count)
    assert (i < j).all()
    exact = all_pair_sims(X)[i, j]
    assert np.array_equal(s.astype(np.float64), exact)
    assert ((exact >= lo) & ((exact < hi) if hi < 1 else True)).all()
    assert len(set(zip(i.tolist(), j.tolist()))) == len(i)  # no pair twice
    # the same sample whatever the blocking
    c2, i2, j2, _ = band_pairs(X, lo, hi, 50, seed=3)
    assert c2 == count and (i2 == i).all() and (j2 == j).all()


def test_sample_is_spread_over_the_band(col):
    """A bottom-k hash sample is uniform: the sampled similarities look like the band's own."""
    X = col.vectors
    _, _, bs = brute(X, 0.9, 0.99)
    _, _, _, s = band_pairs(X, 0.9, 0.99, 2000, seed=0)
    qs = [0.1, 0.5, 0.9]
    assert np.allclose(np.quantile(s, qs), np.quantile(bs, qs), atol=0.01)
    _, _, _, s_other = band_pairs(X, 0.9, 0.99, 2000, seed=1)
    assert not np.array_equal(s, s_other)


def test_count_only_and_empty_band(col):
    X = col.vectors[:300]
    c, i, j, s = band_pairs(X, 0.9, 0.95, 0)
    assert len(i) == 0 and c == len(brute(X, 0.9, 0.95)[0])
    c, i, _, _ = band_pairs(X, 0.999999, 1.0, 5)
    assert c == len(brute(X, 0.999999, 1.0)[0])


def test_sample_pairs_on_a_cluster_and_ids(cat, col):
    ids = cluster_ids(cat, 1)
    pos = {k: n for n, k in enumerate(col.ids.tolist())}
    Xc = col.vectors[[pos[i] for i in ids]]
    res = sample_pairs(cat, "0.95:0.99", 15, cluster=1, seed=2)
    assert res.scope == "cluster 1" and res.n_images == len(ids)
    assert res.in_band == len(brute(Xc, 0.95, 0.99)[0])
    members = set(ids)
    for p in res.pairs:
        assert p["a"] in members and p["b"] in members and p["a"] != p["b"]
        sim = float(all_pair_sims(col.vectors[[pos[p["a"]], pos[p["b"]]]])[0, 1])
        assert 0.95 <= sim < 0.99 and round(sim, 6) == p["sim"]  # shown to 6 decimals
        assert p["path_a"] is None and p["thumb_a"] is None
    same = sample_pairs(cat, "0.95:0.99", 15, ids=ids, seed=2)
    assert same.in_band == res.in_band and same.pairs == res.pairs
    whole = sample_pairs(cat, (0.97, 0.98), 5)
    assert whole.n_images == 2000 and whole.in_band == len(brute(col.vectors, 0.97, 0.98)[0])


def test_paths_are_reported(tmp_path, col):
    import pyarrow as pa

    c = Catalog(tmp_path / "p.duckdb")
    ids = col.ids[:200]
    meta = pa.table({"id": pa.array(ids.tolist(), pa.string()),
                     "path": pa.array([f"/photos/{i}.jpg" for i in ids], pa.string())})
    import_embeddings(c, col.vectors[:200], ids, meta=meta)
    res = sample_pairs(c, "-1:1", 5)
    assert res.in_band == 200 * 199 // 2
    assert all(p["path_a"] == f"/photos/{p['a']}.jpg" and p["path_b"] == f"/photos/{p['b']}.jpg" for p in res.pairs)
    c.close()


@pytest.mark.parametrize("text", ["0.98", "0.98:0.97", "a:b", "0.9:1.1", "-2:0.5", "0.5:0.5"])
def test_bad_band(text):
    with pytest.raises(InputError):
        parse_band(text)


def test_bad_arguments(cat):
    with pytest.raises(InputError, match="sample"):
        sample_pairs(cat, "0.9:0.95", -1)
    with pytest.raises(InputError, match="not both"):
        sample_pairs(cat, "0.9:0.95", 5, cluster=0, ids=["img0000001"])
    with pytest.raises(InputError, match="does not exist"):
        sample_pairs(cat, "0.9:0.95", 5, cluster=99)


def test_several_bands_in_one_pass(col, cat):
    from neardup.pairs import bands_pairs, sample_bands

    X = col.vectors[:800]
    bands = [(0.95, 0.97), (0.97, 0.99), (0.96, 0.98), (0.99, 1.0)]  # overlapping bands are allowed
    many = bands_pairs(X, bands, 10, seed=4, block_rows=256, col_chunk=512)
    for (lo, hi), (count, i, j, s) in zip(bands, many):
        assert count == len(brute(X, lo, hi)[0])
        one = band_pairs(X, lo, hi, 10, seed=4)
        assert one[0] == count and (one[1] == i).all() and (one[2] == j).all()
    res = sample_bands(cat, ["0.9:0.95", "0.95:1"], 3, cluster=0)
    assert [r.band for r in res] == [(0.9, 0.95), (0.95, 1.0)] and all(r.scope == "cluster 0" for r in res)
    assert res[0].pairs == sample_pairs(cat, "0.9:0.95", 3, cluster=0).pairs
