"""`neardup runs` / `neardup skipped` without typer: the plain-option parser agrees with the Typer
command wherever it answers, the output is the same by either path, and the text tables keep every
character of every cell within the width."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neardup.cli.listing import parse_listing, text_table

TOKENS = ["--db", "a.duckdb", "--db=b.duckdb", "--db=", "-x.duckdb", "--json", "--json=1", "--limit", "3", "--limit=0",
          "--limit=-1", "07", "x", "--help", "-h", "--bogus", "--", "٣", "runs", "skipped"]


def typer_params(args: list[str]) -> dict | None:
    """What the Typer command receives for ``args`` (None when click refuses them or help was asked)."""
    from neardup.cli.typer_app import app, load_commands
    from typer.main import get_command

    load_commands(args[0])
    group = get_command(app)
    ctx = group.make_context("neardup", [args[0]], resilient_parsing=True)
    cmd = group.get_command(ctx, args[0])
    try:
        sub = cmd.make_context(args[0], list(args[1:]), parent=ctx)
    except Exception:  # a usage error, or --help (click's Exit)
        return None
    return sub.params


@settings(max_examples=300, deadline=None)
@given(cmd=st.sampled_from(["runs", "skipped"]), rest=st.lists(st.sampled_from(TOKENS), max_size=5))
def test_plain_parser_agrees_with_typer(cmd: str, rest: list[str]) -> None:
    args = [cmd, *rest]
    ours = parse_listing(args)
    if ours is None:
        return  # typer parses these (and explains what is wrong)
    theirs = typer_params(args)
    assert theirs is not None, args
    assert ours == (cmd, theirs), (args, ours, theirs)


def test_plain_parser_reads_the_common_forms() -> None:
    assert parse_listing(["runs"]) == ("runs", {"db": Path("neardup.duckdb"), "as_json": False})
    assert parse_listing(["runs", "--json", "--db", "c.duckdb"]) == ("runs", {"db": Path("c.duckdb"), "as_json": True})
    assert parse_listing(["skipped", "--db=c.duckdb", "--limit", "5"]) == ("skipped", {"db": Path("c.duckdb"), "limit": 5})
    for args in (["runs", "--help"], ["runs", "--db"], ["skipped", "--limit", "x"], ["runs", "--json", "--json"],
                 ["dedup"], [], ["skipped", "--json"]):
        assert parse_listing(args) is None, args


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.text("abc/é_ .", max_size=40), st.text("xyz ", max_size=12),
                               st.integers(0, 10**9).map(lambda n: f"{n:,}")), min_size=1, max_size=6),
       width=st.integers(20, 100))
def test_text_table_keeps_every_cell_and_fits_when_it_can(rows: list[tuple[str, str, str]], width: int) -> None:
    lines = text_table(("path", "reason", "count"), rows, right=("count",), fold=("path",), width=width)
    assert set(lines[1]) == {"─"}
    table_width = len(lines[1])
    assert all(len(line) <= table_width for line in lines)
    reason_w = max(len("reason"), *(len(r[1]) for r in rows))
    count_w = max(len("count"), *(len(r[2]) for r in rows))
    path_w = table_width - reason_w - count_w - 2
    if reason_w + count_w + 2 + max(8, len("path")) <= width:  # folding the path alone can make it fit
        assert table_width <= width
    body, k = lines[2:], 0
    for path, reason, count in rows:
        block = body[k:k + max(1, -(-len(path) // path_w))]
        k += len(block)
        # the other cells are whole on the row's first line (count right-justified); the path's pieces join back
        assert block[0].endswith(count) and block[0][path_w + 1:path_w + 1 + reason_w].rstrip() == reason.rstrip()
        assert "".join(line[:path_w].ljust(path_w) for line in block).rstrip() == path.rstrip()
    assert k == len(body)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="80")
    return subprocess.run([sys.executable, "-m", "neardup", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_same_output_with_or_without_typer(tmp_path: Path) -> None:
    from neardup import Catalog
    from neardup.dedup import dedup

    rng = np.random.default_rng(1)
    V = rng.normal(size=(40, 8)).astype(np.float32)
    V[1::2] = V[0::2] + 0.01 * rng.normal(size=(20, 8)).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    db = tmp_path / "c.duckdb"
    with Catalog(db) as cat:
        cat.put_embeddings("clip", [f"i{k:02d}" for k in range(40)], V)
        dedup(cat, 0.95)
        cat.con.execute("INSERT INTO skipped VALUES ('/x/" + "deep/" * 20 + "a.jpg', 'truncated', now()), "
                        "('/y/b.png', 'empty file', now())")
    for plain, via_typer in ((["runs", "--db", "c.duckdb"], ["runs", "--db", "x", "--db", "c.duckdb"]),
                             (["skipped", "--db", "c.duckdb"], ["skipped", "--db", "x", "--db", "c.duckdb"])):
        a, b = _cli(*plain, cwd=tmp_path), _cli(*via_typer, cwd=tmp_path)
        assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
        assert a.stdout == b.stdout and a.stdout.strip()
        assert all(len(line) <= 80 for line in a.stdout.splitlines()), a.stdout
    out = _cli("skipped", "--db", "c.duckdb", "--limit", "1", cwd=tmp_path).stdout
    assert out.startswith("2 skipped file(s), the first 1 shown") and "a.jpg" in out and "b.png" not in out
    # the long path is folded, not cut: its pieces join back to it
    lines = out.splitlines()[3:]
    assert "".join(line.split(" ")[0] for line in lines) == "/x/" + "deep/" * 20 + "a.jpg"
    # errors stay one line, exit 2, through either path
    for args in (["runs", "--db", "missing.duckdb"], ["skipped", "--db", "missing.duckdb"]):
        res = _cli(*args, cwd=tmp_path)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "missing.duckdb: no catalog here" in res.stderr
    assert not (tmp_path / "missing.duckdb").exists()
