"""The int8 pre-pass (issue 14): the same exact answer as the float32 pass, on every kernel path.

Checked against the integer reference (tests/reference.py), never against the engine itself:
the error bound as a property; adversarial vectors (a coordinate near 1, pairs exactly at the
bound, pairs on histogram bin edges, near-duplicates at every threshold); every forced kernel
path gives the same histogram, forest weights and components as the reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import GRID, all_pair_sims, grid_ints, reference_groups, same_partition
from test_exactness import EDGE_VALUES, ONE, pair_vectors, reference_hist

from neardup.similarity import prepass
from neardup.similarity.canonical import canonical_vectors
from neardup.similarity.exact import exact_forest
from neardup.similarity.locality import locality_order
from neardup.similarity.ortgemm import gemm_nt, int8_gemm
from neardup.similarity.quantized import (KERNEL_ENV, LEVELS, MARGIN, PATHS, Quantized, describe_kernel, kernel_path,
                                         planned_kernel_path)
from neardup.synthetic import seed_shaped

INT8_PATHS = ("int8-vnni", "int8-7bit")


def unit_rows(A: np.ndarray) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    return canonical_vectors((A / np.linalg.norm(A, axis=1, keepdims=True)).astype(np.float32))


def exact_sims(X: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    K = grid_ints(X)
    return np.einsum("ij,ij->i", K[i], K[j]) / GRID**2


def adversarial(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Rows that stress the quantisation: one coordinate near 1, sparse, flat, heavy-tailed, near copies."""
    kinds = []
    for k in range(n):
        v = rng.standard_normal(d)
        kind = k % 6
        if kind == 0:                      # one coordinate near 1: the rest rounds to very few levels
            v = rng.standard_normal(d) * rng.uniform(0.01, 0.3) / np.sqrt(d)
            v[rng.integers(d)] = 1.0
        elif kind == 1:                    # sparse
            v[rng.random(d) < 0.9] = 0.0
            v[rng.integers(d)] += 1e-3
        elif kind == 2:                    # flat: every coordinate +-1/sqrt(d)
            v = np.sign(v) + 1e-9
        elif kind == 3:                    # heavy tails
            v = rng.standard_cauchy(d)
        elif kind == 4 and kinds:          # a near copy of an earlier row
            v = kinds[rng.integers(len(kinds))] + rng.standard_normal(d) * rng.choice([1e-3, 3e-3, 1e-2, 3e-2])
        kinds.append(v / np.linalg.norm(v))
    return unit_rows(np.array(kinds))


# ---------------------------------------------------------------------------------------------
# the kernels and the bound
# ---------------------------------------------------------------------------------------------
def test_int8_gemm_is_the_exact_integer_product():
    rng = np.random.default_rng(1)
    q_a = rng.integers(-127, 128, (70, 512))
    q_b = rng.integers(-127, 128, (90, 512))
    q_a[0], q_b[0] = 127, 127                      # the largest sums; saturation would show here
    q_a[1], q_b[1] = -127, 127
    got = int8_gemm((q_a + 128).astype(np.uint8), np.ascontiguousarray(q_b.T.astype(np.int8)))
    assert got.dtype == np.int32 and np.array_equal(got.astype(np.int64), q_a @ q_b.T)
    out = np.full((70, 90), -1, np.int32)
    assert int8_gemm((q_a + 128).astype(np.uint8), np.ascontiguousarray(q_b.T.astype(np.int8)), out=out) is out
    assert np.array_equal(out.astype(np.int64), q_a @ q_b.T)


def test_float_tile_gemm_is_exact_on_canonical_vectors():
    X = seed_shaped(700, 512, seed=2).vectors
    X = canonical_vectors(X)
    out = np.empty((300, 400), np.float32)
    gemm_nt(X[:300], X[300:], out=out)
    assert np.array_equal(out.astype(np.float64), all_pair_sims(X)[:300, 300:])


