"""Pytest plugin with fixtures for tests that claim real services.

Load it with ``pytest_plugins = ["tests.fixtures_services"]`` in ``tests/conftest.py``.
A missing redis-server or Chromium skips the tests that need it on a developer's machine
and fails them in CI (CI=true), where a skip would hide a broken setup.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.services import AsgiServer, RedisServer, in_ci, redis_server_binary

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# Without the background-networking flags Chromium keeps dialling Google's hosts, which
# this network refuses; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test on a developer's machine; fail it in CI, where nothing may be missing."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole session; see ``RedisServer``."""
    if redis_server_binary() is None:
        skip_or_fail("redis-server not installed")
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's redis-server, emptied before each test that uses it."""
    if not redis_server.running:  # a previous test may have stopped it on purpose
        redis_server.start()
    redis_server.flush()
    return redis_server.url


SHARDS = 3


@pytest.fixture(scope="session")
def redis_shards() -> Iterator[list[RedisServer]]:
    """Three private redis-servers, the shards of a layer with several ``hosts``."""
    if redis_server_binary() is None:
        skip_or_fail("redis-server not installed")
    servers = [RedisServer() for _ in range(SHARDS)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def shard_urls(redis_shards: list[RedisServer]) -> list[str]:
    """The shards' URLs, each running (a test may have stopped one) and emptied."""
    for server in redis_shards:
        if not server.running:
            server.start()
        server.flush()
    return [server.url for server in redis_shards]


AsgiServerFactory = Callable[..., AsgiServer]


@pytest.fixture
def asgi_server_factory() -> Iterator[AsgiServerFactory]:
    """Start ASGI server processes: ``factory(app=..., env=None, port=None, server="daphne",
    workers=1)``.

    Each call returns a started ``AsgiServer``. All of them are stopped when the test ends,
    and the logs of the ones started are printed then, which pytest shows for failed tests.
    """
    started: list[AsgiServer] = []

    def factory(
        app: str = "tests.asgi:application",
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        start_timeout: float = 20.0,
        server: str = "daphne",
        workers: int = 1,
    ) -> AsgiServer:
        process = AsgiServer(
            app=app,
            env=env,
            port=port,
            start_timeout=start_timeout,
            server=server,
            workers=workers,
        )
        started.append(process)
        process.start()
        return process

    yield factory
    for server in started:
        try:
            print(f"--- log of ASGI server {server.app} on port {server.port} ---")
            print(server.log_text())
        finally:
            server.close()


@pytest.fixture
def chromium_browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    """A headless Debian Chromium driven by Playwright's sync API, for one test.

    The binary is $EVENTBUS_CHROMIUM (default /usr/bin/chromium); Playwright never downloads
    a browser of its own here. Use it from sync tests only.

    Function scope on purpose (it costs about 0.6 s a test): while Playwright's sync API is
    alive it leaves its event loop marked as running in this thread, so a session-wide
    browser would break every later async test ("Runner.run() cannot be called from a
    running event loop") and every Django ORM call (SynchronousOnlyOperation).
    """
    path = os.environ.get("EVENTBUS_CHROMIUM", "/usr/bin/chromium")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        skip_or_fail(f"chromium not installed at {path}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright not installed")
    # That loop only runs inside Playwright calls, so the test's own ORM calls are safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def chromium_page(chromium_browser: Browser) -> Iterator[Page]:
    """A fresh page in its own browser context (no shared cookies), closed after the test."""
    context = chromium_browser.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def require_postgres() -> None:
    """Skip the calling test unless the default database is PostgreSQL."""
    from django.conf import settings
    from django.db import connection

    if not settings.configured:
        pytest.skip("needs PostgreSQL, and Django is not configured")

    if connection.vendor != "postgresql":
        pytest.skip(f"needs PostgreSQL, the test database is {connection.vendor}")


@pytest.fixture
def postgres_required() -> None:
    """Request it (or mark the test ``postgres``) to skip unless the database is PostgreSQL."""
    require_postgres()


def pytest_runtest_setup(item: pytest.Item) -> None:
    # @pytest.mark.postgres alone is enough: no need to also request postgres_required.
    if item.get_closest_marker("postgres") is not None:
        require_postgres()
