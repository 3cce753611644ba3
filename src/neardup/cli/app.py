"""The Typer app, shared options, and the error boundary (one-line messages, exit codes)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator

import typer
from rich.console import Console

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
    return Catalog(db, read_only=read_only)


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input gives one line on stderr and a non-zero exit, never a traceback."""
    try:
        app(args=argv, standalone_mode=False)
    except NeardupError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted: nothing was written (the catalog is as it was before this command)")
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            err_console.print("aborted")
            sys.exit(130)
        raise
