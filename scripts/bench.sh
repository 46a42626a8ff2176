#!/usr/bin/env bash
# Runs the benchmark suite:  bash scripts/bench.sh [--quick] [--update-readme] [--only MODULE]
# (--only observability: the cost of metrics and tracing on dispatch and logged publish)
#
# Uses the Python 3.12 virtualenv of the test command (.venv/py312, created when missing),
# starts its own redis-server, ASGI server and db_worker processes on loopback, and needs
# PostgreSQL on 127.0.0.1:5432 for the PostgreSQL rows. Writes docs/bench/results.json and
# docs/bench/latency.png; --update-readme rewrites the README's results section from them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh

if ! python=$(find_python 3.12) && ! python=$(find_python 3.11); then
    echo "ERROR: the benchmarks need Python 3.12 or 3.11" >&2
    exit 1
fi
venv=.venv/py$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
ensure_venv "$venv" "$python"
exec "$venv/bin/python" -m bench "$@"
