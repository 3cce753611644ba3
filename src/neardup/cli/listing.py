"""The read-only listings ``neardup runs`` and ``neardup skipped``, printed as plain text tables.

These are the commands a user runs to look, many times a session, so they answer at once: with
the options they take given plainly (``--db PATH``, ``--json``, ``--limit N``), :func:`plain_listing`
parses them here and the command runs on the standard library and DuckDB's extension alone; typer
(~0.05 s to import) and Rich (~0.03 s) are not loaded. Anything else (``--help``, a typo, a
missing value) goes to the Typer app, whose commands print through the same functions below.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .boundary import DEFAULT_DB_PATH, open_catalog

#: each listing's options: name -> takes a value (``--db PATH``) or is a flag (``--json``)
_OPTIONS: dict[str, dict[str, bool]] = {"runs": {"--db": True, "--json": False},
                                        "skipped": {"--db": True, "--limit": True}}


def parse_listing(args: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
    """``(command, keyword arguments)`` when ``args`` are ``runs`` or ``skipped`` with plain options
    (each at most once, every value well formed), as the Typer command would receive them; None for
    anything else, which the Typer app then parses (and explains when it is wrong)."""
    if not args or args[0] not in _OPTIONS:
        return None
    known: dict[str, bool] = _OPTIONS[args[0]]
    given: dict[str, str | bool] = {}
    rest = list(args[1:])
    while rest:
        name, eq, value = rest.pop(0).partition("=")
        if name not in known or name in given:
            return None
        if not known[name]:  # a flag
            if eq:
                return None
            given[name] = True
            continue
        if not eq:
            if not rest:
                return None
            value = rest.pop(0)
        if not value or value.startswith("-") or (name == "--limit" and not (value.isascii() and value.isdigit())):
            return None
        given[name] = value
    kwargs: dict[str, Any] = {"db": Path(str(given.get("--db", DEFAULT_DB_PATH)))}
    if args[0] == "runs":
        kwargs["as_json"] = bool(given.get("--json", False))
    else:
        kwargs["limit"] = int(given.get("--limit", 0))
    return args[0], kwargs


def plain_listing(args: Sequence[str]) -> Callable[[], None] | None:
    """The listing ``args`` ask for, ready to run, when :func:`parse_listing` reads them; else None."""
    parsed = parse_listing(args)
    if parsed is None:
        return None
    command, kwargs = parsed
    show = print_runs if command == "runs" else print_skipped
    return lambda: show(**kwargs)


def terminal_width() -> int:
    """Columns to fit: ``COLUMNS`` if set, the terminal's width on a terminal, else 80 (as Rich does)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    if not sys.stdout.isatty():
        return 80
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def wrapped(lines: Sequence[str], width: int) -> list[str]:
    """Lines of prose wrapped at word boundaries to ``width`` (a word longer than that stays whole)."""
    import textwrap

    return [part for line in lines for part in (textwrap.wrap(line, width, break_long_words=False,
                                                              break_on_hyphens=False) or [""])]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[str] = (),
               fold: Sequence[str] = (), width: int | None = None) -> list[str]:
    """Lines of a plain table: the header, a rule, the rows; columns one space apart, ``right`` ones
    right-justified. When the table is wider than ``width``, the ``fold`` columns (widest first)
    narrow and their cells continue on the next lines; other cells are never cut."""
    width = terminal_width() if width is None else width
    widths = [max([len(h), *(len(r[k]) for r in rows)]) for k, h in enumerate(headers)]
    folding = [k for k, h in enumerate(headers) if h in fold]
    while sum(widths) + len(widths) - 1 > width and folding:
        k = max(folding, key=lambda j: widths[j])
        if widths[k] <= max(8, len(headers[k])):
            break
        widths[k] -= 1

    def cell(text: str, k: int) -> str:
        return text.rjust(widths[k]) if headers[k] in right else text.ljust(widths[k])

    def lines_of(row: Sequence[str]) -> list[str]:
        pieces = [[row[k][a:a + widths[k]] for a in range(0, max(len(row[k]), 1), widths[k])] for k in range(len(row))]
        height = max(len(p) for p in pieces)
        return [" ".join(cell(p[i] if i < len(p) else "", k) for k, p in enumerate(pieces)).rstrip()
                for i in range(height)]

    out = lines_of(headers)
    out.append("─" * (sum(widths) + len(widths) - 1))
    for r in rows:
        out.extend(lines_of(r))
    return out


