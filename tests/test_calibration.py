"""Threshold calibration: the fit against brute-force references, interval coverage over seeds,
the `neardup calibrate` command lines of issue 12, and its one-line errors on bad CSVs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neardup import Catalog
from neardup.calibration import (CalibrationNeedsMore, Population, active_targets, fit, isotonic, judgments,
                                 record_review_judgment, sampling_bands)
from reference import canonical_f64
from test_cli_core import run  # the CLI in process: (exit code, stdout, stderr)


# --------------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------------
def ref_isotonic(y: np.ndarray) -> np.ndarray:
    """Isotonic fit by the min-max formula: f_i = max_{j<=i} min_{k>=i} mean(y[j..k]) (O(n^3), no PAV)."""
    n = len(y)
    c = np.r_[0.0, np.cumsum(y)]
    return np.array([max(min((c[k + 1] - c[j]) / (k + 1 - j) for k in range(i, n)) for j in range(i + 1))
                     for i in range(n)])


def ref_curves(pop_sims: np.ndarray, judged_s: np.ndarray, judged_y: np.ndarray, t: float) -> tuple[float, float]:
    """Precision and recall at t over the raw pair list (no bins), p by the min-max isotonic, linear in between."""
    o = np.argsort(judged_s)
    p = np.interp(pop_sims, judged_s[o], ref_isotonic(judged_y[o].astype(float)))
    above = pop_sims >= t
    return float(p[above].sum() / above.sum()), float(p[above].sum() / p.sum())


def true_best(pop_sims: np.ndarray, labels: np.ndarray, target: float) -> float:
    """Lowest threshold whose true pair precision reaches the target (brute force over sorted pairs)."""
    o = np.argsort(-pop_sims)
    s, y = pop_sims[o], labels[o]
    prec = np.cumsum(y) / np.arange(1, len(y) + 1)
    last = np.r_[s[1:] != s[:-1], True]
    return float(s[np.flatnonzero(last & (prec >= target))[-1]])


# --------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=25), st.integers(0, 2**16))
def test_isotonic_is_the_min_max_fit(ys, seed):
    y = np.array(ys, float)
    x = np.sort(np.random.default_rng(seed).permutation(len(y)) + 0.5)   # distinct, increasing
    ux, fitted = isotonic(x, y)
    assert np.array_equal(ux, x)
    np.testing.assert_allclose(fitted, ref_isotonic(y), atol=1e-12)


def test_isotonic_pools_tied_similarities():
    ux, fitted = isotonic(np.array([0.5, 0.5, 0.7, 0.7, 0.7]), np.array([1, 0, 0, 1, 1.0]))
    np.testing.assert_allclose(ux, [0.5, 0.7])
    np.testing.assert_allclose(fitted, [0.5, 2 / 3])


@pytest.mark.parametrize("t0", [0.45, 0.62, 0.81, 0.93])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_a_known_threshold(t0, seed):
    """A judge who says 'same' exactly when s >= t0: the fit lands in the judged gap around t0."""
    rng = np.random.default_rng(seed)
    pop_s = rng.uniform(0.2, 1.0, 30_000)
    pop = Population.from_similarities(pop_s, 0.2)
    js = rng.uniform(0.2, 1.0, 60)
    jy = (js >= t0).astype(float)
    cal = fit(js, jy, pop, n_boot=300, seed=seed)
    lo_gap, hi_gap = js[jy == 0].max(), js[jy == 1].min()
    bin_w = pop.edges[1] - pop.edges[0]
    # never above the least similar pair judged same (everything above it is estimated "same"), and
    # within the judged gap around t0 (plus the 1% of pairs above that may be different)
    assert cal.threshold <= hi_gap + bin_w
    assert abs(cal.threshold - t0) <= (hi_gap - lo_gap) + 0.01
    above = pop_s >= cal.threshold
    assert (pop_s[above] >= t0).mean() >= 0.95          # true precision of the fitted threshold
    assert cal.low <= cal.threshold <= cal.high
    # the reported estimates are those of an independent reference at the fitted threshold
    p_ref, r_ref = ref_curves(pop_s, js, jy, cal.threshold)
    assert cal.precision == pytest.approx(p_ref, abs=0.003)
    assert cal.recall == pytest.approx(r_ref, abs=0.003)
    assert cal.precision >= 0.99 - 1e-9
    # and it is the lowest such threshold: one bin lower misses the target (reference again)
    assert ref_curves(pop_s, js, jy, cal.threshold - 2 * bin_w)[0] < 0.99 + 1e-3


def test_f1_objective_maximises_reference_f1():
    rng = np.random.default_rng(5)
    pop_s = rng.uniform(0.2, 1.0, 20_000)
    pop = Population.from_similarities(pop_s, 0.2)
    js = rng.uniform(0.2, 1.0, 80)
    jy = (rng.uniform(size=80) < np.clip((js - 0.4) / 0.4, 0, 1)).astype(float)
    cal = fit(js, jy, pop, objective="f1", n_boot=100)

    def f1(t):
        p, r = ref_curves(pop_s, js, jy, t)
        return 2 * p * r / (p + r)

    grid = np.linspace(0.21, 0.99, 157)
    assert f1(cal.threshold) >= max(f1(t) for t in grid) - 0.005


def _world(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A pair population shaped like the labelled photos (bench/calibration.py): a bulk of different
    pairs, look-alikes up to a hard edge near 0.8, duplicates mostly high with a thin low tail."""
    r = np.random.default_rng(seed)
    diff = np.r_[r.beta(2, 6, 30_000) * 0.9, r.uniform(0.45, 0.8, 2_000)]
    same = np.r_[1 - r.exponential(0.07, 1_200), r.uniform(0.4, 0.8, 120)]
    s = np.r_[diff, np.clip(same, 0, 1)]
    return s, np.r_[np.zeros(len(diff)), np.ones(len(same))]


