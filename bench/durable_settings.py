"""Settings of bench.durable and of the ``db_worker`` processes it starts.

The test suite's settings (so ``EVENTBUS_TEST_DB`` and ``EVENTBUS_TEST_DB_NAME`` pick the
database, as for every benchmark), plus the bench's catalog, which declares its durable
handler, a second task queue, and no sink: the measured path is the database and the task
worker, not real-time delivery. ``BENCH_CONN_MAX_AGE`` sets the connections' lifetime (seconds;
"none" keeps them for good; unset, Django's default 0 reconnects per task), and
``BENCH_SQLITE_INIT`` the statements each SQLite connection starts with (PRAGMAs).
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, EVENTBUS, TASKS

# bench.durable publishes a backlog to a queue no worker reads, then hands it over.
TASKS = {"default": {**TASKS["default"], "QUEUES": ["default", "bench-held"]}}
EVENTBUS = {
    **EVENTBUS,
    "CATALOGS": [*EVENTBUS["CATALOGS"], "bench.durable_work.CATALOG"],
    "SINK": None,
}

_max_age = os.environ.get("BENCH_CONN_MAX_AGE")
if _max_age is not None:
    DATABASES["default"]["CONN_MAX_AGE"] = None if _max_age == "none" else float(_max_age)

if os.environ.get("BENCH_SQLITE_INIT") and DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["OPTIONS"]["init_command"] = os.environ["BENCH_SQLITE_INIT"]
