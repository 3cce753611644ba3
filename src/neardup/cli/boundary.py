"""The command line's entry point and error boundary, without typer.

Every command runs inside :func:`main`: bad input gives one line on stderr and exit 2, never a
traceback; Ctrl-C gives exit 130 and one true line about what was committed. Nothing here
imports typer, click or Rich at its top, so a command that needs neither (``neardup runs``,
``neardup skipped``: :mod:`neardup.cli.listing`) starts with the standard library alone; every
other command is parsed by the Typer app (:mod:`neardup.cli.typer_app`), loaded on demand.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import interrupts
from ..defaults import DEFAULT_DB
from ..errors import NeardupError

if TYPE_CHECKING:
    from rich.console import Console

    from ..catalog import Catalog


class _LazyConsole:
    """A Rich console made on first use, so that importing the CLI (and ``--help``) loads no Rich."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._console: Console | None = None

    def get(self) -> Console:
        """The Rich console itself (for Rich APIs that take a ``console=``)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


console = _LazyConsole(soft_wrap=True)
err_console = _LazyConsole(stderr=True)

DEFAULT_DB_PATH = Path(DEFAULT_DB)


def open_catalog(db: Path, *, must_exist: bool = True, read_only: bool = False, sql_only: bool = False) -> Catalog:
    """Open the catalog, with a clear error when it is missing and must not be created; ``sql_only``
    for a command that reads plain rows only (DuckDB's Python package need not load)."""
    from ..errors import CatalogError

    if must_exist and not Path(db).exists():
        raise CatalogError(f"{db}: no catalog here (create one with `neardup import-embeddings` or `neardup scan`)")
    from ..catalog import Catalog

    if not os.path.lexists(db):  # made by this command: removed again if the command ends having committed nothing
        side = Path(db).with_name(Path(db).name + ".d")
        _CREATED.append((Path(db), None if os.path.lexists(side) else side))

    # another neardup (a command, `neardup review`) may hold the file: wait for it, saying so once
    return Catalog(db, read_only=read_only, sql_only=sql_only,
                   on_wait=lambda msg: err_console.print(msg, highlight=False, markup=False))


#: catalogs (and sidecar folders) this command created, for :func:`_remove_unused_new_catalogs`
_CREATED: list[tuple[Path, Path | None]] = []


def _remove_unused_new_catalogs() -> None:
    """A command that failed or was interrupted before committing anything leaves no catalog it made
    (a typo in an input path must not leave an empty catalog behind)."""
    made, _CREATED[:] = list(_CREATED), []
    if interrupts.committed():
        return
    import shutil

    for db, side in made:
        for p in (db, db.with_name(db.name + ".wal")):
            with contextlib.suppress(OSError):
                p.unlink()
        if side is not None:
            shutil.rmtree(side, ignore_errors=True)


def _one_line(text: object) -> str:
    """Collapse a message to one line (usage errors and library errors are printed as one line)."""
    return " ".join(str(text).split())


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """Every loaded click copy's exception class ``name``: standalone click's and typer's own.

    typer >= 0.29 ships its own copy of click (``typer._click``) whose exceptions share no base
    with standalone click's, so the boundary must know both; a copy that is not loaded cannot
    have raised, hence ``sys.modules`` rather than an import.
    """
    found: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "click.exceptions", "typer.exceptions"):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


def _usage_line(exc: BaseException) -> str:
    """One line for a click/typer usage error: the message, then where to get help."""
    fmt = getattr(exc, "format_message", None)
    message = _one_line(fmt() if callable(fmt) else exc)
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "neardup"
    return f"{message} (see: {command} --help)"


def _print_error(line: str) -> None:
    """``error: <line>`` on stderr, the message taken literally (a path with ``[brackets]`` is not markup)."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input gives one line on stderr and exit 2, never a traceback;
    Ctrl-C gives exit 130 and one line saying what was committed before the stop (or nothing)."""
    on_main = threading.current_thread() is threading.main_thread()
    if on_main:
        interrupts.install()
    _CREATED.clear()
    try:
        interrupts.checkpoint()  # Ctrl-C while the command was starting
        rv = _dispatch(argv)
    except BaseException as exc:
        if interrupts.requested() or interrupts.is_interrupt(exc):
            _interrupted()
        raise
    else:
        # typer turns a KeyboardInterrupt into a returned 130; an interrupt that something swallowed
        # still ends the command as interrupted
        if rv == 130 or interrupts.requested():
            _interrupted()
        if isinstance(rv, int) and not isinstance(rv, bool) and rv:
            sys.exit(rv)
    finally:
        if on_main:
            interrupts.uninstall()


def _interrupted() -> None:
    """Report an interrupted command in one true line and exit 130."""
    interrupts.stop_listening()
    _remove_unused_new_catalogs()
    with contextlib.suppress(Exception):
        err_console.print(interrupts.outcome_line(), highlight=False, markup=False, soft_wrap=True)
    sys.exit(130)


def _dispatch(argv: list[str] | None) -> Any:
    """Run the command; usage and input errors become one line and their exit code."""
    from .listing import plain_listing

    try:
        listing = plain_listing(sys.argv[1:] if argv is None else list(argv))
        if listing is not None:  # `runs`/`skipped` with plain options: no typer to load
            return listing()
        app_module = importlib.import_module(f"{__package__}.typer_app")  # its `app` at call time (tests replace it)

        # without standalone mode typer returns the code of a ``typer.Exit`` (main() exits with it)
        return app_module.app(args=argv, standalone_mode=False)
    except NeardupError as exc:
        if interrupts.requested():  # an error caused by Ctrl-C: main() reports the interrupt instead
            raise
        _remove_unused_new_catalogs()
        _print_error(_one_line(exc))
        sys.exit(2)
    except SystemExit as exc:
        sys.exit(exc.code or 0)
    except Exception as exc:  # click usage errors, from whichever click copy typer uses
        if isinstance(exc, _click_classes("NoArgsIsHelpError")):
            ctx = getattr(exc, "ctx", None)
            print(ctx.get_help() if ctx is not None else exc)  # bare `neardup`: the help, as asked
            sys.exit(0)
        if isinstance(exc, _click_classes("ClickException")):
            _print_error(_usage_line(exc))
            sys.exit(2)
        if isinstance(exc, _click_classes("Exit")):  # typer.Exit and click's Exit
            sys.exit(getattr(exc, "exit_code", 0) or 0)
        if isinstance(exc, _click_classes("Abort")):
            err_console.print("aborted")
            sys.exit(130)
        raise