def _judge_loop(pop_s, labels, pop, seed, n_boot=200):
    """The product's loop (as bench/calibration.py): 16 pairs spread over the bands, then 4 rounds of 11 at the active targets."""
    r = np.random.default_rng(seed)
    taken: set[int] = set()
    picked: list[int] = []

    def take(lo, hi, k):
        cand = [i for i in r.permutation(np.flatnonzero((pop_s >= lo) & (pop_s < hi))) if i not in taken][:k]
        taken.update(cand)
        picked.extend(cand)

    for lo, hi in sampling_bands(0.6):
        take(lo, hi, 2)
    for rnd in range(4):
        j = np.array(picked)
        cal = fit(pop_s[j], labels[j], pop, n_boot=n_boot, seed=seed * 10 + rnd)
        s_lo, s_hi = cal.spread
        w = max((s_hi - s_lo) / 22, 5e-4)
        for q in active_targets(cal, 11):
            take(q - w, q + w, 1)
    j = np.array(picked)
    return fit(pop_s[j], labels[j], pop, n_boot=n_boot, seed=seed)


def test_interval_covers_the_true_threshold_over_seeds():
    """95% nominal; counted honestly over 20 seeds of a fresh population each (binomial slack: >= 16)."""
    covered, close = 0, 0
    for seed in range(20):
        pop_s, labels = _world(seed)
        pop = Population.from_similarities(pop_s, 0.2)
        t_star = true_best(pop_s, labels, 0.99)
        cal = _judge_loop(pop_s, labels, pop, seed)
        covered += cal.low <= t_star <= cal.high
        close += abs(cal.threshold - t_star) <= 0.02
    assert covered >= 16, covered
    assert close >= 16, close


def test_too_few_and_one_sided_judgments_name_a_band():
    pop = Population.from_similarities(np.random.default_rng(0).uniform(0.2, 1, 5000), 0.2)
    with pytest.raises(CalibrationNeedsMore, match=r"only 4 judgments: judge at least 10 \(next: pairs in band 0\.\d+:0\.\d+\)"):
        fit(np.array([0.9, 0.8, 0.7, 0.3]), np.array([1, 1, 0, 0.0]), pop)
    s = np.linspace(0.5, 0.9, 12)
    with pytest.raises(CalibrationNeedsMore, match=r"all 12 judged pairs are the same image: judge pairs below 0\.500 \(band 0\.400:0\.500\)"):
        fit(s, np.ones(12), pop)
    with pytest.raises(CalibrationNeedsMore, match=r"none of the 12 judged pairs is the same image: judge pairs above 0\.900 \(band 0\.900:1\.000\)") as ei:
        fit(s, np.zeros(12), pop)
    assert ei.value.band == (pytest.approx(0.9), 1.0)


