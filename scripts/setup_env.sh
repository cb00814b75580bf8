#!/usr/bin/env bash
# Create .venv with CPython 3.10 and install fer-mtl with the pinned stack.
# Idempotent: when .venv/.installed is newer than setup.py and constraints.txt
# nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed
if [[ -f $stamp && $stamp -nt setup.py && $stamp -nt constraints.txt ]]; then
  echo "setup: .venv is up to date"; exit 0
fi
source scripts/python310.sh
if [[ ! -x .venv/bin/python ]]; then
  py=$(find_py310) || {
    echo "setup: ERROR: CPython 3.10 is required (TFX 1.16 supports 3.9-3.10) and none was found." >&2
    echo "       Install it (e.g. 'pyenv install 3.10.13') or put python3.10 on PATH." >&2
    exit 1; }
  echo "setup: creating .venv with $py"
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip wheel setuptools
echo "setup: installing fer-mtl and the pinned stack (a few minutes on a fresh machine)"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,kfp,onnx]"
touch "$stamp"
echo "setup: done"
