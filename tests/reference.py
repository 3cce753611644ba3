"""Independent brute-force reference: numpy all-pairs + scipy connected components.

Deliberately shares no code with neardup's engine or policy. neardup's similarity is the exact
dot product of the vectors rounded to multiples of 2**-11 per coordinate (canonical vectors);
the reference rounds the same way and computes in integers (exact, no float rounding at all).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


GRID = 2048  # canonical grid: 2**11 steps per unit


def grid_ints(X: np.ndarray) -> np.ndarray:
    """Each coordinate of unit-norm float32 rows as an integer multiple of 1/GRID (int64)."""
    return np.rint(np.asarray(X, dtype=np.float32).astype(np.float64) * GRID).astype(np.int64)


def canonical_f64(X: np.ndarray) -> np.ndarray:
    """The canonical vectors in float64: any float64 dot product of them is exact (|sum| < 2, 22 bits)."""
    return grid_ints(X).astype(np.float64) / GRID


def all_pair_sims(X: np.ndarray) -> np.ndarray:
    """Exact similarities of all pairs (float64 holds every value exactly: |K K^T| < 2**53)."""
    K = grid_ints(X)
    return (K @ K.T).astype(np.float64) / GRID**2


def reference_groups(X: np.ndarray, t: float) -> tuple[np.ndarray, int]:
    """Component label per row of the graph 'cosine >= t', and the number of pairs >= t."""
    S = all_pair_sims(X)
    i, j = np.nonzero(np.triu(S >= t, k=1))
    n = len(X)
    g = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    return labels, len(i)


def min_margin(X: np.ndarray, t: float) -> float:
    """Distance of the pair similarity closest to t (tests avoid float-rounding ties at t)."""
    S = all_pair_sims(X)
    iu = np.triu_indices(len(X), 1)
    return float(np.min(np.abs(S[iu] - t))) if len(iu[0]) else 1.0


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two labelings split the items identically (label values may differ)."""
    a = np.asarray(a)
    b = np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def reference_masters(labels: np.ndarray, ids, score, brightness) -> dict[int, str]:
    """Per component label: the id with highest score, then brightness, then smallest id."""
    best: dict[int, tuple] = {}
    for lab, i, s, b in zip(labels.tolist(), ids, score, brightness):
        key = (-(s if s == s else -np.inf), -(b if b == b else -np.inf), str(i))
        if lab not in best or key < best[lab]:
            best[lab] = key
    return {lab: k[2] for lab, k in best.items()}


def clustered_vectors(rng: np.random.Generator, n: int, dim: int, n_centers: int, spread: float) -> np.ndarray:
    """Points scattered around a few centers, so that many pairs sit near typical thresholds."""
    centers = rng.standard_normal((n_centers, dim))
    which = rng.integers(0, n_centers, n)
    X = centers[which] + spread * rng.standard_normal((n, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