# --------------------------------------------------------------------------------------------
# the command lines
# --------------------------------------------------------------------------------------------
@pytest.fixture
def planted(tmp_path):
    """300 images in 60 groups of 5 whose spread varies, so same-group similarities span 0.3-1."""
    rng = np.random.default_rng(1)
    d, vecs, ids = 64, [], []
    for g in range(60):
        base = rng.normal(size=d)
        base /= np.linalg.norm(base)
        sig = rng.uniform(0.05, 0.9)
        for k in range(5):
            v = base + rng.normal(size=d) * sig / np.sqrt(d)
            vecs.append(v / np.linalg.norm(v))
            ids.append(f"g{g:02d}_{k}")
    V = np.array(vecs, np.float32)
    db = tmp_path / "cat.duckdb"
    with Catalog(db) as cat:
        cat.put_embeddings("sscd", ids, V)
    return db, dict(zip(ids, canonical_f64(V)))  # as stored: a pair's similarity is their exact dot


def _fill(path, rule):
    rows = list(csv.DictReader(open(path, newline="")))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "similarity", "same"])
        for r in rows:
            w.writerow([r["a"], r["b"], r["similarity"], rule(r)])
    return rows


def test_the_calibrate_command_lines(capsys, planted, tmp_path):
    db, vec = planted
    t0 = 0.7
    pairs = tmp_path / "pairs.csv"
    code, _, err = run(capsys, "calibrate", "--sample", "30", "--out", str(pairs), "--db", str(db))
    assert code == 0 and "spread over" in err
    rows = list(csv.DictReader(open(pairs, newline="")))
    assert list(rows[0]) == ["a", "b", "similarity", "same"] and len(rows) == 30
    assert all(r["same"] == "" for r in rows)
    assert len({(r["a"], r["b"]) for r in rows}) == 30
    for r in rows:   # the similarity written is the pair's cosine (independent float64 dot)
        assert float(r["similarity"]) == pytest.approx(float(vec[r["a"]] @ vec[r["b"]]), abs=1e-6)  # CSV: 6 decimals
    bands = sampling_bands(0.6)
    per_band = [sum(lo <= float(r["similarity"]) < hi for r in rows) for lo, hi in bands]
    assert sum(c > 0 for c in per_band) >= 6          # spread, not bunched
    _fill(pairs, lambda r: int(float(r["similarity"]) >= t0))
    code, out, err = run(capsys, "calibrate", "--judgments", str(pairs), "--json", "--db", str(db))
    assert code == 0, err
    res = json.loads(out)
    assert {"threshold", "low", "high", "precision", "recall", "judgments"} <= set(res)
    assert res["judgments"] == 30 and res["low"] <= res["threshold"] <= res["high"]
    assert abs(res["threshold"] - t0) < 0.1
    assert set(res["counts"]) == {"threshold", "low", "high"}

    # second round: active, concentrated where the fit is uncertain, never a judged pair again
    nxt = tmp_path / "next.csv"
    code, _, err = run(capsys, "calibrate", "--sample", "20", "--out", str(nxt), "--db", str(db))
    assert code == 0 and "narrow the interval" in err
    rows2 = list(csv.DictReader(open(nxt, newline="")))
    assert not {(r["a"], r["b"]) for r in rows2} & {(r["a"], r["b"]) for r in rows}
    near = sum(res["low"] - 0.05 <= float(r["similarity"]) <= res["high"] + 0.05 for r in rows2)
    assert near >= 0.8 * len(rows2)
    _fill(nxt, lambda r: int(float(r["similarity"]) >= t0))
    code, out, _ = run(capsys, "calibrate", "--judgments", str(nxt), "--target-precision", "0.99", "--json",
                       "--db", str(db))
    res2 = json.loads(out)
    assert res2["judgments"] == 30 + len(rows2)
    # the judge's own threshold (a step at t0: the lowest pair judged same is the threshold) stays inside;
    # the top end may reach 1: 50 answers cannot rule out rare different pairs above (docs)
    first_same = min(float(r["similarity"]) for r in rows + rows2 if float(r["similarity"]) >= t0)
    assert res2["low"] <= first_same and res2["high"] >= t0

    # dedup without --threshold uses the calibration and says so
    code, out, err = run(capsys, "dedup", "--dry-run", "--json", "--db", str(db))
    assert code == 0 and "calibration for sscd from" in err
    summary = json.loads(out)
    assert summary["threshold"] == pytest.approx(res2["threshold"])
    # calibrate's "what a run would do" is what that run does (the model's default grouping)
    assert res2["counts"]["threshold"]["suppressed"] == summary["suppressed"]
    assert res2["counts"]["threshold"]["retained"] == summary["retained"]

    # plain text output and the export
    code, out, _ = run(capsys, "calibrate", "--db", str(db))
    assert code == 0 and "calibrated threshold for sscd" in out and "interval low" in out
    exp = tmp_path / "judged.csv"
    code, _, _ = run(capsys, "calibrate", "--export", str(exp), "--db", str(db))
    back = list(csv.DictReader(open(exp, newline="")))
    assert len(back) == res2["judgments"]
    assert all(r["same"] == str(int(float(r["similarity"]) >= t0)) for r in back)


