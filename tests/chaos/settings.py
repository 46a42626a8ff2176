"""Settings of every process a chaos run starts: the test suite's, on PostgreSQL and Redis.

The run passes its database and Redis through the environment (``EVENTBUS_CHAOS_DB``,
``EVENTBUS_CHAOS_REDIS_URL``, or the whole layer as JSON in ``EVENTBUS_CHAOS_LAYER``),
and per-process additions to ``EVENTBUS`` as JSON (``EVENTBUS_CHAOS_EVENTBUS``). The
relay's timings are shortened so that a lease, a sweep and a backoff each take seconds,
not minutes, and never run out of attempts within a run.
"""

import json
import os

from tests.settings import *  # noqa: F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("EVENTBUS_CHAOS_DB", "eventbus_chaos"),
        "USER": os.environ.get("EVENTBUS_PG_USER", "postgres"),
        "HOST": os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("EVENTBUS_PG_PORT", "5432"),
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("EVENTBUS_CHAOS_REDIS_URL", "redis://127.0.0.1:1/0")]},
    }
}
# The failover run (tests/chaos/failover.py) gives the whole layer: Sentinel hosts, shards.
if os.environ.get("EVENTBUS_CHAOS_LAYER"):
    CHANNEL_LAYERS = {"default": json.loads(os.environ["EVENTBUS_CHAOS_LAYER"])}

EVENTBUS = {
    "CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"],
    # Anyone may watch any channel: the suite tests delivery, not access.
    "AUTHORIZE": "tests.chaos.settings.may_subscribe",
    "RELAY_POLL_INTERVAL": 0.2,
    "RELAY_CLAIM_SECONDS": 3.0,
    "RELAY_SWEEP_AFTER": 1.0,
    "RELAY_BACKOFF_BASE": 0.25,
    "RELAY_BACKOFF_MAX": 2.0,
    "RELAY_MAX_ATTEMPTS": 1000,
    "RELAY_BATCH_SIZE": 100,
    **json.loads(os.environ.get("EVENTBUS_CHAOS_EVENTBUS", "{}")),
}

# eventbus's warnings go to stderr, which the run keeps in each process's log file.
LOGGING["loggers"]["eventbus"]["handlers"] = ["stderr"]  # noqa: F405


def may_subscribe(user: object, channel: str) -> bool:
    return True
