#!/usr/bin/env bash
# Runs the failover suite:  bash scripts/failover.sh [sentinel|shards] [core|pubsub]
#
# Real processes on loopback: PostgreSQL (127.0.0.1:5432 unless EVENTBUS_PG_HOST/PORT/USER
# say otherwise; a database of its own per run, dropped after), uvicorn with two WebSocket
# clients, a subscribe() consumer, a publisher and a relay worker, and per mode:
#   sentinel  a Redis master, a replica and three sentinels; the master is SIGKILLed
#             mid-stream and the sentinels promote the replica;
#   shards    three redis-servers in the layer's hosts; one is SIGKILLed mid-stream and
#             started again, empty, 3 s later.
# Both modes with both channels_redis layers by default (four runs, about 20-35 s each on
# 2 cores); the test suite runs three of them (tests/test_failover.py). Prints a table per
# run (lost, resets, duplicates, order, events during and after the fault per reader),
# writes test-results/failover-<mode>-<layer>.json (logs and records beside it) and exits
# 1 when any reader lost, repeated or reordered an event.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh

if ! python=$(find_python 3.12) && ! python=$(find_python 3.11); then
    echo "ERROR: the failover suite needs Python 3.12 or 3.11" >&2
    exit 1
fi
venv=.venv/py$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
ensure_venv "$venv" "$python"
exec "$venv/bin/python" -m tests.chaos.failover "$@"