def vectors_of_kind(kind: str, rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Unit rows for the bound properties: ``gauss`` (random), ``adversarial`` (see :func:`adversarial`)
    or ``near`` (one direction plus noise of a random scale: near-duplicates at every threshold)."""
    if kind == "gauss":
        return unit_rows(rng.standard_normal((n, d)))
    if kind == "adversarial":
        return adversarial(rng, n, d)
    base = rng.standard_normal(d)
    return unit_rows(base + rng.standard_normal((n, d)) * rng.uniform(1e-3, 0.3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), d=st.sampled_from([2, 3, 16, 64, 512]), level=st.sampled_from([127, 63]),
       kind=st.sampled_from(["gauss", "adversarial", "near"]))
def test_error_bound_holds_for_every_pair(seed, d, level, kind):
    """|x.y - x^.y^| <= B(x, y) (+ MARGIN for the float32 scales) for every pair, exact reference."""
    rng = np.random.default_rng(seed)
    n = 40
    X = vectors_of_kind(kind, rng, n, d)
    Q = Quantized(X, level)
    assert np.all(np.abs(Q.codes().astype(int)) <= level)
    i, j = np.triu_indices(n, 1)
    err = np.abs(exact_sims(X, i, j) - Q.approx(i, j))
    B = Q.bound(i, j)
    assert np.all(err <= B + MARGIN)
    # and the bound is the quantisation's, not a vacuous one: |e| <= sqrt(d) * s / 2
    assert np.all(Q.ne <= np.sqrt(d) * Q.scale / 2 * (1 + 1e-6) + 1e-9)


def test_a_pair_exactly_at_the_bound_is_kept():
    """The at-bound pairs through the whole pass with floor = their exact value: kept, binned exactly."""
    X = at_bound_pairs()
    Q = Quantized(X, 127)
    i = np.arange(0, len(X), 2)
    j = i + 1
    exact = exact_sims(X, i, j)
    assert np.allclose(exact, Q.approx(i, j) + Q.bound(i, j), rtol=0, atol=1e-6)  # at the bound
    for floor in exact:
        for path in INT8_PATHS:
            f = exact_forest(X, float(floor), kernel=path, block_rows=4, col_chunk=8)
            assert f.hist.sum() == int((exact >= floor).sum())
            labels, _ = reference_groups(X, float(floor))
            assert same_partition(f.components(float(floor)), labels)


def at_bound_pairs(count: int = 6) -> np.ndarray:
    """Rows (x_0, y_0, x_1, y_1, ...), each pair in its own 2-d subspace, with x.y = x^.y^ + B exactly.

    x = (2032, 0)/2048 quantises exactly (q = (127, 0), s = 16, e_x = 0); y = (K0, K1) with K1 the
    larger coordinate, so e_y = (e0, 0): the error lies along x^ and Cauchy-Schwarz is an equality.
    """
    found = []
    for K0 in range(1200, 1440):
        K1 = int(np.floor(np.sqrt(2048**2 - K0 * K0)))
        s = K1 / 127
        if K1 > K0 and K0 - s * np.rint(K0 / s) > 0.5:   # e0 > 0: the exact value is above x^.y^
            found.append((K0, K1))
    assert len(found) >= count
    K = np.zeros((2 * count, 2 * count), np.int64)
    for p, (K0, K1) in enumerate(found[:count]):
        K[2 * p, 2 * p:2 * p + 2] = (2032, 0)
        K[2 * p + 1, 2 * p:2 * p + 2] = (K0, K1)
    return (K / GRID).astype(np.float32)


def flag(Yt, Qr, Qc, floor, d, mr, flags):
    """prepass._flag_tiles with the near-pair test's per-row terms for ``floor``, as Int8Blocks passes them.

    Rows and columns come from two Quantized; the reach D must cover both (the larger max |x|^2)."""
    D = max(Qr.reach(floor), Qc.reach(floor))
    ur = Qr.ex + D * Qr.ne.astype(np.float64)
    uc = Qc.ex + D * Qc.ne.astype(np.float64)
    flag_all(Yt, Qr.scale, ur.astype(np.float32), Qr.ne, Qc.scale, Qc.ne, (floor - MARGIN - uc).astype(np.float32),
             d, mr, flags)


def flag_all(Yt, *args):
    """prepass._flag_tiles over one whole transposed product ``Yt`` (every column tile computed, one sub-block)."""
    flags = args[-1]
    toff = (np.arange(flags.shape[1]) * 64)[None]
    prepass._flag_tiles(np.ascontiguousarray(Yt).reshape(-1), np.zeros(1, np.int64), toff, 1 << 30, *args)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), d=st.sampled_from([2, 3, 16, 64, 512]), level=st.sampled_from([127, 63]),
       kind=st.sampled_from(["gauss", "adversarial", "near"]), below=st.sampled_from([0.0, 1e-4, 1e-2, 0.3]))
def test_near_pair_bound_holds_for_every_pair_at_its_floor(seed, d, level, kind, below):
    """x.y <= near_bound(x, y, floor) (+ MARGIN) for every pair with x.y >= floor; floor = the pair's
    own exact value (the tightest reach D) or a little below it. Exact integer reference."""
    rng = np.random.default_rng(seed)
    n = 30
    X = vectors_of_kind(kind, rng, n, d)
    Q = Quantized(X, level)
    i, j = np.triu_indices(n, 1)
    exact = exact_sims(X, i, j)
    for k in range(len(i)):
        floor = exact[k] - below
        if not 0.0 < floor <= 1.0:
            continue
        nb_ = Q.near_bound(i[k:k + 1], j[k:k + 1], floor)[0]
        assert exact[k] <= nb_ + MARGIN, (k, exact[k], nb_)
    # and the reach is the one the floor allows: sqrt(2 max|x|^2 - 2 floor)
    assert Q.reach(0.98) == pytest.approx(np.sqrt(2 * (grid_ints(X) ** 2).sum(1).max() / GRID**2 - 1.96), rel=1e-8)


@pytest.mark.parametrize("level", [127, 63])
def test_the_tile_test_keeps_a_pair_exactly_at_its_floor(level):
    """Each at-bound pair alone in its tile (1 row x 64 columns): kept at floor = its exact value,
    dropped once the floor is above the bound's whole reach. A bound too small, or a missing
    margin, fails here (the pairs carry their quantisation error along x^: the worst direction)."""
    P = at_bound_pairs()
    xs, ys = P[0::2], P[1::2]
    exact = exact_sims(P, np.arange(0, len(P), 2), np.arange(1, len(P), 2))
    for rows, cols in ((xs, ys), (ys, xs)):        # the error on the column side, then on the row side
        m = len(rows)
        C = np.zeros((64 * m, P.shape[1]), np.float32)
        C[::64] = cols                                # pair p: row p, column 64 p; zero columns elsewhere
        Qr, Qc = Quantized(rows, level), Quantized(C, level)
        Yt = int8_gemm(Qc.u8, np.ascontiguousarray(Qr.codes().T))   # [column, row], as the pass computes it
        for p in range(m):
            for step, want in ((0.0, 1), (4 * MARGIN + 3 * float(Qc.ne.max() + Qr.ne.max()) + 1e-4, 0)):
                floor = float(exact[p]) + step
                flags = np.zeros((m, len(C) // 64), np.uint8)
                flag(Yt, Qr, Qc, floor, -(m + len(C)), 1, flags)
                assert flags[p, p] == want, (p, want)
                assert flags.sum() == (flags.diagonal() > 0).sum()   # zero columns never mark a tile


def test_flagged_tiles_cover_every_pair_above_the_floor():
    """The tile test directly: a pair >= floor is always in a marked tile; most tiles stay unmarked."""
    X = canonical_vectors(seed_shaped(1500, 128, seed=3).vectors)
    Q0 = Quantized(X, 127)
    X = X[locality_order(Q0.u8, Q0.scale)]  # near-duplicates adjacent, as in the pass
    S = all_pair_sims(X)
    for level in (127, 63):
        Q = Quantized(X, level)
        for floor in (0.5, 0.9, 0.95, 0.98):
            a, c0 = 0, 512
            R, C = 512, 900
            Yt = int8_gemm(Q.u8[c0:c0 + C], np.ascontiguousarray(Q.codes()[a:a + R].T))
            flags = np.zeros((-(-R // 128), -(-C // 64)), np.uint8)
            D = Q.reach(floor)
            u = Q.ex + D * Q.ne.astype(np.float64)
            flag_all(Yt, Q.scale[a:a + R], u[a:a + R].astype(np.float32), Q.ne[a:a + R], Q.scale[c0:c0 + C],
                                Q.ne[c0:c0 + C], (floor - MARGIN - u[c0:c0 + C]).astype(np.float32), -(R + C), 128, flags)
            hit_r, hit_c = np.nonzero(S[a:a + R, c0:c0 + C] >= floor)
            assert flags[hit_r // 128, hit_c // 64].all()
            if floor >= 0.9:
                assert flags.mean() < 0.9


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["seed", "clusters", "adversarial"]),
       floor=st.sampled_from([0.5, 0.9, 0.98, 0.995]), a=st.integers(0, 300), rows=st.integers(1, 200),
       c0=st.integers(0, 400), cols=st.integers(1, 500))
def test_ball_test_never_skips_a_tile_with_a_pair_above_the_floor(seed, kind, floor, a, rows, c0, cols):
    """Int8Blocks.reachable_tiles: a column tile it skips holds no pair >= floor with any row of the
    block (any block position and shape, aligned or not); on clustered rows it skips most tiles."""
    rng = np.random.default_rng(seed)
    n = 900
    if kind == "seed":
        X = canonical_vectors(seed_shaped(n, 64, seed=seed % 1000).vectors)
    elif kind == "clusters":   # tight clusters in order: the ball test's good case, pairs at every distance
        n = 896                # 7 clusters of 128 rows: each ball of 64 rows inside one cluster
        centres = rng.standard_normal((7, 32))
        X = unit_rows(np.repeat(centres, 128, axis=0) + rng.standard_normal((n, 32)) * rng.uniform(0.01, 0.2))
    else:
        X = adversarial(rng, n, 24)
    Q = Quantized(X, 127)
    blocks = prepass.Int8Blocks(np.ascontiguousarray(X, np.float32), Q, floor, 2, 64)
    b, c1 = min(n, a + rows), min(n, c0 + cols)
    keep = blocks.reachable_tiles(a, b, c0, c1)
    assert keep.shape == (-(-(c1 - c0) // 64),)
    S = all_pair_sims(X)[a:b, c0:c1]
    hit_c = np.nonzero((S >= floor).any(axis=0))[0]
    assert keep[hit_c // 64].all()
    if kind == "clusters" and floor >= 0.9 and rows <= 64 and cols >= 400:
        assert not keep.all()


# ---------------------------------------------------------------------------------------------
# the whole pass: every path, the reference's answer
# ---------------------------------------------------------------------------------------------
def check_against_reference(X: np.ndarray, floor: float, f, thresholds) -> None:
    S = all_pair_sims(X)
    iu = np.triu_indices(len(X), 1)
    assert f.hist.sum() == int((S[iu] >= floor).sum())
    for t in thresholds:
        labels, pairs = reference_groups(X, t)
        assert same_partition(f.components(t), labels), t
        if round(t, 5) == t and round(floor, 5) == floor:
            assert f.pair_count(t) == pairs, t


@pytest.mark.parametrize("case", ["seed", "adversarial", "dense"])
def test_every_path_gives_the_reference_answer(case):
    rng = np.random.default_rng(11)
    if case == "seed":
        X = canonical_vectors(seed_shaped(1300, 64, seed=4).vectors)
        floor, ts = 0.95, [0.95, 0.96, 0.97, 0.98, 0.99, 0.995]
    elif case == "adversarial":
        X = adversarial(rng, 700, 48)
        floor, ts = 0.9, [0.9, 0.95, 0.98, 0.99]
    else:  # near-duplicates everywhere: blocks take the dense path (one float32 product)
        X = unit_rows(rng.standard_normal(32) + rng.standard_normal((600, 32)) * 0.05)
        floor, ts = 0.9, [0.9, 0.97, 0.98, 0.99]
    forests = {p: exact_forest(X, floor, kernel=p, block_rows=256, col_chunk=384) for p in PATHS}
    ref = forests["float32"]
    check_against_reference(X, floor, ref, ts)
    for p, f in forests.items():
        assert np.array_equal(f.hist, ref.hist), p
        assert np.array_equal(np.sort(f.weight), np.sort(ref.weight)), p
        for t in ts:
            assert np.array_equal(f.components(t), ref.components(t)), (p, t)
        assert f.meta["kernel"] == p
    if case == "dense":   # the one-product path ran
        assert forests["int8-vnni"].meta["exact_fraction"] > 0.6
    elif case == "seed":  # the tile path ran and skipped most pairs
        assert forests["int8-vnni"].meta["exact_fraction"] < 0.6


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), offsets=st.lists(st.integers(-2, 2), min_size=3, max_size=8),
       floor=st.sampled_from([0.5, 0.9, 0.96875]), path=st.sampled_from(INT8_PATHS))
def test_pairs_on_bin_edges_on_the_int8_path(seed, offsets, floor, path):
    """test_exactness's bin-edge pairs (exactly on an edge or 1-2 grid steps beside), int8 path forced."""
    rng = np.random.default_rng(seed)
    values = [EDGE_VALUES[i % len(EDGE_VALUES)] for i in range(len(offsets))]
    targets = [int(np.ceil(v * ONE)) + off for v, off in zip(values, offsets)]
    K = pair_vectors(targets, rng)
    X = (K / GRID).astype(np.float32)
    f = exact_forest(X, floor, block_rows=3, col_chunk=5, kernel=path)
    assert np.array_equal(f.hist, reference_hist(K, floor))
    S = all_pair_sims(X)
    iu = np.triu_indices(len(X), 1)
    for t in EDGE_VALUES:
        if t >= floor:
            assert f.pair_count(t) == int((S[iu] >= t).sum()), t


def test_near_duplicates_at_every_threshold():
    """Pairs planted at each threshold and one grid step (2**-22) either side, in a 512-d haystack."""
    rng = np.random.default_rng(8)
    thresholds = [0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999]
    targets = [int(np.ceil(t * ONE)) + off for t in thresholds for off in (-1, 0, 1)]
    K = pair_vectors(targets, rng, dim_per=3)
    P = (K / GRID).astype(np.float32)
    hay = seed_shaped(900, P.shape[1], seed=9).vectors
    X = canonical_vectors(np.concatenate([hay, P]))
    for path in INT8_PATHS:
        f = exact_forest(X, 0.9, kernel=path, block_rows=128, col_chunk=256)
        check_against_reference(X, 0.9, f, thresholds)


def test_scan_resumes_when_its_output_buffer_fills():
    """Tiny per-thread output buffers: the scan stops and resumes; the kept edges give the same forest."""
    from neardup.similarity.exact import filter_levels, level_of_bin, merge_kept_edges
    from neardup.similarity.forest import SimilarityForest, hist_bins

    X = canonical_vectors(seed_shaped(900, 32, seed=6).vectors)
    n, floor = len(X), 0.95
    Q = Quantized(X, 127)
    blocks = prepass.Int8Blocks(X, Q, floor, 2, n * n)
    E, runs = blocks.block(0, n, 0, n)
    levels = filter_levels(floor)
    lob = level_of_bin(floor, levels)
    flat = np.empty((len(levels), n), np.int32)
    flat[:] = np.arange(n, dtype=np.int32)
    T = 2
    uf = np.repeat(flat[None], T, axis=0)
    hist = np.zeros((T, hist_bins(floor)), np.int64)
    starts = np.flatnonzero(np.r_[True, runs[1:, 0] != runs[:-1, 0]])
    cap = int(np.add.reduceat(runs[:, 3], starts).max())  # just one row of the widest tile row fits
    out = (np.empty((T, cap), np.int64), np.empty((T, cap), np.int64), np.empty((T, cap), np.float32))
    kept = prepass.scan_runs(E, runs, 0, 0, floor, levels, lob, flat, uf, hist, out)
    assert len(kept) > T  # it had to resume
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    src, dst, w = merge_kept_edges(n, empty, kept)
    f = SimilarityForest(n, src, dst, w, floor, hist.sum(0))
    check_against_reference(X, floor, f, [0.95, 0.97, 0.99])


def test_threads_and_block_shapes_do_not_change_the_answer():
    import numba

    X = canonical_vectors(seed_shaped(1100, 96, seed=7).vectors)
    base = exact_forest(X, 0.95, kernel="float32")
    before = numba.get_num_threads()
    try:
        for threads in {1, before}:
            numba.set_num_threads(threads)
            for br, cc in ((2048, 8192), (300, 700), (97, 1000)):
                f = exact_forest(X, 0.95, kernel="int8-vnni", block_rows=br, col_chunk=cc)
                assert np.array_equal(f.hist, base.hist) and np.array_equal(np.sort(f.weight), np.sort(base.weight))
                assert all(np.array_equal(f.components(t), base.components(t)) for t in (0.95, 0.97, 0.99))
    finally:
        numba.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------
def test_kernel_path_is_named_and_can_be_forced(monkeypatch):
    assert kernel_path() in PATHS
    for p in PATHS:
        assert kernel_path(p) == p
        assert p in describe_kernel(p)
    monkeypatch.setenv(KERNEL_ENV, "float32")
    assert kernel_path() == "float32"
    X = canonical_vectors(seed_shaped(500, 32, seed=1).vectors)
    assert exact_forest(X, 0.95).meta["kernel"] == "float32"
    monkeypatch.setenv(KERNEL_ENV, "int8-7bit")
    assert exact_forest(X, 0.95).meta["kernel"] == "int8-7bit"  # forced: used at any size
    monkeypatch.setenv(KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match="NEARDUP_KERNEL"):
        kernel_path()


def test_neardup_models_names_the_kernel_path():
    env = {k: v for k, v in os.environ.items() if k != KERNEL_ENV}
    r = subprocess.run([sys.executable, "-m", "neardup", "models"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert f"similarity kernel: {planned_kernel_path()} (" in text
    if kernel_path() != "float32":  # here the prediction from the CPU flags is what the pass uses
        assert planned_kernel_path() == kernel_path()
    r = subprocess.run([sys.executable, "-m", "neardup", "models"], capture_output=True, text=True,
                       env=dict(env, **{KERNEL_ENV: "float32"}), timeout=300)
    assert "similarity kernel: float32 (" in " ".join(r.stdout.split())


def test_codes_respect_the_saturation_safe_range():
    X = adversarial(np.random.default_rng(3), 300, 512)
    for path, level in LEVELS.items():
        q = Quantized(X, level).codes().astype(int)
        assert np.abs(q).max() == level  # every row's largest coordinate maps to +-level
        assert path in PATHS


def test_a_fresh_process_picks_the_same_path_and_answer():
    """The automatic choice in a new process (the CLI's case) and a forced float32 agree bit for bit."""
    script = ("import json, numpy as np\n"
              "from neardup.similarity.exact import exact_forest\n"
              "from neardup.synthetic import seed_shaped\n"
              "f = exact_forest(seed_shaped(4200, 32, seed=2).vectors, 0.97)\n"
              "print(json.dumps([f.meta['kernel'], f.hist.tolist(), np.sort(f.weight).tolist()]))\n")
    outs = []
    for forced in (None, "float32"):
        env = {k: v for k, v in os.environ.items() if k != KERNEL_ENV}
        if forced:
            env[KERNEL_ENV] = forced
        src = str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(r.stdout.strip().splitlines()[-1])
    import json

    auto, forced = json.loads(outs[0]), json.loads(outs[1])
    assert auto[0] == kernel_path() and forced[0] == "float32"
    assert auto[1:] == forced[1:]
