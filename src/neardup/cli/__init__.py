"""The ``neardup`` command line: thin wrappers over the library API.

Each stage registers its commands from its own module (``core``, ``images``, ``clusters``,
``review``, ``scale``, ``calibrate``) on the one Typer app defined in :mod:`neardup.cli.typer_app`.
The modules load on demand (see :data:`neardup.cli.typer_app.COMMAND_MODULES`): ``neardup dedup``
imports ``core`` only, and a command module imports its libraries inside the command. The entry
point and error boundary are :mod:`neardup.cli.boundary`; ``neardup runs`` and ``neardup skipped``
with plain options are answered by :mod:`neardup.cli.listing` without loading typer at all.
"""

from __future__ import annotations

import importlib
from typing import Any

from .boundary import main


def __getattr__(name: str) -> Any:
    """``app`` (the Typer app) and ``load_commands``, imported on first use (typer loads with them)."""
    if name in ("app", "load_commands"):
        return getattr(importlib.import_module(f"{__name__}.typer_app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "load_commands", "main"]
