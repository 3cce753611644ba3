"""The result of a similarity pass is a function of the vectors alone.

Checked against an exact integer reference (tests/reference.py) with vectors built to sit on
histogram bin edges and thresholds, and across block shapes, thread counts, tilings and BLAS
kernels (``OPENBLAS_CORETYPE=Haswell`` and unset, each in a fresh process: OpenBLAS reads the
variable when numpy loads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import GRID, all_pair_sims, grid_ints, reference_groups, same_partition

from neardup.similarity.canonical import canonical_vectors, is_canonical
from neardup.similarity.exact import exact_forest
from neardup.similarity.forest import hist_bins, hist_edges

ONE = GRID * GRID  # a similarity of 1 in units of 2**-22


def reference_hist(K: np.ndarray, floor: float) -> np.ndarray:
    """Histogram by exact rational comparisons: bin b holds floor + b/1e5 <= s < floor + (b+1)/1e5."""
    F = Fraction(floor).limit_denominator(10**5)
    assert F == Fraction(round(floor * 10**5), 10**5), "test floors have five decimals"
    S = K @ K.T
    iu = np.triu_indices(len(K), 1)
    hist = np.zeros(hist_bins(floor), dtype=np.int64)
    for s in S[iu].tolist():
        v = min(Fraction(s, ONE), Fraction(1))  # similarities above 1 count as 1, like the engine
        if v < F:
            continue
        b = int((v - F) * 10**5)  # exact floor of a rational
        hist[min(b, len(hist) - 1)] += 1
    return hist


def pair_vectors(targets: list[int], rng: np.random.Generator, dim_per: int = 3) -> np.ndarray:
    """For each target T (in units of 2**-22), an anchor and a partner with dot exactly T.

    Pair p lives in its own 3-d subspace, so pairs from different subspaces have similarity 0.
    The anchor is (a, b, 0); the partner (c, e, f) solves a*c + b*e = T with f making it unit.
    """
    n = len(targets)
    K = np.zeros((2 * n, dim_per * n), dtype=np.int64)
    for p, T in enumerate(targets):
        for _ in range(10_000):
            ang = rng.uniform(0.2, 1.3)
            a, b = int(round(GRID * np.cos(ang))), int(round(GRID * np.sin(ang)))
            if a * a + b * b > ONE or np.gcd(a, b) != 1:
                continue
            # a*c + b*e = T: c = c0 + b*k, e = e0 - a*k (extended Euclid), pick k near the target angle
            g, x0, y0 = _egcd(a, b)
            c0, e0 = x0 * T, y0 * T
            rho = T / np.hypot(a, b)  # |(c, e)| for a partner in the (a, b) plane
            want_c = rho * a / np.hypot(a, b)
            k = int(round((want_c - c0) / b))
            c, e = c0 + b * k, e0 - a * k
            rest = ONE - c * c - e * e
            if rest < 0:
                continue
            f = int(round(np.sqrt(rest)))
            if abs(c * c + e * e + f * f - ONE) > 4 * GRID:
                continue
            K[2 * p, dim_per * p:dim_per * p + 3] = (a, b, 0)
            K[2 * p + 1, dim_per * p:dim_per * p + 3] = (c, e, f)
            assert a * c + b * e == T
            break
        else:  # pragma: no cover - the search always succeeds for these targets
            raise AssertionError(f"no partner for {T}")
    return K


def _egcd(a: int, b: int) -> tuple[int, int, int]:
    if b == 0:
        return a, 1, 0
    g, x, y = _egcd(b, a % b)
    return g, y, x - (a // b) * y


# thresholds a user types, and values that are both on the grid and on the 1e-5 lattice
EDGE_VALUES = [0.5, 0.90625, 0.96875, 0.98, 0.99, 0.995]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), offsets=st.lists(st.integers(-2, 2), min_size=3, max_size=8),
       floor=st.sampled_from([0.5, 0.9, 0.96875]))
def test_pairs_on_bin_edges_and_thresholds(seed, offsets, floor):
    rng = np.random.default_rng(seed)
    values = [EDGE_VALUES[i % len(EDGE_VALUES)] for i in range(len(offsets))]
    # exactly on a value, or one or two grid steps (2**-22) beside it
    targets = [int(np.ceil(v * ONE)) + off for v, off in zip(values, offsets)]
    K = pair_vectors(targets, rng)
    X = (K / GRID).astype(np.float32)
    assert is_canonical(X) and np.array_equal(grid_ints(X), K)
    f = exact_forest(X, floor, block_rows=3, col_chunk=5)
    assert np.array_equal(f.hist, reference_hist(K, floor))
    S = all_pair_sims(X)
    iu = np.triu_indices(len(X), 1)
    for t in sorted({*EDGE_VALUES, *(T / ONE for T in targets)}):
        if t < floor or t > 1.0:
            continue
        want = int((S[iu] >= t).sum())
        labels, _ = reference_groups(X, t)
        assert same_partition(f.components(t), labels), t
        if t in EDGE_VALUES:  # five-decimal thresholds are bin edges: exact pair counts
            assert f.pair_count(t) == want, t


def test_canonical_rounding_is_idempotent_and_bounded():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 512))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    C = canonical_vectors(X)
    assert canonical_vectors(C) is C and not is_canonical(X) and is_canonical(C)
    assert np.abs(C - X).max() <= 2.0**-12
    # the similarity a user sees moves by ~1e-4: far below any threshold's resolution
    d = all_pair_sims(X) - X.astype(np.float64) @ X.astype(np.float64).T
    assert np.abs(d).max() < 2e-3 and d.std() < 3e-4
    with pytest.raises(ValueError, match="row 1"):
        canonical_vectors(np.array([[1, 0], [np.nan, 0]], np.float32))


ENGINE_SCRIPT = r"""
import hashlib, json, sys
import numba
import numpy as np
from neardup.similarity.exact import exact_forest
from neardup.distributed.tiles import tile_forest, upper_tiles
from neardup.similarity.canonical import canonical_vectors
from neardup.similarity.forest import SimilarityForest, merge_forests
from neardup.synthetic import seed_shaped

