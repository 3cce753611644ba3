"""neardup.cli.coerce converts option values as typer's own pydantic coercion does (the reference:
typer's ``build_runtime_param`` on the same parameter), without importing pydantic."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

typer_coercion = pytest.importorskip("typer._coercion")  # typer >= 0.29: the version that coerces via pydantic

import typer  # noqa: E402

from neardup.cli.coerce import plain_coercion  # noqa: E402


def _params() -> dict[str, Any]:
    """Typer parameters of every kind neardup's commands use (built by typer from a real command)."""
    import importlib

    command_cls = importlib.import_module("neardup.cli.typer_app")._Command
    sub = typer.Typer()

    @sub.command(cls=command_cls)
    def probe(
        s: Annotated[Optional[str], typer.Option()] = None,
        i: Annotated[int, typer.Option()] = 3,
        f: Annotated[Optional[float], typer.Option()] = None,
        lo: Annotated[int, typer.Option(min=1)] = 1,
        rng: Annotated[int, typer.Option(min=32, max=1024)] = 256,
        hi: Annotated[float, typer.Option(max=65535)] = 1.0,
        flo: Annotated[float, typer.Option(min=0.5)] = 1.0,
        p: Annotated[Path, typer.Option()] = Path("x.duckdb"),
        ps: Annotated[Optional[list[Path]], typer.Option()] = None,
        b: Annotated[bool, typer.Option("--b")] = False,
    ) -> None:
        pass

    @sub.command(cls=command_cls)
    def other() -> None:
        pass

    group = typer.main.get_command(sub)
    cmd = group.get_command(None, "probe")
    return {p.name: p for p in cmd.params}


PARAMS = _params()


def both(name: str, value: Any) -> tuple[Any, Any]:
    """(neardup's result, typer's result) for ``value``: the converted value or ("error", message)."""
    from typer._click import Context

    param = PARAMS[name]
    ctx = Context(typer.main.TyperCommand("probe"))
    out = []
    for runtime in (plain_coercion(param), typer_coercion.build_runtime_param(param.type_descriptor)):
        try:
            out.append(runtime.coerce(value, param=param, ctx=ctx))
        except typer.BadParameter as exc:
            out.append(("error", exc.message))
    return out[0], out[1]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return type(a) is type(b) and a == b


def test_every_command_parameter_gets_the_plain_converter() -> None:
    # every option of every neardup command except those typer must convert itself (none today)
    from neardup.cli.typer_app import app, load_commands

    load_commands()
    group = typer.main.get_command(app)
    missing = [(name, p.name) for name in group.list_commands(None) for p in group.get_command(None, name).params
               if p.name != "help" and plain_coercion(p) is None]
    assert missing == []


WELL_FORMED = ["0", "5", "+5", "-5", " 7 ", "1_000", "05", "5.0", "5.00", "-0.0", "0.98", ".5", "-.5", "1e3", "1E-3",
               "2.5e+2", "inf", "-Infinity", "NaN", "1e400", "9223372036854775808", "31", "32", "1024", "1025",
               "65535", "65536", "0.49", "0.5"]
MALFORMED = ["", "  ", "abc", "0x10", "5 .0", "1e", ".", "+-5", "_5", "5_", "1__0", "١٢", "5\x00", "5.", "5.5", "1,5"]


@pytest.mark.parametrize("name", ["i", "f", "lo", "rng", "hi", "flo"])
@pytest.mark.parametrize("text", WELL_FORMED + MALFORMED)
def test_numbers_match_typer(name: str, text: str) -> None:
    ours, theirs = both(name, text)
    assert same(ours, theirs), (text, ours, theirs)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789+-._eE infaINFTY\t", max_size=12), st.sampled_from(["i", "f", "lo", "rng", "flo"]))
def test_any_text_never_accepted_where_typer_refuses(text: str, name: str) -> None:
    # where pydantic has quirks (an underscore beside a sign or an exponent), neardup may refuse what it
    # accepts; it never accepts what it refuses, and what both accept is the same value
    ours, theirs = both(name, text)
    if isinstance(ours, tuple):
        if not isinstance(theirs, tuple):
            assert "_" in text, (text, ours, theirs)
        else:
            assert ours == theirs
    else:
        assert same(ours, theirs), (text, ours, theirs)


@pytest.mark.parametrize("name,value", [("i", 4), ("f", 3), ("f", 0.25), ("lo", 0), ("hi", 1e9), ("s", "plain"),
                                        ("s", "ünï cödé"), ("p", Path("a.duckdb")), ("b", True)])
def test_python_values_match_typer(name: str, value: Any) -> None:
    ours, theirs = both(name, value)
    assert same(ours, theirs), (value, ours, theirs)


def test_paths_match_typer(tmp_path: Path) -> None:
    f = tmp_path / "cat.duckdb"
    f.write_text("x")
    for value in [str(f), str(tmp_path / "missing.duckdb"), "rel/a b.duckdb", "-", str(tmp_path)]:
        ours, theirs = both("p", value)
        assert same(ours, theirs), (value, ours, theirs)
        ours, theirs = both("ps", [value, "x.txt"])
        assert same(ours, theirs), (value, ours, theirs)
    assert both("ps", None) == ((), ())


def test_bad_number_is_one_line_and_names_the_option(tmp_path: Path) -> None:
    from clirun import assert_one_line_usage_error, neardup

    res = neardup("dedup", "--threshold", "abc", "--db", str(tmp_path / "c.duckdb"), cwd=tmp_path)
    assert assert_one_line_usage_error(res) == (
        "error: Invalid value for '--threshold' / '-t': Input should be a valid number, unable to parse string as a "
        "number (see: neardup dedup --help)")
    res = neardup("scan", str(tmp_path), "--workers", "0", "--db", str(tmp_path / "c.duckdb"), cwd=tmp_path)
    assert_one_line_usage_error(res, "'--workers'", "Input should be greater than or equal to 1")
    assert not (tmp_path / "c.duckdb").exists()
