"""A project that installs the built wheel and follows the README's Install section.

The blocks between the README markers are the README's own, word for word: the install
check (tests/install/check.py) compares them.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "install-check-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

# README: INSTALLED_APPS
INSTALLED_APPS = [
    "django.contrib.admin",  # the event log and handler failures
    "django.contrib.auth",  # WebSocket users are the session's users
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # serves eventbus/eventbus.js
    "eventbus",
    "shop",  # your apps: their handlers.py are discovered
]
# README: end

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "mysite.urls"
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
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# README: CHANNEL_LAYERS
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")]},
    }
}
# README: end

# README: EVENTBUS
EVENTBUS = {"CATALOGS": ["shop.events.EVENT_PAYLOAD_MAP"]}
# README: end
