#!/usr/bin/env bash
# Create .venv-peer (CPython 3.10) with the `fer` package for the side-by-side
# comparison in benchmarks/peer_fer.py. Idempotent (stamp .venv-peer/.installed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python310.sh
req=benchmarks/peer_requirements.txt
stamp=.venv-peer/.installed
if [[ -f $stamp && $stamp -nt $req ]]; then echo "peer: .venv-peer is up to date"; exit 0; fi
if [[ ! -x .venv-peer/bin/python ]]; then
  py=$(find_py310) || { echo "peer: ERROR: CPython 3.10 not found" >&2; exit 1; }
  "$py" -m venv .venv-peer
fi
.venv-peer/bin/python -m pip install -q --upgrade pip wheel
.venv-peer/bin/python -m pip install -q -r "$req"
.venv-peer/bin/python -m pip install -q --no-deps fer==25.10.3
touch "$stamp"
echo "peer: done"
