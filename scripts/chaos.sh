#!/usr/bin/env bash
# Runs the chaos suite:  bash scripts/chaos.sh [--seeds N | --seed S ...] [--quick]
#
# Seeded runs over real processes on loopback: PostgreSQL (127.0.0.1:5432 unless
# EVENTBUS_PG_HOST/PORT/USER say otherwise; a database of its own per run, dropped after),
# a private redis-server, uvicorn, two relay workers, three publishers and two consumers,
# while a nemesis kills Redis (twice), a relay worker, a publisher and uvicorn. Prints one
# line and a small table per seed, writes test-results/chaos-<seed>.json (and the
# processes' records and logs in test-results/chaos-<seed>/), and exits 1 when any count
# but resets is not zero. Default: seed 1, full length (about 50 s a seed on 2 cores).
# Uses the Python 3.12 virtualenv of the test command (.venv/py312, created when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh

if ! python=$(find_python 3.12) && ! python=$(find_python 3.11); then
    echo "ERROR: the chaos suite needs Python 3.12 or 3.11" >&2
    exit 1
fi
venv=.venv/py$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
ensure_venv "$venv" "$python"
exec "$venv/bin/python" -m tests.chaos "$@"
