#!/usr/bin/env bash
# Runs the demo site:  bash scripts/demo.sh [ADDR:PORT]   (default 127.0.0.1:8000)
#
# Needs no services: the demo uses SQLite and the in-memory channel layer. It keeps its
# own virtualenv in .venv/demo, migrates, creates the demo data and a superuser (their
# credentials are printed), starts the task worker that runs durable handlers
# (django-tasks-db's db_worker, on the same SQLite file) and the relay (retries and the
# sweep of durable runs), then serves HTTP and WebSockets (daphne's runserver is ASGI).
# Events made in the worker reach the live page from the log, within 5 s: the in-memory
# layer does not cross processes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh

if ! python=$(find_python 3.12) && ! python=$(find_python 3.11); then
    echo "ERROR: the demo needs Python 3.12 or 3.11 (python3.12 on PATH, or pyenv)" >&2
    exit 1
fi
ensure_venv .venv/demo "$python"

# Set here as well as in manage.py, so that one exported for the tests cannot leak in.
export DJANGO_SETTINGS_MODULE=project.settings
python=.venv/demo/bin/python
"$python" manage.py migrate --noinput
"$python" manage.py demo_setup
# The worker and the relay stop with the demo (Ctrl-C, or the server exiting).
"$python" manage.py db_worker --no-reload --interval 0.5 &
worker=$!
"$python" manage.py eventbus_relay &
relay=$!
trap 'kill "$worker" "$relay" 2>/dev/null; wait' EXIT INT TERM
"$python" manage.py runserver "${1:-127.0.0.1:8000}"
