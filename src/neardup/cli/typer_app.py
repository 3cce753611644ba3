"""The Typer app and its shared options; the error boundary it runs in is :mod:`neardup.cli.boundary`.

Start-up is part of the interface (``neardup --help`` answers at once): this module and the
command modules import only typer and the standard library at their top; the catalog (DuckDB),
numpy, numba, pyarrow and Rich load inside the commands that use them. Help is click's plain text
(Typer's Rich help alone costs more than the whole start-up budget). ``neardup runs`` and
``neardup skipped`` with plain options do not load this module at all (:mod:`neardup.cli.listing`).
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command_from_info, get_command_name

from .boundary import (  # noqa: F401  (the command modules import these from here)
    DEFAULT_DB_PATH, console, err_console, main, open_catalog)

#: The module that defines each command, in the order ``neardup --help`` lists them: ``neardup dedup``
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
        ``neardup dedup`` need not build the five other commands of its module)."""
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


DbOption = Annotated[Path, typer.Option("--db", help="Catalog file (DuckDB). Created if missing.", show_default=True)]


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
