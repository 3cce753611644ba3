"""Errors neardup raises for bad input: one line, naming the file or row."""

from __future__ import annotations


class NeardupError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits non-zero."""


class InputError(NeardupError):
    """Bad user input (a file, a row, an option value)."""


class CatalogError(NeardupError):
    """The catalog cannot be used as asked (wrong version, missing model, unknown run...)."""
