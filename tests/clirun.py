"""Run the installed ``neardup`` command in a subprocess, and check a one-line error (shared by tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def installed_neardup() -> str:
    """The ``neardup`` console script next to this interpreter (the install under test)."""
    bindir = Path(sys.executable).parent
    found = shutil.which("neardup", path=str(bindir))
    if found is None:
        pytest.fail(f"no installed `neardup` command in {bindir}: run scripts/setup.sh")
    return found


def neardup(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed command; stdin closed so nothing can wait for input."""
    env = dict(os.environ, COLUMNS="80", NO_COLOR="1")
    return subprocess.run([installed_neardup(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          errors="replace", stdin=subprocess.DEVNULL, timeout=timeout)


def assert_one_line_usage_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, exactly one non-empty stderr line, no traceback; the line names each needle."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(lines) == 1, res.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
