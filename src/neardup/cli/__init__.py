"""The ``neardup`` command line: thin wrappers over the library API.

Each stage registers its commands from its own module (``core``, ``images``, ``clusters``,
``review``, ``calibrate``) on the one Typer app defined in :mod:`neardup.cli.app`.
"""

from __future__ import annotations

from .app import app, main

# Importing a module registers its commands on ``app``; a stage whose optional module is
# missing simply has no commands.
from . import core  # noqa: F401,E402

for _name in ("images", "clusters", "review", "scale", "calibrate"):
    try:
        __import__(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # pragma: no cover - only while a stage is not built yet
        if _exc.name != f"{__name__}.{_name}":
            raise

__all__ = ["app", "main"]
