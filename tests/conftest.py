import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures_services"]


@pytest.fixture(autouse=True, scope="session")
def _close_worker_thread_connections(django_db_setup, django_db_blocker):
    """Async tests reach the database from asgiref's worker thread; close its connection
    before the test database is dropped (PostgreSQL refuses to drop a database in use)."""
    yield
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all, thread_sensitive=True)())


@pytest.fixture
def dispatcher():
    """The process-wide dispatcher with no subscriptions but the test's own."""
    from eventbus import get_event_dispatcher

    with get_event_dispatcher().isolated() as isolated:
        yield isolated


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/demo runs only under the demo's settings, everything else only under ours."""
    demo_settings = os.environ.get("DJANGO_SETTINGS_MODULE") == "project.settings"
    if collection_path.is_dir():
        return None
    in_demo = "demo" in collection_path.relative_to(Path(__file__).parent).parts[:-1]
    return in_demo != demo_settings


@pytest.fixture
def wal():
    """The test database in WAL mode at synchronous FULL, as a project that asks for WAL
    with init_command gets it; back to a rollback journal after."""
    from django.db import connection, connections

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's journal modes")
    connections.close_all()  # a new connection, as when a project's init_command sets WAL
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode = WAL")
        assert cursor.fetchone()[0] == "wal"
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone()[0] == 2  # FULL: SQLite's default, and Django's
    yield
    connections.close_all()
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode = DELETE")
        assert cursor.fetchone()[0] == "delete"
