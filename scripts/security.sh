#!/usr/bin/env bash
# The full security suite:  bash scripts/security.sh [pytest args...]
#
# Hostile clients against real uvicorn and daphne processes on loopback (tests/security):
# origins, forged and expired sessions, 2,000 cross-tenant subscribes while 1,000 events
# flow, 10,000 fuzzed frames, access loss, connection caps and rates, a never-reading
# client over 20,000 events. Prints a table per server. About 3 minutes on 2 cores.
# The quick version of the same scenarios runs with the test suite (scripts/test.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${EVENTBUS_PYTHON:-}
if [[ -z $python ]]; then
    for candidate in .venv/py312/bin/python .venv/py311/bin/python; do
        if [[ -x $candidate ]]; then python=$candidate; break; fi
    done
fi
if [[ -z $python ]]; then
    echo "ERROR: no virtualenv; run 'bash scripts/test.sh --co -q' first, or set EVENTBUS_PYTHON" >&2
    exit 1
fi
EVENTBUS_SECURITY_FULL=1 exec "$python" -m pytest tests/security -s -q -p no:cacheprovider "$@"
