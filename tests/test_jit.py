"""neardup.jit: numba's first dispatch without the scipy.linalg import, numba otherwise unchanged.

Each check runs in a fresh interpreter (what is imported is per process)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_have_blas_is_what_numba_itself_finds() -> None:
    # the reference: a process where numba imports its registry the ordinary way (importing scipy.linalg)
    plain = fresh("import json, numba.np.arraymath as a; print(json.dumps({'blas': a._HAVE_BLAS}))")
    ours = fresh("import json, sys, neardup.jit, numba.np.arraymath as a; "
                 "print(json.dumps({'blas': a._HAVE_BLAS, 'linalg': 'scipy.linalg' in sys.modules, "
                 "'stub': 'scipy.linalg.cython_blas' in sys.modules}))")
    assert ours == {"blas": plain["blas"], "linalg": False, "stub": False}


def test_kernels_dispatch_without_scipy_linalg() -> None:
    # a cached neardup kernel, run: numba builds all its registries, and scipy.linalg stays unloaded
    got = fresh("""
import json, sys
import numpy as np
from neardup.similarity.forest import SimilarityForest, merge_forests
from neardup.similarity.exact import exact_forest
rng = np.random.default_rng(0)
X = rng.normal(size=(50, 8)).astype(np.float32)
X /= np.linalg.norm(X, axis=1, keepdims=True)
f = exact_forest(X, 0.5)
print(json.dumps({'edges': int(len(f.src)), 'linalg': sorted(m for m in sys.modules if m.startswith('scipy.linalg'))}))
""")
    assert got["linalg"] == [] and got["edges"] > 0


def test_blas_kernels_still_compile_and_agree_with_numpy() -> None:
    # np.dot / np.correlate inside a kernel after neardup.jit: numba imports scipy.linalg for them then
    got = fresh("""
import json, sys
import numpy as np
from neardup.jit import nb
@nb.njit
def dot(a, b):
    return np.dot(a, b)
@nb.njit
def corr(a, b):
    return np.correlate(a, b)
a = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
b = np.arange(20, dtype=np.float64).reshape(4, 5) / 3
x = np.array([1.5, -2.0, 0.25, 4.0]); y = np.array([0.5, 1.0])
print(json.dumps({'dot': dot(a, b).tolist(), 'corr': corr(x, y).tolist(), 'linalg': 'scipy.linalg' in sys.modules}))
""")
    a = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    b = np.arange(20, dtype=np.float64).reshape(4, 5) / 3
    np.testing.assert_allclose(got["dot"], a @ b, rtol=1e-12)
    np.testing.assert_allclose(got["corr"], np.correlate([1.5, -2.0, 0.25, 4.0], [0.5, 1.0]), rtol=1e-12)
    assert got["linalg"]  # loaded on demand by the BLAS kernel, as numba does
