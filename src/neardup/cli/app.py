"""The Typer app, shared options, and the error boundary (one-line messages, exit codes).

Start-up is part of the interface (``neardup runs`` and ``--help`` answer at once): this module
and the command modules import only typer and the standard library at their top; the catalog
(DuckDB), numpy, numba, pyarrow and Rich load inside the commands that use them. Help is
click's plain text (Typer's Rich help alone costs more than the whole start-up budget).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command_from_info, get_command_name

from .. import interrupts
from ..defaults import DEFAULT_DB
from ..errors import NeardupError

if TYPE_CHECKING:
    from rich.console import Console

    from ..catalog import Catalog


#: The module that defines each command, in the order ``neardup --help`` lists them: ``neardup runs``
#: imports neardup.cli.core only. tests/test_startup.py checks this against what the modules
#: register; a command missing here still works (every module is imported to find it), only slower.
COMMAND_MODULES: dict[str, str] = {
    "import-embeddings": "core", "sweep": "core", "dedup": "core", "runs": "core", "restore": "core",
    "export": "core",
    "scan": "images", "embed": "images", "models": "images", "skipped": "images", "find": "images",
    "demo": "images",
    "cluster": "clusters", "clusters": "clusters", "pairs": "clusters",
    "review": "review", "report": "review",
    "match": "scale", "estimate": "scale",
    "calibrate": "calibrate",
}


def load_commands(*names: str) -> None:
    """Import the command modules that define ``names`` (all of them when none is given or one is unknown);
    importing a module registers its commands on :data:`app`."""
    wanted = [COMMAND_MODULES.get(n) for n in names] if names else [None]
    modules = dict.fromkeys(COMMAND_MODULES.values()) if None in wanted else dict.fromkeys(wanted)
    for module in modules:
        importlib.import_module(f"{__package__}.{module}")


def _absent_help_is_false(option: Any) -> Any:
    """The ``--help`` flag defaults to False rather than None: typer 0.29 passes a bool value
    through, but builds a pydantic adapter to coerce None (importing pydantic: ~0.1 s of every
    ``neardup <command> --help`` and of ``neardup models``)."""
    if option is not None and getattr(option, "default", False) is None:
        option.default = False
    return option


class _Command(TyperCommand):
    """A command whose absent ``--help`` costs nothing (see :func:`_absent_help_is_false`) and whose
    option values are converted without pydantic (:mod:`neardup.cli.coerce`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from .coerce import install

        install(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        return _absent_help_is_false(super().get_help_option(ctx))


class _Typer(typer.Typer):
    """The app: its commands are :class:`_Command` unless one names another class."""

    def command(self, name: str | None = None, *, cls: Any = None, **kwargs: Any) -> Any:
        return super().command(name, cls=cls or _Command, **kwargs)


class _Group(TyperGroup):
    """The top-level command group, loading command modules on demand (click's lazy-subcommand
    pattern): resolving ``runs`` imports only its module; listing (``--help``, a typo's
    suggestions) imports them all. Its command list shows each command's whole first paragraph,
    wrapped (click's plain help would cut it at ~45 characters)."""

    def _add_registered(self, only: str | None = None) -> None:
        """Add the commands registered on the Typer since this group was built (by modules loaded since):
        all of them, or only the one named ``only`` (building a command reads its function's signature:
        ``neardup runs`` need not build the five other commands of its module)."""
        for info in _typer_app.registered_commands:
            name = info.name or get_command_name(info.callback.__name__ if info.callback else "")
            if name not in self.commands and only in (None, name):
                self.add_command(get_command_from_info(info, pretty_exceptions_short=_typer_app.pretty_exceptions_short,
                                                       rich_markup_mode=_typer_app.rich_markup_mode), name)

    def get_help_option(self, ctx: Any) -> Any:
        return _absent_help_is_false(super().get_help_option(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands:
            load_commands(cmd_name)
            # an unknown name (a typo) builds them all: click suggests the closest
            self._add_registered(cmd_name if cmd_name in COMMAND_MODULES else None)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: Any) -> list[str]:
        load_commands()
        self._add_registered()
        order = {name: k for k, name in enumerate(COMMAND_MODULES)}
        return sorted(self.commands, key=lambda name: order.get(name, len(order)))

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            first = (cmd.short_help or (cmd.help or "").split("\n\n", 1)[0]).strip()
            rows.append((name, " ".join(first.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _root() -> None:
    """(The group's own callback: it makes typer build a group even before any command module is loaded.)"""


app = _Typer(
    name="neardup",
    help=(
        "Find near-duplicate images by embedding similarity, keep one master per group and "
        "suppress the rest — reversibly (a flag and a run record; nothing is ever deleted or moved)."
    ),
    cls=_Group,
    callback=_root,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
_typer_app = app  # the Typer the command modules register on (tests may replace the name ``app``)


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

DbOption = Annotated[Path, typer.Option("--db", help="Catalog file (DuckDB). Created if missing.", show_default=True)]
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
                    TimeRemainingColumn(), console=err_console.get(), transient=True, disable=not err_console.is_terminal)




@contextlib.contextmanager
def progress_callback(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar driven by a library ``progress(done, total)`` callback (none, and no Rich
    progress import, when stderr is not a terminal)."""
    if not err_console.is_terminal:
        yield lambda done, total: None
        return
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
    try:
        # without standalone mode typer returns the code of a ``typer.Exit`` (main() exits with it)
        return app(args=argv, standalone_mode=False)
    except NeardupError as exc:
        if interrupts.requested():  # an error caused by Ctrl-C: main() reports the interrupt instead
            raise
        _remove_unused_new_catalogs()
        from rich.markup import escape

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
            from rich.markup import escape

            err_console.print(f"[bold red]error:[/] {escape(_usage_line(exc))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if isinstance(exc, _click_classes("Exit")):
            sys.exit(getattr(exc, "exit_code", 0) or 0)
        if isinstance(exc, _click_classes("Abort")):
            err_console.print("aborted")
            sys.exit(130)
        raise
