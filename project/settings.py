"""The demo site: SQLite and the in-memory channel layer, so it needs no other service."""

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "demo-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_tasks_db",
    "eventbus",
    "project.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"
# daphne's runserver reads WebSocket messages up to 1 MiB by default before eventbus
# refuses those over WS_MAX_FRAME_BYTES (4 KiB): 16 KiB is enough (eventbus.W005).
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = 16 * 1024
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # The demo's tests start a server process on their test database and name it here.
        "NAME": os.environ.get("EVENTBUS_TEST_DB_NAME") or BASE_DIR / "demo.sqlite3",
        # A file, not SQLite's in-memory test database, so such a process can share it.
        "TEST": {
            "NAME": os.path.join(tempfile.gettempdir(), f"eventbus-demo-{os.getpid()}.sqlite3")
        },
        # WAL: the server, the relay and the task worker write at once, and a durable
        # run's claim can skip its fsync safely (eventbus.W011, docs/deployment.md).
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL"},
    }
}

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/live/"

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Durable handlers run on django-tasks-db: tasks are rows in the demo's SQLite database
# and `manage.py db_worker` (started by scripts/demo.sh) runs them; no other service.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

EVENTBUS = {
    "CATALOGS": ["project.events.EVENT_PAYLOAD_MAP"],
    # Who may watch which channel on /ws/events/: project members only.
    "AUTHORIZE": "project.demo.authorization.may_subscribe",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"eventbus": {"handlers": ["console"], "level": "INFO"}},
}
