"""Usage errors through the installed ``neardup`` command: one stderr line, exit 2, no traceback.

Runs the console script of the environment running the tests (``.venv/bin/neardup`` in CI), so
the error boundary is checked against whatever typer/click versions that install resolved to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from clirun import assert_one_line_usage_error, neardup


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small catalog made through the command, so option checks that need one can run."""
    d = tmp_path_factory.mktemp("cli_errors")
    vectors = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    np.save(d / "v.npy", vectors)
    (d / "ids.txt").write_text("\n".join(f"i{k}" for k in range(30)) + "\n")
    res = neardup("import-embeddings", "v.npy", "--ids", "ids.txt", "--db", "c.duckdb", cwd=d)
    assert res.returncode == 0, res.stderr
    return d


# (arguments, words the one line must contain): each is a different class of usage error.
USAGE_ERRORS = [
    (["dedup", "--threshold", "abc"], ["--threshold", "dedup --help"]),           # not a number
    (["dedup", "--bogus"], ["--bogus"]),                                            # no such option
    (["nosuchcmd"], ["nosuchcmd"]),                                                 # no such command
    (["dedupp"], ["dedupp", "dedup"]),                                              # typo: suggestion
    (["pairs", "--band", "0.9"], ["band", "LOW:HIGH"]),                              # malformed band (--band is optional)
    (["scan", "--thumb-size", "5"], ["--thumb-size"]),                              # below the range
    (["embed", "--batch-size", "0"], ["--batch-size"]),                             # below the range
    (["review", "--port", "70000"], ["--port"]),                                    # above the range
    (["scan"], ["sources"]),                                                        # missing argument
    (["export", "extra"], ["extra"]),                                               # extra argument
    (["dedup", "--threshold"], ["--threshold"]),                                    # option needs a value
    (["dedup", "--json=3"], ["--json"]),                                            # flag given a value
    (["export", "--run", "x"], ["--run"]),                                          # not an integer
    (["dedup", "--mode", "bogus"], ["bogus"]),                                      # bad choice
    (["dedup", "--index", "foo"], ["foo"]),                                         # bad choice
    (["dedup", "--prefer", "bogus"], ["bogus"]),                                    # bad policy key
    (["dedup", "--threshold", "2"], ["threshold"]),                                 # out of (0, 1]
    (["import-embeddings", "missing.npy", "--ids", "ids.txt"], ["missing.npy"]),    # file not found
    (["pairs", "--band", "0.9:0.95", "--ids", "missing.txt"], ["missing.txt"]),     # path option: no file
    (["scan", "no-such-folder"], ["no-such-folder"]),                               # source not found
    (["dedup", "--db", "v.npy"], ["v.npy"]),                                        # not a catalog
    (["runs", "--db", "missing.duckdb"], ["missing.duckdb"]),                       # no catalog there
]


@pytest.mark.parametrize("args,needles", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_line_exit_2(catalog_dir: Path, args: list[str], needles: list[str]) -> None:
    has_db = any(a == "--db" or a.startswith("--db=") for a in args)
    res = neardup(*args, *([] if has_db else ["--db", "c.duckdb"]), cwd=catalog_dir)
    assert_one_line_usage_error(res, *needles)


def test_usage_error_leaves_the_catalog_as_it_was(catalog_dir: Path) -> None:
    before = (catalog_dir / "c.duckdb").read_bytes()
    res = neardup("dedup", "--threshold", "0.5", "--mode", "bogus", "--db", "c.duckdb", cwd=catalog_dir)
    assert_one_line_usage_error(res, "bogus")
    assert (catalog_dir / "c.duckdb").read_bytes() == before


def test_bare_command_shows_help_not_an_error(tmp_path: Path) -> None:
    res = neardup(cwd=tmp_path)
    assert res.returncode == 0 and "Traceback" not in res.stderr and "Usage" in res.stdout


def test_help_exits_0(tmp_path: Path) -> None:
    res = neardup("dedup", "--help", cwd=tmp_path)
    assert res.returncode == 0 and "--threshold" in res.stdout and res.stderr == ""


def test_markup_in_a_message_is_printed_verbatim(tmp_path: Path) -> None:
    # A message with square brackets (an id, a path) must not be eaten as Rich markup.
    (tmp_path / "v.npy").write_bytes(b"")
    res = neardup("import-embeddings", "[bold]x[/bold].npy", "--db", "c.duckdb", cwd=tmp_path)
    assert_one_line_usage_error(res, "[bold]x[/bold].npy")


@pytest.mark.parametrize("module", ["click", "typer._click"])
def test_boundary_knows_each_click_copy(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                        module: str) -> None:
    # typer < 0.29 raises standalone click's exceptions, typer >= 0.29 its own copy's: both are caught.
    exceptions = pytest.importorskip(f"{module}.exceptions")
    import importlib

    cli_app = importlib.import_module("neardup.cli.typer_app")  # the module (the package's `app` is the Typer)

    def raise_usage(*_a: object, **_k: object) -> None:
        raise exceptions.UsageError("no such thing\nsecond line")

    monkeypatch.setattr(cli_app, "app", raise_usage)
    with pytest.raises(SystemExit) as exc:
        cli_app.main(["x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "no such thing second line" in err
