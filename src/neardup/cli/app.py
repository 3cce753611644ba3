"""The Typer app, shared options, and the error boundary (one-line messages, exit codes)."""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator

import typer
from rich.console import Console

from .. import interrupts
from ..catalog import DEFAULT_DB, Catalog
from ..errors import NeardupError

app = typer.Typer(
    name="neardup",
    help=(
        "Find near-duplicate images by embedding similarity, keep one master per group and "
        "suppress the rest — reversibly (a flag and a run record; nothing is ever deleted or moved)."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

console = Console(soft_wrap=True)
err_console = Console(stderr=True)

DbOption = Annotated[Path, typer.Option("--db", help="Catalog file (DuckDB). Created if missing.", show_default=True)]
DEFAULT_DB_PATH = Path(DEFAULT_DB)


def open_catalog(db: Path, *, must_exist: bool = True, read_only: bool = False) -> Catalog:
    """Open the catalog, with a clear error when it is missing and must not be created."""
    from ..errors import CatalogError

    if must_exist and not Path(db).exists():
        raise CatalogError(f"{db}: no catalog here (create one with `neardup import-embeddings` or `neardup scan`)")
    # another neardup (a command, `neardup review`) may hold the file: wait for it, saying so once
    return Catalog(db, read_only=read_only, on_wait=lambda msg: err_console.print(msg, highlight=False, markup=False))


def compact_table(title: str | None = None) -> Any:
    """A Rich table that fits an 80-column terminal: a rule under the header, one space between columns."""
    from rich import box
    from rich.table import Table

    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
                 show_edge=False)


def progress_bar(description: str) -> Any:
    """A Rich progress bar with rate and ETA, drawn on stderr (quiet when not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(description), BarColumn(), TaskProgressColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=err_console, transient=True, disable=not err_console.is_terminal)




@contextlib.contextmanager
def progress_callback(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar driven by a library ``progress(done, total)`` callback."""
    with progress_bar(label) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input gives one line on stderr and exit 2, never a traceback;
    Ctrl-C gives exit 130 and one line saying what was committed before the stop (or nothing)."""
    on_main = threading.current_thread() is threading.main_thread()
    if on_main:
        interrupts.install()
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
    with contextlib.suppress(Exception):
        err_console.print(interrupts.outcome_line(), highlight=False, markup=False, soft_wrap=True)
    sys.exit(130)


def _dispatch(argv: list[str] | None) -> Any:
    """Run the command; usage and input errors become one line and their exit code."""
    from rich.markup import escape

    try:
        # without standalone mode typer returns the code of a ``typer.Exit`` (main() exits with it)
        return app(args=argv, standalone_mode=False)
    except NeardupError as exc:
        if interrupts.requested():  # an error caused by Ctrl-C: main() reports the interrupt instead
            raise
        err_console.print(f"[bold red]error:[/] {escape(_one_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except Exception as exc:  # click usage errors, from whichever click copy typer uses
        if isinstance(exc, _click_classes("NoArgsIsHelpError")):
            ctx = getattr(exc, "ctx", None)
            print(ctx.get_help() if ctx is not None else exc)  # bare `neardup`: the help, as asked
            sys.exit(0)
        if isinstance(exc, _click_classes("ClickException")):
            err_console.print(f"[bold red]error:[/] {escape(_usage_line(exc))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if isinstance(exc, _click_classes("Exit")):
            sys.exit(getattr(exc, "exit_code", 0) or 0)
        if isinstance(exc, _click_classes("Abort")):
            err_console.print("aborted")
            sys.exit(130)
        raise