X = canonical_vectors(seed_shaped(2500, 96, seed=7).vectors)
ts = [0.95, 0.97, 0.98, 0.99]
out = {}
def digest(f):
    return {"hist": hashlib.sha256(f.hist.tobytes()).hexdigest(),
            "weights": hashlib.sha256(np.sort(f.weight).tobytes()).hexdigest(),
            "pairs": [f.pair_count(t) for t in ts],
            "labels": [hashlib.sha256(f.components(t).tobytes()).hexdigest() for t in ts]}
for threads in (1, 2):
    numba.set_num_threads(threads)
    for br, cc in ((2048, 8192), (300, 700), (97, 1000)):
        out[f"exact t{threads} {br}x{cc}"] = digest(exact_forest(X, 0.95, block_rows=br, col_chunk=cc))
tiles = [SimilarityForest(len(X), s, d, w, 0.95, h)
         for s, d, w, h in (tile_forest(X, 0.95, r, c, block_rows=256, col_chunk=512)
                            for r, c in upper_tiles(len(X), 700, 1400))]
out["tiles 700x1400"] = digest(merge_forests(tiles, len(X)))
print(json.dumps(out))
"""


def _engine_digests(coretype: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_same_result_across_blas_kernels_blocks_threads_and_tiles():
    from neardup.synthetic import seed_shaped

    runs = {"unset": _engine_digests(None), "Haswell": _engine_digests("Haswell")}
    every = [d for r in runs.values() for d in r.values()]
    assert len(every) == 2 * 7
    assert all(d == every[0] for d in every), {k: v for k, v in runs["unset"].items()}
    # and it is the reference's answer
    X = seed_shaped(2500, 96, seed=7).vectors
    S = all_pair_sims(X)
    iu = np.triu_indices(len(X), 1)
    assert every[0]["pairs"] == [int((S[iu] >= t).sum()) for t in (0.95, 0.97, 0.98, 0.99)]


def test_a_catalog_from_before_canonical_vectors_gives_the_same_result(tmp_path):
    """Vectors stored unrounded (an older neardup) are rounded when read, and on the next write."""
    from neardup import Catalog
    from neardup.dedup import dedup
    from neardup.ingest import import_embeddings
    from neardup.synthetic import seed_shaped

    c = seed_shaped(600, 32, seed=3)
    results = []
    for legacy in (False, True):
        with Catalog(tmp_path / f"{legacy}.duckdb") as cat:
            import_embeddings(cat, c.vectors, c.ids)
            if legacy:  # overwrite the stored file with the unrounded unit vectors
                name = cat.scalar("SELECT file FROM embedding_sets")
                np.save(cat.sidecar / "embeddings" / name, c.vectors)
                assert not is_canonical(cat.load_embeddings().vectors)
            res = dedup(cat, 0.97, dry_run=True)
            results.append(sorted(zip(res.members["image_id"].to_pylist(), res.members["master_id"].to_pylist(),
                                      res.members["sim_to_master"].to_pylist())))
            if legacy:
                import_embeddings(cat, c.vectors[:1] * 3, ["extra"])
                assert is_canonical(cat.load_embeddings().vectors)
    assert results[0] == results[1]
