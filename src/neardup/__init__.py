"""neardup: find near-duplicate images by embedding similarity; suppress reversibly; review."""

import sys as _sys

# Run as the `neardup` command (console script or `python -m neardup`): from this first line on, a
# Ctrl-C is noted instead of raised while the libraries load (an interrupt inside a library's import
# can be swallowed); the CLI's main() then exits 130 at once (see neardup.interrupts). Only the
# built-in ``_signal`` is used here, so the window before this runs is the interpreter's own start.
_cli_process = (_sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] in ("neardup", "neardup.exe") if _sys.argv
                else False) or list(getattr(_sys, "orig_argv", [])[1:3]) == ["-m", "neardup"]
_early_sigint: list = []
if _cli_process:
    import _signal

    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, lambda signum, frame: _early_sigint.append(signum))

import os as _os  # noqa: E402

# OpenBLAS worker threads busy-wait ~0.1 s after each GEMM by default, stealing the cores from
# the compiled scan that follows every block. A short spin costs the GEMM nothing measurable.
# (Only effective when neardup is imported before numpy; the user's setting always wins.)
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from typing import TYPE_CHECKING  # noqa: E402

from .errors import CatalogError, InputError, NeardupError  # noqa: E402

if TYPE_CHECKING:
    from .catalog import Catalog

__version__ = "0.1.0"
__all__ = ["Catalog", "CatalogError", "InputError", "NeardupError", "__version__"]


def __getattr__(name: str) -> object:
    """``neardup.Catalog`` on first use: importing neardup (the CLI's ``--help``) loads no DuckDB/numpy/pyarrow."""
    if name == "Catalog":
        from .catalog import Catalog

        return Catalog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