def run_grouping_cell(run: dict) -> str:
    """A run's grouping in a few characters: ``comp``, ``leader``, ``b .75``, ``b .75+1s`` (bound, capture-time window)."""
    mode = run.get("mode") or ""
    if mode == "components":
        return "comp"
    s = run.get("summary") or {}
    if mode != "bounded" or s.get("bound") is None:
        return mode
    cell = "b " + f"{float(s['bound']):.3g}".lstrip("0")
    if s.get("window_s") is not None:
        cell += f"+{float(s['window_s']):g}s"
    return cell


_RUNS_LEGEND = ("supp. = suppressed, kept = retained, max = largest group",
                "mode: comp = components; b .75 = bounded, each member within 0.75 of its master;",
                "+1s = capture-time window: images captured over 1 s apart link only from the",
                "run's --window-link (the lines below say each such run's grouping)")


def print_runs(db: Path, *, as_json: bool = False) -> None:
    """``neardup runs``: every dedup run with its threshold, grouping, counts and status (or JSON)."""
    with open_catalog(db, read_only=False, sql_only=True) as cat:
        rows = cat.runs()
        total = cat.count_images()
        visible = int(cat.scalar("SELECT count(*) FROM visible"))
    if as_json:
        import json

        print(json.dumps(rows, default=str))
        return
    if not rows:
        print("no runs yet (see `neardup dedup --help`)")
        return
    # short headers and values so the table fits 80 columns (the legend below says what they mean)
    headers = ("run", "created UTC", "status", "model", "thresh", "mode", "groups", "supp.", "kept", "max")
    cells = [(str(r["id"]), str(r["created_at"])[5:16], r["status"], r["model"], f"{r['threshold']:.4g}",
              run_grouping_cell(r), f"{r['n_groups']:,}", f"{r['n_suppressed']:,}", f"{r['n_retained']:,}",
              f"{r['largest_group']:,}") for r in rows]
    width = terminal_width()
    notes = [*_RUNS_LEGEND,
             *(f"run {r['id']}: {r['summary'].get('grouping') or r['mode']}" for r in rows  # summary: a dict (cat.runs)
               if r["summary"].get("window_s") is not None and r["summary"].get("window_link") is not None),
             *(f"run {r['id']} was replaced by run {r['replaced_by']} (restore {r['replaced_by']} to put it back)"
               for r in rows if r.get("replaced_by"))]
    lines = [*wrapped([f"Runs in {Path(db).name} — {visible:,} of {total:,} images visible"], width),
             *text_table(headers, cells, right=("run", "thresh", "groups", "supp.", "kept", "max"), fold=("model",),
                         width=width),
             *wrapped(notes, width)]
    print("\n".join(lines))


def print_skipped(db: Path, *, limit: int = 0) -> None:
    """``neardup skipped``: the files a scan or embed could not use, with the reason for each."""
    with open_catalog(db, must_exist=True, sql_only=True) as cat:
        rows = cat.rows("SELECT path, reason, seen_at FROM skipped ORDER BY path")
    if not rows:
        print("no skipped files")
        return
    shown = rows if limit == 0 else rows[:limit]
    width = terminal_width()
    lines = [*wrapped([f"{len(rows)} skipped file(s)" + (f", the first {len(shown)} shown" if len(shown) < len(rows) else "")],
                      width),
             *text_table(("path", "reason"), [(r["path"], r["reason"]) for r in shown], fold=("path", "reason"),
                         width=width)]
    print("\n".join(lines))


__all__ = ["parse_listing", "plain_listing", "print_runs", "print_skipped", "run_grouping_cell", "terminal_width",
           "text_table", "wrapped"]
