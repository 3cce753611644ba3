"""neardup: find near-duplicate images by embedding similarity; suppress reversibly; review."""

import os as _os

# OpenBLAS worker threads busy-wait ~0.1 s after each GEMM by default, stealing the cores from
# the compiled scan that follows every block. A short spin costs the GEMM nothing measurable.
# (Only effective when neardup is imported before numpy; the user's setting always wins.)
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .catalog import Catalog
from .errors import CatalogError, InputError, NeardupError

__version__ = "0.1.0"
__all__ = ["Catalog", "CatalogError", "InputError", "NeardupError", "__version__"]
