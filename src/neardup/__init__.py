"""neardup: find near-duplicate images by embedding similarity; suppress reversibly; review."""

import os as _os

# OpenBLAS worker threads busy-wait ~0.1 s after each GEMM by default, stealing the cores from
# the compiled scan that follows every block. A short spin costs the GEMM nothing measurable.
# (Only effective when neardup is imported before numpy; the user's setting always wins.)
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import sys as _sys  # noqa: E402

from . import interrupts as _interrupts  # noqa: E402  (standard library only)

# Run as the `neardup` command: a Ctrl-C while the libraries below load is noted, not raised
# (an interrupt inside a library's import can be swallowed); main() then exits 130.
if _interrupts.is_cli_invocation(_sys.argv, getattr(_sys, "orig_argv", [])):
    _interrupts.early()

from .catalog import Catalog
from .errors import CatalogError, InputError, NeardupError

__version__ = "0.1.0"
__all__ = ["Catalog", "CatalogError", "InputError", "NeardupError", "__version__"]
