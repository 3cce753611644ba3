"""The ``neardup`` command line: thin wrappers over the library API.

Each stage registers its commands from its own module (``core``, ``images``, ``clusters``,
``review``, ``scale``, ``calibrate``) on the one Typer app defined in :mod:`neardup.cli.app`.
The modules load on demand (see :data:`neardup.cli.app.COMMAND_MODULES`): ``neardup runs``
imports ``core`` only, and a command module imports its libraries inside the command.
"""

from __future__ import annotations

from .app import app, load_commands, main

__all__ = ["app", "load_commands", "main"]
