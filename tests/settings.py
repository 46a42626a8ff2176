"""Settings for eventbus's own test suite (not the demo's).

``EVENTBUS_TEST_DB=postgres`` runs against the PostgreSQL server on 127.0.0.1:5432.
"""

import json
import os
import tempfile
from typing import Any

SECRET_KEY = "eventbus-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_tasks_db",
    "django_rq",
    "eventbus",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES: dict[str, dict[str, Any]]
if os.environ.get("EVENTBUS_TEST_DB") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("EVENTBUS_PG_NAME", "test"),
            "USER": os.environ.get("EVENTBUS_PG_USER", "postgres"),
            "HOST": os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("EVENTBUS_PG_PORT", "5432"),
        }
    }
else:
    # A file, not :memory:, so that subprocesses (a publisher killed mid-run, relay
    # workers) can share the test database.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(tempfile.gettempdir(), "eventbus-tests.sqlite3"),
            "TEST": {
                "NAME": os.path.join(tempfile.gettempdir(), f"eventbus-test-{os.getpid()}.sqlite3")
            },
            "OPTIONS": {"timeout": 20},
        }
    }

# EVENTBUS_TEST_PG_POOL=1: psycopg's connection pool (Django 5.1+, psycopg[pool]), as
# docs/deployment.md recommends for ASGI servers on PostgreSQL; small, as the server is
# shared by every process of a run.
if os.environ.get("EVENTBUS_TEST_PG_POOL") and "postgresql" in DATABASES["default"]["ENGINE"]:
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 1, "max_size": 4}}
# A subprocess started by a test points straight at the parent's test database.
if os.environ.get("EVENTBUS_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["EVENTBUS_TEST_DB_NAME"]
# Processes a fault test starts (and SIGKILLs) may skip SQLite's fsyncs: what a killed
# process wrote is in the OS's hands already, so the faults are the same, only faster.
if os.environ.get("EVENTBUS_TEST_SQLITE_NO_FSYNC") and "sqlite3" in DATABASES["default"]["ENGINE"]:
    DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA synchronous=OFF"

# Tests log users in often; the fast hasher keeps that cheap.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

STATIC_URL = "/static/"
ASGI_APPLICATION = "tests.asgi.application"
# End-to-end tests point server processes at the suite's own redis-server.
if os.environ.get("EVENTBUS_TEST_REDIS_URL"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": os.environ.get(
                "EVENTBUS_TEST_LAYER", "channels_redis.core.RedisChannelLayer"
            ),
            "CONFIG": {"hosts": [os.environ["EVENTBUS_TEST_REDIS_URL"]]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Durable handlers' task backend: django-tasks-db (its db_worker needs no service), or
# with EVENTBUS_TEST_RQ_URL, django-tasks-rq on the suite's own redis-server.
if os.environ.get("EVENTBUS_TEST_RQ_URL"):
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}
    RQ_QUEUES = {"default": {"URL": os.environ["EVENTBUS_TEST_RQ_URL"]}}
else:
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    RQ_QUEUES = {"default": {"URL": "redis://127.0.0.1:1/0"}}  # configured, never used

EVENTBUS = {
    "CATALOGS": ["tests.testapp.events.EVENT_PAYLOAD_MAP"],
    "AUTHORIZE": "tests.testapp.authorization.may_subscribe",
    # Subprocesses started by tests may adjust settings through the environment.
    **json.loads(os.environ.get("EVENTBUS_TEST_SETTINGS_OVERRIDE", "{}")),
}

# eventbus logs nowhere, unless a server started by a test or benchmark asks for its
# warnings on stderr (EVENTBUS_TEST_LOG=1), where the server's log file collects them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "null": {"class": "logging.NullHandler"},
        "stderr": {"class": "logging.StreamHandler", "level": "WARNING"},
    },
    "loggers": {
        "eventbus": {
            "handlers": ["stderr" if os.environ.get("EVENTBUS_TEST_LOG") else "null"],
            "level": "DEBUG",
        }
    },
}
