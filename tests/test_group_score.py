"""Whole votes: each group's scores aggregated onto its master, against a brute-force aggregation."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_incremental import canon, ref

from neardup import Catalog, InputError
from neardup.dedup import dedup, export_run


def brute_force(labels: np.ndarray, scores: list[float | None], how: str) -> list[tuple[int, float | None]]:
    """(group size, aggregated score) per row by plain Python over each group's members."""
    out = []
    for lab in labels.tolist():
        vals = [s for s, l2 in zip(scores, labels.tolist()) if l2 == lab and s is not None]
        size = int((labels == lab).sum())
        if not vals:
            out.append((size, None))
        elif how == "sum":
            out.append((size, math.fsum(vals)))
        elif how == "max":
            out.append((size, max(vals)))
        else:
            out.append((size, math.fsum(vals) / len(vals)))
    return out


def close(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-9 * max(1, abs(b)))


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), n=st.integers(2, 90), how=st.sampled_from(["sum", "max", "mean"]),
       t=st.sampled_from([0.9, 0.95, 0.98]), missing=st.floats(0, 1))
def test_group_score_equals_brute_force(tmp_path_factory, seed, n, how, t, missing):
    rng = np.random.default_rng(seed)
    X = canon(rng.standard_normal((4, 16))[rng.integers(0, 4, n)] + 0.25 * rng.standard_normal((n, 16)))
    ids = [f"p{i:03d}" for i in range(n)]
    scores = [None if rng.random() < missing else float(np.round(rng.uniform(0, 9), 2)) for _ in range(n)]
    db = tmp_path_factory.mktemp("gs") / "cat.duckdb"
    with Catalog(db) as cat:
        cat.put_embeddings("m", ids, X, images=pa.table({"id": ids, "score": pa.array(scores, pa.float64())}))
        res = dedup(cat, t, group_score=how)
        labels, _ = ref(X, t)
        want = dict(zip(ids, brute_force(labels, scores, how)))
        rows = {r["image_id"]: r for r in cat.run_members(res.run_id).to_pylist()}
        for i in ids:
            assert rows[i]["group_size"] == want[i][0]
            assert close(rows[i]["group_score"], want[i][1]), (i, rows[i]["group_score"], want[i][1])
        # the visible view: one row per group, the master carrying the group's size and votes
        vis = {r["id"]: r for r in cat.sql("SELECT id, group_size, group_score FROM visible").to_pylist()}
        masters = {r["image_id"] for r in rows.values() if r["is_master"]}
        assert set(vis) == masters
        for i in masters:
            assert vis[i]["group_size"] == want[i][0] and close(vis[i]["group_score"], want[i][1])
        assert sum(v["group_size"] for v in vis.values()) == n


def test_export_carries_group_columns_and_bad_choice_is_refused(db, tmp_path):
    X = canon(np.array([[1, 0, 0], [0.999, 0.04, 0], [0, 1, 0], [0, 0, 1]], float))
    with Catalog(db) as cat:
        cat.put_embeddings("m", ["a", "b", "c", "d"], X,
                           images=pa.table({"id": ["a", "b", "c", "d"], "score": [1.0, 4.0, None, 2.0]}))
        with pytest.raises(InputError, match="group score 'median'"):
            dedup(cat, 0.98, group_score="median")
        assert cat.runs() == []
        run = dedup(cat, 0.98, group_score="mean").run_id
        export_run(cat, run, tmp_path / "g.json")
        rows = {r["image_id"]: r for r in json.loads((tmp_path / "g.json").read_text())}
        assert rows["b"]["is_master"] and rows["b"]["group_size"] == 2 and rows["b"]["group_score"] == 2.5
        assert rows["a"]["group_score"] == 2.5 and rows["c"]["group_size"] == 1 and rows["c"]["group_score"] is None
        # a kept copy is visible too and stands for itself; the master still carries the group
        cat.add_override("a", "keep")
        vis = {r["id"]: (r["group_size"], r["group_score"]) for r in cat.sql("SELECT * FROM visible").to_pylist()}
        assert vis == {"a": (1, 1.0), "b": (2, 2.5), "c": (1, None), "d": (1, 2.0)}
