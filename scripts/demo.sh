#!/usr/bin/env bash
# Runs the demo site:  bash scripts/demo.sh [ADDR:PORT]   (default 127.0.0.1:8000)
#
# Needs no services: the demo uses SQLite and the in-memory channel layer. It keeps its
# own virtualenv in .venv/demo, migrates, creates the demo data and a superuser (their
# credentials are printed), then serves HTTP and WebSockets (daphne's runserver is ASGI).
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
exec "$python" manage.py runserver "${1:-127.0.0.1:8000}"
