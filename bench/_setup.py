"""Django set-up shared by the benchmarks: the test settings, log off unless asked."""

import os


def setup_django(settings: str = "tests.settings") -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings)
    import django

    django.setup()
