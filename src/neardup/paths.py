"""User-given paths: refuse at once what cannot be read or written as a file; show any name printably.

A named pipe or a device given where a file is read (a scan list, ``--ids``, ``--meta``) would
block forever or never end (``/dev/zero``); a file name that is not valid UTF-8 (possible on
Linux) cannot be stored in the catalog's text columns. Both get one line instead.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Iterator

from .errors import InputError


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as valid text: bytes that are not UTF-8 appear as ``\\xff`` escapes (for messages)."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def is_utf8(path: str | os.PathLike[str]) -> bool:
    """Whether the file name is valid UTF-8 (and so can be stored and shown as it is)."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a special file")


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """``path`` if a file can be written there (its folder exists; it is not a folder, pipe or device).

    One :class:`InputError` line otherwise, before anything is written.
    """
    p = Path(path)
    parent = p.parent
    if not parent.exists():
        raise InputError(f"{shown(p)}: folder {shown(parent)} does not exist (create it first)")
    if not parent.is_dir():
        raise InputError(f"{shown(p)}: {shown(parent)} is not a folder")
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        return p
    except OSError as exc:
        raise InputError(f"{shown(p)}: cannot write ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{shown(p)}: is a folder; give a file name (a new one, or a file to replace)")
    if not stat.S_ISREG(mode):
        raise InputError(f"{shown(p)}: is {_kind(mode)}; give a regular file name")
    return p


def require_regular_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` if it is a regular file (links followed); else one :class:`InputError` line, at once.

    Checked with ``stat`` before any ``open``, so a named pipe or a device never blocks the command.
    """
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise InputError(f"{shown(p)}: no such file") from None
    except OSError as exc:
        raise InputError(f"{shown(p)}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISREG(mode):
        return p
    raise InputError(f"{shown(p)}: is {_kind(mode)}, not a regular {what}; give a file")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, make_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends it replaces ``path`` whole.

    Checked first (:func:`check_output_file`); on any failure, Ctrl-C included, the temporary
    file is removed, so a reader sees the old file or the new one and no stray ``.tmp`` is left.
    An ``OSError`` while writing becomes one :class:`InputError` line naming ``path``.
    """
    p = Path(path)
    if make_folder:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{shown(p)}: cannot create its folder ({exc.strerror or exc})") from None
    check_output_file(p)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        tmp.replace(p)
    except OSError as exc:
        raise InputError(f"{shown(p)}: cannot write ({exc.strerror or str(exc).splitlines()[0]})") from None
    finally:
        tmp.unlink(missing_ok=True)
