"""match: every query's best catalog match and every match >= t, against brute force; nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_incremental import canon

from neardup import Catalog, InputError
from neardup.match import leakage, match, match_matrix, rank_matches
from neardup.similarity.incremental import RowSource


def brute_force(Q: np.ndarray, qids, X: np.ndarray, cids, t: float, tol: float = 0.0) -> dict[str, list[tuple[str, float]]]:
    """Per query: [(match id, similarity)] in rank order -- every s >= t by (s desc, id asc), else the best one."""
    S = np.asarray(Q, np.float64) @ np.asarray(X, np.float64).T
    out = {}
    for qi, q in enumerate(qids):
        items = sorted(((-S[qi, j], str(cids[j])) for j in range(len(cids))))
        hits = [(c, -s) for s, c in items if -s >= t - tol]
        out[q] = hits if hits else [(items[0][1], -items[0][0])]
    return out


def as_lists(table: pa.Table) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for r in table.to_pylist():
        out.setdefault(r["query_id"], []).append((r["match_id"], r["similarity"], r["rank"]))
    for q, rows in out.items():
        assert [r[2] for r in rows] == list(range(1, len(rows) + 1))
        out[q] = [(m, s) for m, s, _ in rows]
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), nq=st.integers(1, 70), n=st.integers(1, 300), dup=st.integers(0, 20),
       t=st.sampled_from([0.9, 0.95, 0.98, 0.999]), block=st.sampled_from([3, 64, 8192]),
       threads=st.sampled_from([1, 2, 3]), tiny_buffer=st.booleans())
def test_exact_matching_equals_brute_force(seed, nq, n, dup, t, block, threads, tiny_buffer):
    """Canonical vectors: float32 dots are exact, so the comparison is exact -- ties included
    (duplicated catalog rows tie exactly and must come out by id, whichever thread saw them).
    A tiny hit buffer makes the scan stop and resume mid-tile at every row."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, 20))
    X = canon(centres[rng.integers(0, 5, n)] + 0.2 * rng.standard_normal((n, 20)))
    if dup:
        X = np.concatenate([X, X[rng.integers(0, n, dup)]])
    perm = rng.permutation(len(X))
    X = X[perm]
    cids = np.asarray([f"c{rng.integers(0, 10**6):06d}-{i}" for i in range(len(X))], dtype=object)
    Q = canon(centres[rng.integers(0, 5, nq)] + 0.2 * rng.standard_normal((nq, 20)))
    qids = np.asarray([f"q{i}" for i in range(nq)], dtype=object)
    keys = np.empty(len(cids), np.int64)
    keys[np.argsort(cids.astype(str), kind="stable")] = np.arange(len(cids))
    q, c, s, best_c, best_v = match_matrix(Q, RowSource(X), keys, t, query_block=block, col_chunk=block,
                                           threads=threads, hit_capacity=1 if tiny_buffer else None)
    got = as_lists(rank_matches(qids, cids, q, c, s, best_c, best_v))
    assert got == brute_force(Q, qids, X, cids, t)


def _catalog(db, rng, n=400, d=24):
    centres = rng.standard_normal((8, d))
    X = canon(centres[rng.integers(0, 8, n)] + 0.15 * rng.standard_normal((n, d)))
    ids = [f"img{i:04d}" for i in range(n)]
    split = np.where(rng.random(n) < 0.3, "test", "train")
    with Catalog(db) as cat:
        cat.put_embeddings("m", ids, X, images=pa.table({"id": ids, "split": split.tolist()}))
    return centres, X, ids, split


def test_match_and_leakage_against_brute_force_write_nothing(db, tmp_path):
    rng = np.random.default_rng(4)
    centres, X, ids, split = _catalog(db, rng)
    Q = centres[rng.integers(0, 8, 50)] + 0.15 * rng.standard_normal((50, 24))
    qids = [f"new{i}" for i in range(50)]
    before = db.read_bytes()
    with Catalog(db, read_only=True) as cat:
        res = match(cat, Q, qids, 0.95)
        lk = leakage(cat, 0.95)
    assert db.read_bytes() == before  # nothing written
    # queries are normalised, then rounded to the grid the catalog stores (1/2048 per coordinate):
    # the reference does the same and computes exactly in float64
    Qn = (Q / np.linalg.norm(Q, axis=1, keepdims=True)).astype(np.float32)
    Qn = (np.rint(Qn * np.float32(2048)) / np.float32(2048)).astype(np.float32)
    want = brute_force(Qn, qids, X, ids, 0.95)
    got = as_lists(res.table)
    assert got == want
    assert res.summary["with_match"] == sum(1 for q in qids if want[q][0][1] >= 0.95)
    # leakage: the test split (smaller) against train, exactly (both sides canonical, from the store)
    te = [i for i, s in zip(ids, split) if s == "test"]
    tr = [i for i, s in zip(ids, split) if s == "train"]
    pos = {k: i for i, k in enumerate(ids)}
    want = brute_force(X[[pos[i] for i in te]], te, X[[pos[i] for i in tr]], np.asarray(tr, object), 0.95)
    assert as_lists(lk.table) == want
    assert lk.summary["query_split"] == "test" and lk.summary["reference_split"] == "train"
    assert lk.summary["with_match"] == sum(1 for q in te if want[q][0][1] >= 0.95)


