"""`sweep`, `sweep --plot`, `pairs` and the review explorer centre on the model's default threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from reference import all_pair_sims, reference_groups

from neardup import Catalog
from neardup import thresholds as TH
from neardup.pairs import default_bands
from neardup.sweep import default_thresholds
from test_chains import ref_bounded_central
from test_cli_core import run as cli


def sscd_like(n: int = 60, seed: int = 1) -> np.ndarray:
    """Families whose members sit 0.3-0.95 apart: the SSCD scale, where CLIP's 0.95-0.99 finds nothing."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((8, 32))
    X = centers[np.arange(n) % 8] + rng.uniform(0.3, 1.2, (n, 1)) * rng.standard_normal((n, 32))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def sscd_db(db):
    with Catalog(db) as cat:
        cat.put_embeddings("sscd", [f"i{k:02d}" for k in range(60)], sscd_like())
    return db


def test_default_thresholds_follow_the_model(db):
    with Catalog(db) as cat:
        cat.put_embeddings("sscd", ["a", "b"], np.eye(2, dtype=np.float32))
        cat.put_embeddings("my-vectors", ["a", "b"], np.eye(2, dtype=np.float32))
        ts, t = default_thresholds(cat, "sscd")
        assert t == pytest.approx(0.60) and t in ts
        assert min(ts) < t < max(ts) < 0.95                      # not CLIP's 0.99-0.95
        assert sum(v > t for v in ts) >= 2 and sum(v < t for v in ts) >= 2
        ts2, t2 = default_thresholds(cat, "my-vectors")         # unknown model: the seed's CLIP scale
        assert t2 == TH.FALLBACK_THRESHOLD and ts2[0] == 0.99 and t2 in ts2
        lo, hi = default_bands(cat, "sscd")
        assert lo[1] == hi[0] == pytest.approx(0.60) and lo[0] < 0.6 < hi[1] <= 1.0
        assert (hi[1] - hi[0]) == pytest.approx(lo[1] - lo[0])


def test_a_calibrated_default_moves_the_centre(db, monkeypatch):
    """Issue 12 fills in the catalog's calibrated threshold; sweep and pairs follow it through one function."""
    with Catalog(db) as cat:
        cat.put_embeddings("sscd", ["a", "b"], np.eye(2, dtype=np.float32))
        monkeypatch.setattr(TH, "_calibrated", lambda c, m: TH.ThresholdChoice(0.75, "calibrated", m, "calibrated"))
        ts, t = default_thresholds(cat, "sscd")
        assert t == 0.75 and t in ts and min(ts) < 0.75 < max(ts)
        assert default_bands(cat, "sscd")[1][0] == 0.75


def stored(db) -> np.ndarray:
    """The vectors as the catalog keeps them (canonical), which every reference must use."""
    with Catalog(db) as cat:
        return np.asarray(cat.load_embeddings("sscd").vectors, dtype=np.float64)


def test_plain_sweep_on_sscd_centres_and_marks_the_default(sscd_db, capsys, monkeypatch, tmp_path):
    X = stored(sscd_db)
    code, out, _ = cli(capsys, "sweep", "--json", "--db", str(sscd_db))
    rows = json.loads(out)
    ts = [r["threshold"] for r in rows]
    assert code == 0 and 0.6 in ts and max(ts) < 0.95
    S = all_pair_sims(X)
    ids = [f"i{k:02d}" for k in range(60)]
    for r in rows:             # the counts are the brute-force ones under sscd's grouping (bounded, bound 0.75)
        labels = ref_bounded_central(S, ids, r["threshold"], 0.75)
        assert r["groups"] == int((np.bincount(labels) >= 2).sum()) and r["retained"] == len(set(labels))
        comp, _ = reference_groups(X, r["threshold"])
        assert r["retained"] >= len(set(comp))        # not the transitive components' count
    at = next(r for r in rows if r["threshold"] == 0.6)
    assert 0 < at["suppressed"] < len(X)             # the default does something on this scale
    code, out, _ = cli(capsys, "sweep", "--db", str(sscd_db))
    assert code == 0 and "0.6 ◀" in out and "default" in out
    seen = {}
    import neardup.plots as plots

    monkeypatch.setattr(plots, "plot_sweep", lambda rows, forest, out, chosen=None, chosen_label=None, counts=None,
                        grouping=None: seen.update(ts=[r["threshold"] for r in rows], chosen=chosen,
                                                   label=chosen_label, grouping=grouping,
                                                   dense=counts([0.6]) if counts else None))
    code, _, _ = cli(capsys, "sweep", "--plot", str(tmp_path / "s.png"), "--db", str(sscd_db))
    assert code == 0 and seen["chosen"] == pytest.approx(0.6) and 0.6 in seen["ts"] and "default" in seen["label"]
    assert seen["grouping"].startswith("bounded (bound 0.75") and seen["dense"] == [at]   # curves: the same counts
    code, out, _ = cli(capsys, "sweep", "--db", str(sscd_db))
    assert "grouping bounded" in out
    # an explicit --chosen is marked instead
    code, out, _ = cli(capsys, "sweep", "--chosen", "0.7", "--db", str(sscd_db))
    assert "0.7 ◀" in out and "0.6 ◀" not in out


def test_the_plot_marks_the_default(sscd_db, tmp_path, capsys):
    code, _, err = cli(capsys, "sweep", "--plot", str(tmp_path / "s.png"), "--db", str(sscd_db))
    assert code == 0 and (tmp_path / "s.png").stat().st_size > 10_000


def test_pairs_without_band_samples_around_the_default(sscd_db, capsys):
    X = stored(sscd_db)
    code, out, _ = cli(capsys, "pairs", "--json", "--sample", "3", "--db", str(sscd_db))
    got = json.loads(out)
    assert code == 0 and [tuple(r["band"]) for r in got] == [(0.55, 0.6), (0.6, 0.65)]
    S = all_pair_sims(X)
    iu = np.triu_indices(len(X), 1)
    s = S[iu]                                  # exact similarities, compared with the band's real edges
    for r in got:
        lo, hi = r["band"]
        assert r["pairs_in_band"] == int(((s >= lo) & (s < hi)).sum()) > 0


def test_explorer_without_a_run_centres_on_the_default(sscd_db):
    from fastapi.testclient import TestClient

    from neardup.review import create_app

    app = create_app(sscd_db, idle_close_s=0)
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        html = c.get("/explore").text
        assert "0.6" in html and "0.55" in html and "0.95–0.96" not in html and "model default" in html
        home = c.get("/").text
        assert "model default" in home
    app.state.holder.close()
