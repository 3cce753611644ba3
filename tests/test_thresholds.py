"""Which threshold a run uses when none is given, and that `dedup` says so."""

from __future__ import annotations

import numpy as np
import pytest

from neardup import Catalog
from neardup.cli import main
from neardup.thresholds import FALLBACK_THRESHOLD, choose_threshold, default_threshold


def _vectors(n: int = 40, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("model,expected,source", [("sscd", 0.60, "model"), ("sscd-distilled", 0.65, "model"),
                                                     ("my-vectors", FALLBACK_THRESHOLD, "fallback")])
def test_model_default_and_fallback(db, model, expected, source):
    with Catalog(db) as cat:
        cat.put_embeddings(model, [f"i{k}" for k in range(40)], _vectors())
        c = choose_threshold(cat, model)
        assert (c.value, c.source, c.model) == (pytest.approx(expected), source, model)
        assert default_threshold(cat) == pytest.approx(expected)   # the only model is the default one


def test_dedup_without_threshold_says_which(db, capsys):
    with Catalog(db) as cat:
        cat.put_embeddings("my-vectors", [f"i{k}" for k in range(40)], _vectors())
    main(["dedup", "--db", str(db)])   # returns normally on success (errors exit 2)
    err = capsys.readouterr().err
    assert "threshold 0.98" in err and "imported model 'my-vectors'" in err