def test_one_sided_judgments_say_which_band(capsys, planted, tmp_path):
    db, _ = planted
    pairs = tmp_path / "pairs.csv"
    run(capsys, "calibrate", "--sample", "12", "--out", str(pairs), "--db", str(db))
    _fill(pairs, lambda r: 1)
    code, _, err = run(capsys, "calibrate", "--judgments", str(pairs), "--db", str(db))
    assert code == 2
    assert "stored 12 judgments" in err and "judge pairs below" in err and "band" in err
    with Catalog(db) as cat:
        assert judgments(cat, "sscd").num_rows == 12     # good judgments are kept even when no fit is possible


BAD = [
    ("a,b,similarity\nx,y,0.5\n", r"no column 'same'"),
    ("", r"empty file"),
    ("a,b,similarity,same\ng00_0,g00_1,0.9,maybe\n", r"row 2, column same: 'maybe' is not 1"),
    ("a,b,similarity,same\ng00_0,g00_1,0.9,1\ng00_0,,0.9,1\n", r"row 3, column b: empty image id"),
    ("a,b,similarity,same\ng00_0,g00_0,1.0,1\n", r"row 2, columns a and b: the same image"),
    ("a,b,similarity,same\ng00_0,g00_1,high,1\n", r"row 2, column similarity: 'high' is not a number"),
    ("a,b,similarity,same\ng00_0,g00_1,0.9,1\ng00_0,nope,0.5,0\n", r"row 3, column b: image 'nope' has no sscd"),
    ("a,b,similarity,same\ng00_0,g00_1,0.9,1\ng00_1,g00_0,0.9,0\n", r"row 3: pair .* judged the other way on row 2"),
    ("a,b,similarity,same\ng00_0,g00_1\n", r"row 2: 2 fields, the header has 4"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_judgment_files_leave_the_catalog_unchanged(capsys, planted, tmp_path, text, message):
    db, _ = planted
    f = tmp_path / "bad.csv"
    f.write_text(text)
    code, _, err = run(capsys, "calibrate", "--judgments", str(f), "--db", str(db))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(f) in err
    import re
    assert re.search(message, err), err
    with Catalog(db, read_only=True) as cat:
        assert cat.scalar("SELECT count(*) FROM judgments") == 0
        assert cat.scalar("SELECT count(*) FROM calibrations") == 0


def test_not_utf8_file(capsys, planted, tmp_path):
    db, _ = planted
    f = tmp_path / "bad.csv"
    f.write_bytes(b"a,b,same\n\xff\xfe,x,1\n")
    code, _, err = run(capsys, "calibrate", "--judgments", str(f), "--db", str(db))
    assert code == 2 and "not UTF-8" in err


def test_option_errors(capsys, planted, tmp_path):
    db, _ = planted
    assert run(capsys, "calibrate", "--sample", "5", "--db", str(db))[0] == 2
    code, _, err = run(capsys, "calibrate", "--objective", "recall", "--db", str(db))
    assert code == 2 and "precision or f1" in err
    code, _, err = run(capsys, "calibrate", "--db", str(db))
    assert code == 2 and "only 0 judgments" in err


def test_review_decisions_are_judgments(planted):
    from neardup.dedup import dedup

    db, vec = planted
    with Catalog(db) as cat:
        res = dedup(cat, 0.7, model="sscd")
        m = res.members.to_pylist()
        member = next(r for r in m if not r["is_master"])
        assert record_review_judgment(cat, member["image_id"], "not_duplicate")
        assert not record_review_judgment(cat, member["master_id"], "not_duplicate")   # a master has no pair
        t = judgments(cat, "sscd").to_pylist()
    assert len(t) == 1
    j = t[0]
    assert {j["a"], j["b"]} == {member["image_id"], member["master_id"]} and j["same"] is False
    assert j["source"] == "review:not_duplicate"
    assert j["similarity"] == pytest.approx(float(vec[j["a"]] @ vec[j["b"]]), abs=1e-6)


# --------------------------------------------------------------------------------------------
# the judging loop at scale: a pool computed once, skips kept
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_pool_against_brute_force(seed):
    """Each bin's exact pair count, and up to PER_BIN distinct pairs of that bin with their exact similarity."""
    from neardup.judge_pool import pool_pairs
    from reference import all_pair_sims

    rng = np.random.default_rng(seed)
    base = rng.normal(size=(12, 24))
    X = np.repeat(base, 25, axis=0) + rng.normal(size=(300, 24)) * rng.uniform(0.05, 1.5, (300, 1))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    lo, bins, k = 0.3, 40, 7
    i, j, s, counts = pool_pairs(X, lo, bins, k, seed=seed, block_rows=64, col_chunk=96)
    S = all_pair_sims(X)
    iu, ju = np.triu_indices(len(X), 1)
    ref = S[iu, ju]
    ref = ref[ref >= lo]
    w = (1 - lo) / bins
    ref_bin = np.minimum(((ref - lo) / w).astype(int), bins - 1)
    np.testing.assert_array_equal(counts, np.bincount(ref_bin, minlength=bins))
    assert np.all(i < j) and len(set(zip(i.tolist(), j.tolist()))) == len(i)
    np.testing.assert_array_equal(s, S[i, j])                       # exact similarities
    got_bin = np.minimum(((s - lo) / w).astype(int), bins - 1)
    np.testing.assert_array_equal(np.bincount(got_bin, minlength=bins), np.minimum(counts, k))
    # the same sample whatever the block shapes
    i2, j2, _, c2 = pool_pairs(X, lo, bins, k, seed=seed, block_rows=300, col_chunk=300)
    assert set(zip(i.tolist(), j.tolist())) == set(zip(i2.tolist(), j2.tolist())) and np.array_equal(counts, c2)


def test_an_answer_reads_no_pairs_once_the_pool_exists(planted, monkeypatch):
    """After the first offer, offering and refitting never scan the collection (cost independent of N)."""
    import neardup.dedup as dedup_mod
    import neardup.judge_pool as jp
    from neardup.calibration import add_judgments, calibrate, offer_pairs

    db, vec = planted
    with Catalog(db) as cat:
        first, _ = offer_pairs(cat, 12, "sscd", seed=0)
        add_judgments(cat, [(p["a"], p["b"], p["similarity"] > 0.8) for p in first], "sscd", "test")
        calibrate(cat, "sscd", n_boot=50, save=False, run_counts=False)     # builds the population once

        def no_scan(*a, **k):
            raise AssertionError("an answer scanned the collection")

        monkeypatch.setattr(dedup_mod, "load_scope", no_scan)
        monkeypatch.setattr(dedup_mod, "similarity_forest", no_scan)
        monkeypatch.setattr(jp, "pool_pairs", no_scan)
        for r in range(3):
            pairs, _ = offer_pairs(cat, 1, "sscd", seed=r)
            add_judgments(cat, [(pairs[0]["a"], pairs[0]["b"], pairs[0]["similarity"] > 0.8)], "sscd", "test")
            calibrate(cat, "sscd", n_boot=50, save=False, run_counts=False)
        for p in pairs:   # offered pairs carry their exact similarity
            assert p["similarity"] == pytest.approx(float(vec[p["a"]] @ vec[p["b"]]), abs=1e-6)


def test_skipped_pairs_survive_a_restart_and_stay_out_of_the_fit(planted):
    from neardup.calibration import add_judgments, calibrate, offer_pairs, skip_pair, skipped_pairs
    from neardup.judge_pool import _pools, _populations

    db, vec = planted
    with Catalog(db) as cat:
        pairs, _ = offer_pairs(cat, 30, "sscd", seed=0)
        add_judgments(cat, [(p["a"], p["b"], p["similarity"] > 0.8) for p in pairs], "sscd", "test")
        before = calibrate(cat, "sscd", n_boot=100, save=False, run_counts=False)
        offered = offer_pairs(cat, 5, "sscd", seed=3)[0]
        for p in offered:
            skip_pair(cat, p["b"], p["a"], "sscd")   # either order
    _pools.clear()
    _populations.clear()          # as after a restart of the server
    with Catalog(db) as cat:
        assert skipped_pairs(cat, "sscd") == {(p["a"], p["b"]) for p in offered}
        again = offer_pairs(cat, 40, "sscd", seed=3)[0]
        assert not {(p["a"], p["b"]) for p in again} & skipped_pairs(cat, "sscd")
        after = calibrate(cat, "sscd", n_boot=100, save=False, run_counts=False)
        assert (after.threshold, after.low, after.high, after.judgments) == (before.threshold, before.low, before.high,
                                                                             before.judgments)
        assert cat.scalar("SELECT count(*) FROM judgments") == 30