def test_cli_match_formats_and_bad_input(db, tmp_path):
    rng = np.random.default_rng(5)
    centres, X, ids, _ = _catalog(db, rng, n=120)
    Q = canon(centres[rng.integers(0, 8, 10)] + 0.15 * rng.standard_normal((10, 24)))
    np.save(tmp_path / "q.npy", Q)
    (tmp_path / "q.txt").write_text("\n".join(f"q{i}" for i in range(10)) + "\n")
    before = db.read_bytes()
    neardup = [sys.executable, "-m", "neardup"]
    for suffix in ("csv", "parquet", "json"):
        out = tmp_path / f"m.{suffix}"
        r = subprocess.run([*neardup, "match", str(tmp_path / "q.npy"), "--ids", str(tmp_path / "q.txt"),
                            "--against", str(db), "--threshold", "0.97", "--out", str(out), "--json"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        table = pq.read_table(out) if suffix == "parquet" else (
            pa.Table.from_pylist(json.loads(out.read_text())) if suffix == "json" else
            __import__("pyarrow.csv", fromlist=["read_csv"]).read_csv(out))
        assert table.column_names == ["query_id", "match_id", "similarity", "rank"]
        assert summary["queries"] == 10 and table.num_rows == summary["rows"] >= 10
    # bad input: one line naming the problem, exit 2, catalog unchanged
    (tmp_path / "short.txt").write_text("q0\nq1\n")
    r = subprocess.run([*neardup, "match", str(tmp_path / "q.npy"), "--ids", str(tmp_path / "short.txt"),
                        "--against", str(db), "--out", str(tmp_path / "x.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "2 ids but" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    np.save(tmp_path / "wrong.npy", Q[:, :10])
    r = subprocess.run([*neardup, "match", str(tmp_path / "wrong.npy"), "--ids", str(tmp_path / "q.txt"),
                        "--against", str(db), "--out", str(tmp_path / "x.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "dimension 10" in r.stderr
    r = subprocess.run([*neardup, "match", "--leakage", "--split-column", "fold", "--against", str(db),
                        "--out", str(tmp_path / "x.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "no 'fold' column" in r.stderr
    assert db.read_bytes() == before


def test_leakage_needs_two_splits(db):
    rng = np.random.default_rng(6)
    _catalog(db, rng, n=30)
    with Catalog(db) as cat:
        cat.upsert_images(pa.table({"id": ["img0000"], "split": ["val"]}))
        with pytest.raises(InputError, match="holds 3 splits"):
            leakage(cat, 0.9)
        res = leakage(cat, 0.9, splits=["val", "train"])
        assert res.summary["queries"] == 1


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_best_match_ties_across_threads_go_to_the_smallest_id(threads):
    """A query whose best similarity (below t) ties over catalog rows that different threads scan:
    the reported best match is the smallest id, as brute force says."""
    rng = np.random.default_rng(11)
    base = canon(rng.standard_normal((3, 16)))
    X = base[rng.integers(0, 3, 600)]           # 600 rows, three distinct vectors: massive exact ties
    cids = np.asarray([f"c{v:05d}" for v in rng.permutation(600)], dtype=object)
    Q = canon(rng.standard_normal((40, 16)))    # random queries: best well below t
    qids = np.asarray([f"q{i}" for i in range(40)], dtype=object)
    keys = np.empty(600, np.int64)
    keys[np.argsort(cids.astype(str), kind="stable")] = np.arange(600)
    q, c, s, best_c, best_v = match_matrix(Q, RowSource(X), keys, 0.999, query_block=7, col_chunk=5,
                                           threads=threads)
    assert len(q) == 0
    assert as_lists(rank_matches(qids, cids, q, c, s, best_c, best_v)) == brute_force(Q, qids, X, cids, 0.999)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), parts=st.integers(1, 5), nq=st.integers(1, 30))
def test_merge_of_thread_bests_is_the_brute_force_best(seed, parts, nq):
    """Each thread's best (value, key, column) per query, merged: the highest value, then the smallest
    key -- values drawn from a few levels so that ties across threads are common."""
    from neardup.similarity.matchscan import merge_best

    rng = np.random.default_rng(seed)
    cand = []
    for _ in range(parts):
        v = rng.choice(np.array([-np.inf, 0.25, 0.5, 0.5, 0.75], np.float32), nq)
        k = np.where(np.isinf(v), np.iinfo(np.int64).max, rng.integers(0, 8, nq))
        cand.append((v.astype(np.float32), k.astype(np.int64), np.where(np.isinf(v), -1, k * 10)))
    got_c, got_v = merge_best(cand)
    for qi in range(nq):
        options = [(-float(v[qi]), int(k[qi]), int(c[qi])) for v, k, c in cand]
        best = min(options)
        assert (got_v[qi], got_c[qi]) == (np.float32(-best[0]), best[2])


def _clustered(seed, n=3000, nq=200, d=24, k=4, spread=0.5):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    X = canon(centres[rng.integers(0, k, n)] + spread * rng.standard_normal((n, d)))
    Q = canon(centres[rng.integers(0, k, nq)] + spread * rng.standard_normal((nq, d)))
    return X, Q


def _pairs(q, c):
    return set(zip(q.tolist(), c.tolist()))


@pytest.mark.parametrize("seed", [0, 1])
def test_ann_match_reports_only_true_pairs_and_its_measured_recall(seed):
    """ANN: every reported pair is a true pair >= t with its exact similarity; the recall it reports
    (every query sampled) equals the share of brute force's pairs it found; probing every partition
    gives exactly brute force."""
    from neardup.similarity.ann_match import ann_match_matrix

    X, Q = _clustered(seed)
    t = 0.9
    S = np.asarray(Q, np.float64) @ np.asarray(X, np.float64).T   # exact: canonical vectors
    tq, tc = np.nonzero(S >= t)
    truth = _pairs(tq, tc)
    keys = np.arange(len(X))
    am = ann_match_matrix(Q, RowSource(X), keys, t, nprobe=2, partitions=24, recall_sample=len(Q), threads=2)
    got = _pairs(am.q, am.c)
    assert got <= truth and len(got) < len(truth)            # approximate here: some pairs missed, none invented
    assert np.array_equal(am.s.astype(np.float64), S[am.q, am.c])
    assert am.recall["hit_recall"] == pytest.approx(len(got) / len(truth))
    assert am.recall["sample"] == len(Q) and am.recall["true_pairs"] == len(truth)
    with_true = set(tq.tolist())
    assert am.recall["query_recall"] == pytest.approx(len(set(am.q.tolist()) & with_true) / len(with_true))
    found_best = am.best_v.astype(np.float64) == S.max(axis=1)
    assert np.all(am.best_v.astype(np.float64) <= S.max(axis=1))
    assert am.recall["best_found"] == pytest.approx(found_best.mean())
    # every partition probed: exact
    full = ann_match_matrix(Q, RowSource(X), keys, t, nprobe=10_000, partitions=24, recall_sample=50)
    assert _pairs(full.q, full.c) == truth
    assert np.array_equal(full.best_v.astype(np.float64), S.max(axis=1))
    assert full.recall["hit_recall"] == 1.0 and full.recall["best_found"] == 1.0


def test_index_choice():
    from neardup.match import choose_index

    assert choose_index("auto", 1_000_000, 10_000) == "ann"
    assert choose_index("auto", 1_000_000, 100) == "exact"
    assert choose_index("auto", 100_000, 10_000) == "exact"
    assert choose_index("exact", 10**7, 10**5) == "exact" and choose_index("ann", 10, 1) == "ann"
    with pytest.raises(InputError, match="index 'fast'"):
        choose_index("fast", 1, 1)


def test_cli_match_ann_prints_recall_and_refuses_a_bad_index(db, tmp_path):
    rng = np.random.default_rng(9)
    centres, X, ids, _ = _catalog(db, rng, n=400)
    Q = canon(centres[rng.integers(0, 8, 30)] + 0.15 * rng.standard_normal((30, 24)))
    np.save(tmp_path / "q.npy", Q)
    (tmp_path / "q.txt").write_text("\n".join(f"q{i}" for i in range(30)) + "\n")
    before = db.read_bytes()
    neardup = [sys.executable, "-m", "neardup", "match", str(tmp_path / "q.npy"), "--ids", str(tmp_path / "q.txt"),
               "--against", str(db), "--threshold", "0.95", "--out", str(tmp_path / "m.csv")]
    r = subprocess.run([*neardup, "--index", "ann"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "approximate match (ANN" in r.stderr and "recall measured against exact on 30 sampled queries" in r.stderr
    r = subprocess.run([*neardup, "--index", "ann", "--json"], capture_output=True, text=True)
    s = json.loads(r.stdout)
    assert s["index"] == "ann" and s["exact"] is False and 0.0 <= s["recall"]["hit_recall"] <= 1.0
    # leakage through the CLI: the same table as the library's (which is checked against brute force)
    r = subprocess.run([sys.executable, "-m", "neardup", "match", "--leakage", "--against", str(db), "--threshold",
                        "0.95", "--out", str(tmp_path / "leak.parquet"), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["mode"] == "leakage" and (s["query_split"], s["reference_split"]) == ("test", "train")
    with Catalog(db, read_only=True) as cat:
        assert pq.read_table(tmp_path / "leak.parquet").equals(leakage(cat, 0.95).table)
    r = subprocess.run([*neardup, "--index", "fast"], capture_output=True, text=True)
    assert r.returncode == 2 and "index 'fast'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert db.read_bytes() == before
