"""numba for neardup's kernels, without the ``scipy.linalg`` import of numba's first dispatch.

The first call of any numba kernel in a process (even one loaded from numba's on-disk cache)
builds numba's typing and lowering registries; one of them, ``numba.np.arraymath``, imports
``scipy.linalg`` only to learn whether a BLAS is there (``_HAVE_BLAS``, which matters to
``np.correlate``/``np.convolve`` inside a kernel; neardup's kernels use neither). That import is
~0.2-0.3 s of CPU, a third of what ``neardup dedup`` may take at 12k rows. :func:`prepare`
imports that registry module with the ``scipy.linalg`` import refused, then sets ``_HAVE_BLAS``
to what the import would have found (from the files scipy installed), so numba behaves as
before; a kernel that uses BLAS (``np.dot``) still imports ``scipy.linalg`` when it is compiled.

Every neardup module that defines kernels imports numba from here (``from .jit import nb``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import numba as nb

_BLAS = "scipy.linalg.cython_blas"


def _scipy_has_blas() -> bool:
    """Whether ``import scipy.linalg.cython_blas`` would succeed, by its extension file (no scipy.linalg import)."""
    try:
        spec = importlib.util.find_spec("scipy")
    except (ImportError, ValueError):
        return False
    return spec is not None and any((Path(p) / "linalg" / f"cython_blas{suffix}").is_file()
                                    for p in (spec.submodule_search_locations or ())
                                    for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def prepare() -> None:
    """Import numba's array-math registry without importing scipy.linalg (idempotent; nothing to do
    once the registry or scipy.linalg is loaded)."""
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    have_blas = _scipy_has_blas()
    saved = sys.modules.get(_BLAS, prepare)
    sys.modules[_BLAS] = None  # type: ignore[assignment]  # `import scipy.linalg.cython_blas` raises ImportError
    try:
        import numba.np.arraymath as arraymath
    finally:
        if saved is prepare:
            sys.modules.pop(_BLAS, None)
        else:
            sys.modules[_BLAS] = saved
    arraymath._HAVE_BLAS = have_blas


prepare()

__all__ = ["nb", "prepare"]
