"""Canonical vectors: the similarity of two images is the *exact* dot product of these.

A float32 GEMM's result for one pair depends on the kernel, the block it was computed in and
the thread count (a few ulps), so a pair near a threshold or a histogram bin edge could land on
either side on different machines. neardup removes the rounding instead of bounding it: every
stored vector is rounded to a multiple of ``2**-GRID_BITS`` per coordinate. Then

* each product ``x_i * y_i`` is ``k * m * 2**-22`` with ``|k * m| <= 2**22``: exact in float32;
* every partial sum, in any order, with or without FMA, is a multiple of ``2**-22`` of magnitude
  ``<= sum |x_i y_i| <= |x| |y| < 2``, which float32 represents exactly (23 bits).

So *any* float32 dot product of canonical vectors — numpy/OpenBLAS with any kernel, block shape
or thread split, faiss, onnxruntime — returns the same exact value, and the result of a
similarity pass is a function of the vectors alone. The price is a rounding of the input of
2**-12 per coordinate at most: cosines move by about 2e-4 (measured, docs/design.md), far below
what any threshold resolves.
"""

from __future__ import annotations

import numpy as np

from ..jit import nb
from ..npyfile import chunk_rows, drop_mapped_pages

GRID_BITS = 11
SCALE = np.float32(2.0**GRID_BITS)
#: Exactness needs sum |x_i y_i| < 2; unit vectors rounded to the grid stay far below that.
MAX_NORM = 1.25


@nb.njit(cache=True, parallel=True)
def _off_grid(X: np.ndarray) -> bool:
    """True when some coordinate of X is not a multiple of 2**-GRID_BITS (or not finite)."""
    n = X.shape[0]
    found = np.zeros(n, dtype=np.bool_)
    scale = np.float32(2.0**GRID_BITS)
    for i in nb.prange(n):
        for j in range(X.shape[1]):
            v = X[i, j] * scale
            if v != np.rint(v):  # NaN and inf are off the grid too
                found[i] = True
                break
    return found.any()


def is_canonical(vectors: np.ndarray) -> bool:
    """True when ``vectors`` (float32, 2-D) are already on the canonical grid."""
    X = np.asarray(vectors)
    if X.dtype != np.float32 or X.ndim != 2:
        return False
    if X.size == 0:
        return True
    step = chunk_rows(4 * X.shape[1])  # ~64 MB of float32 at a time, also for memory maps
    for a in range(0, X.shape[0], step):
        off = _off_grid(np.ascontiguousarray(X[a:a + step]))
        drop_mapped_pages(X[a:a + step])  # a memory map's pages read here leave the resident set
        if off:
            return False
    return True


def canonical_vectors(vectors: np.ndarray) -> np.ndarray:
    """Unit-norm rows rounded to the canonical grid (float32); returned as is when already there.

    Rounding is idempotent, so canonical vectors stay canonical through any number of imports.
    Rows must be (close to) unit norm: exactness of float32 dot products needs norms < 1.25.
    """
    X = np.asarray(vectors)
    if X.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {X.shape}")
    if is_canonical(X):
        return vectors  # the object itself (a memory map stays one)
    out = np.empty(X.shape, dtype=np.float32)
    step = chunk_rows(4 * X.shape[1])
    for a in range(0, X.shape[0], step):
        block = np.asarray(X[a:a + step], dtype=np.float32)
        np.multiply(block, SCALE, out=out[a:a + step])
        np.rint(out[a:a + step], out=out[a:a + step])
        out[a:a + step] /= SCALE
        drop_mapped_pages(X[a:a + step])
    norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64))
    if out.shape[0] and not np.all(norms < MAX_NORM):
        bad = int(np.argmax(~(norms < MAX_NORM)))
        raise ValueError(f"row {bad}: norm {norms[bad]:.4g} is not close to 1 (vectors must be unit-norm)")
    return out


def exact_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise exact dot products of canonical vectors (float64; any float arithmetic agrees)."""
    return np.einsum("ij,ij->i", np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


__all__ = ["GRID_BITS", "canonical_vectors", "exact_dot", "is_canonical"]
