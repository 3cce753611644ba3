"""Start-up stays lazy: ``--help`` and the read-only commands import none of the heavy libraries,
and ``dedup`` none that it does not use.

Start-up *time* is a benchmark (bench/startup.py, docs/benchmarks.md), not a test; which modules a
command loads does not depend on the machine, so that is what is checked here, each command in a
fresh interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Run a command the way the console script does (neardup.cli.main), then list every module loaded.
_PROBE = """
import json, sys
out, args = sys.argv[1], json.loads(sys.argv[2])
sys.argv = ["neardup", *args]
try:
    from neardup.cli import main
    main()
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

#: the libraries no command may load unless it uses them (each costs 0.05-0.4 s to import)
NUMERIC = ("numpy", "numba", "scipy", "pyarrow", "pandas")
IMAGES_AND_SERVING = ("PIL", "onnxruntime", "fastembed", "fastapi", "starlette", "uvicorn", "jinja2", "matplotlib",
                      "sklearn", "faiss", "ray")


def loaded(args: list[str], cwd: Path) -> set[str]:
    """The modules a fresh ``neardup ARGS`` process has loaded when it exits (it must exit 0)."""
    out = cwd / "modules.json"
    res = subprocess.run([sys.executable, "-c", _PROBE, str(out), json.dumps(args)], cwd=cwd, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert out.exists(), res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["code"] == 0, (got["code"], res.stderr[-3000:])
    return set(got["modules"])


def tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small catalog with one applied run and two skipped files (so `runs` and `skipped` print tables)."""
    from neardup import Catalog
    from neardup.dedup import dedup

    d = tmp_path_factory.mktemp("startup")
    rng = np.random.default_rng(0)
    V = rng.normal(size=(60, 16)).astype(np.float32)
    V[1::2] = V[0::2] + 0.02 * rng.normal(size=(30, 16)).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    db = d / "c.duckdb"
    with Catalog(db) as cat:
        cat.put_embeddings("clip", [f"i{k:03d}" for k in range(60)], V)
        dedup(cat, 0.95)
        cat.con.execute("INSERT INTO skipped VALUES ('/x/a.jpg', 'truncated', now()), ('/x/b.png', 'empty', now())")
    return db


@pytest.mark.parametrize("args", [["--help"], ["dedup", "--help"], ["runs", "--help"], []],
                         ids=["--help", "dedup --help", "runs --help", "bare"])
def test_help_loads_no_library(args: list[str], tmp_path: Path) -> None:
    mods = loaded(args, tmp_path)
    assert not tops(mods) & {*NUMERIC, *IMAGES_AND_SERVING, "duckdb", "rich", "pydantic"}, sorted(tops(mods))
    # the command modules, and no library module of neardup's
    assert {m for m in mods if m.startswith("neardup.") and not m.startswith("neardup.cli")} <= {
        "neardup.defaults", "neardup.errors", "neardup.interrupts"}


@pytest.mark.parametrize("args", [["models"], ["runs", "--db", "{db}"], ["skipped", "--db", "{db}"],
                                  ["runs", "--json", "--db={db}"], ["skipped", "--limit", "1", "--db", "{db}"],
                                  ["runs", "--db", "{db}", "--db", "{db}"]],
                         ids=["models", "runs", "skipped", "runs --json", "skipped --limit", "runs --db twice"])
def test_read_only_commands_load_no_numeric_or_image_library(args: list[str], catalog: Path, tmp_path: Path) -> None:
    cmd, args = args[0], [a.format(db=catalog) for a in args]
    mods = loaded(args, tmp_path)
    assert not tops(mods) & {*NUMERIC, *IMAGES_AND_SERVING}, sorted(tops(mods) & {*NUMERIC, *IMAGES_AND_SERVING})
    # typer >= 0.29 would convert --db's value through pydantic (~0.08 s): neardup.cli.coerce does it
    assert "pydantic" not in tops(mods) and "typer._adapters" not in mods
    cli_modules = {m for m in mods if m.startswith("neardup.cli.")}
    if cmd == "models" or args.count(args[-2]) > 1:
        # through typer: only the module that defines the command is imported, not every command's
        assert cli_modules == {"neardup.cli.boundary", "neardup.cli.listing", "neardup.cli.typer_app",
                               "neardup.cli.coerce", "neardup.cli." + ("images" if cmd in ("skipped", "models") else "core")}
    else:
        # the listings with plain options: neither typer nor Rich is loaded (~0.08 s of ~0.2)
        assert cli_modules == {"neardup.cli.boundary", "neardup.cli.listing"}
        assert not tops(mods) & {"typer", "click", "rich"}, sorted(tops(mods) & {"typer", "click", "rich"})
    if cmd == "models":
        assert "duckdb" not in tops(mods) and "_duckdb" not in tops(mods)
    elif importlib.util.find_spec("_duckdb") is not None:
        # runs/skipped read plain rows: DuckDB's extension alone, not its Python package (~0.1 s)
        assert "duckdb" not in tops(mods) and "_duckdb" in tops(mods), sorted(m for m in mods if "duckdb" in m)


def test_dedup_loads_only_what_it_uses(catalog: Path, tmp_path: Path) -> None:
    mods = loaded(["dedup", "--threshold", "0.9", "--dry-run", "--db", str(catalog)], tmp_path)
    assert not tops(mods) & {"pandas", "pydantic", *IMAGES_AND_SERVING}, sorted(
        tops(mods) & {"pandas", "pydantic", *IMAGES_AND_SERVING})
    assert "rich.table" not in mods and "rich.progress" not in mods  # no table printed, no terminal for a bar
    # numba's first dispatch imports scipy.linalg to look for a BLAS (~0.25 s): neardup.jit spares it
    assert "scipy.linalg" not in mods and "numba.np.arraymath" in mods
    assert not {m for m in mods if m.startswith(("neardup.review", "neardup.sources", "neardup.find", "neardup.plots",
                                                 "neardup.cli.images", "neardup.cli.review"))}


def test_import_neardup_loads_no_library(tmp_path: Path) -> None:
    code = "import json, sys, neardup; print(json.dumps(sorted(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    mods = tops(set(json.loads(res.stdout)))
    assert not mods & {*NUMERIC, *IMAGES_AND_SERVING, "duckdb", "rich", "typer"}, sorted(mods)


def test_public_api_unchanged() -> None:
    import neardup
    import neardup.catalog

    from neardup import Catalog, CatalogError, InputError, NeardupError  # noqa: F401

    assert Catalog is neardup.catalog.Catalog and "Catalog" in neardup.__all__
    with pytest.raises(AttributeError):
        getattr(neardup, "no_such_name")


def test_command_table_matches_the_modules() -> None:
    # COMMAND_MODULES says which module defines each command, so that `neardup runs` imports one module;
    # it must name every command, in the module that registers it.
    from neardup.cli.typer_app import COMMAND_MODULES, app, load_commands
    from typer.main import get_command_name

    load_commands()
    registered = {(info.name or get_command_name(info.callback.__name__)): info.callback.__module__.rsplit(".", 1)[1]
                  for info in app.registered_commands}
    assert registered == COMMAND_MODULES


def test_typo_still_suggests_the_command(tmp_path: Path) -> None:
    # resolving a command builds only that one; an unknown name builds them all, so click can suggest
    from clirun import assert_one_line_usage_error, neardup

    res = neardup("rns", cwd=tmp_path)
    assert_one_line_usage_error(res, "No such command 'rns'", "Did you mean 'runs'?")


def test_command_annotations_are_evaluated_once() -> None:
    # typer reads each command's signature twice with eval_str=True: string annotations (PEP 563,
    # `from __future__ import annotations` in a command module) would be compiled and evaluated on
    # every start (~0.04 s of `neardup --help`); the command modules define them as objects
    from neardup.cli.typer_app import app, load_commands

    load_commands()
    strings = {info.callback.__name__: [name for name, ann in info.callback.__annotations__.items() if isinstance(ann, str)]
               for info in app.registered_commands}
    assert {k: v for k, v in strings.items() if v} == {}
