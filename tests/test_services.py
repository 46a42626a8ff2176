"""The service fixtures start real servers, on loopback only, and clean up after themselves."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio

from tests import services
from tests.fixtures_services import AsgiServerFactory
from tests.services import AsgiServer, RedisServer, ServiceError, free_port, port_accepts

if TYPE_CHECKING:
    from playwright.sync_api import Page

TRIVIAL_APP = "tests.trivial_asgi:application"


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert port != 6379


@pytest.mark.redis
def test_redis_server_answers_stops_and_restarts_on_the_same_port(
    redis_server: RedisServer,  # only for the skip-or-fail when redis-server is missing
) -> None:
    with RedisServer() as server:
        assert server.port not in (6379, redis_server.port)
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        assert client.ping()
        client.set("key", "value")

        server.stop()
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            client.ping()

        port = server.port
        server.start()
        assert server.port == port
        assert client.ping()
        assert client.get("key") is None  # nothing is kept on disk across restarts

        server.kill()  # SIGKILL, as a crash would
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            client.ping()
        server.start()
        assert server.port == port
        assert client.ping()
        client.close()
        data_dir = server.dir
    assert not server.running
    assert not Path(data_dir).exists()


@pytest.mark.redis
@pytest.mark.once  # five redis-server processes
def test_sentinels_promote_the_replica_when_the_master_is_killed(
    redis_server: RedisServer,  # only for the skip-or-fail when redis-server is missing
) -> None:
    from redis.sentinel import Sentinel

    with services.SentinelGroup(replicas=1, sentinels=3) as group:
        host = group.host()
        assert host["master_name"] == services.SENTINEL_MASTER
        assert all(h == "127.0.0.1" and p != 26379 for h, p in host["sentinels"])
        sentinel = Sentinel([tuple(a) for a in host["sentinels"]], socket_timeout=2)
        assert sentinel.discover_master(services.SENTINEL_MASTER)[1] == group.master.port
        master = group.master.client()
        master.set("k", "v")
        assert master.wait(1, 2000) == 1  # the replica has it
        master.close()
        group.master.kill()
        promoted = group.wait_for_failover()
        assert promoted is group.replicas[0]
        assert sentinel.discover_master(services.SENTINEL_MASTER)[1] == promoted.port
        client = promoted.client()
        assert client.get("k") == b"v"
        client.close()
    assert not any(s.running for s in (*group.servers, *group.sentinels))


@pytest.mark.redis
def test_redis_url_is_a_private_server_emptied_before_each_test(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    assert client.dbsize() == 0
    client.set("left-behind", "1")  # the next test using redis_url must not see it
    client.close()
    assert not redis_url.startswith("redis://127.0.0.1:6379")


@pytest.mark.redis
def test_redis_url_is_emptied_for_the_next_test(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    assert client.get("left-behind") is None
    client.close()


def test_asgi_server_serves_http_and_restarts_on_the_same_port(
    asgi_server_factory: AsgiServerFactory,
) -> None:
    server = asgi_server_factory(TRIVIAL_APP, env={"TRIVIAL_ASGI_GREETING": "hi"})
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.ws_url == f"ws://127.0.0.1:{server.port}"
    assert http_get(f"{server.url}/ping") == "hi from /ping"

    port = server.port
    server.restart()
    assert server.port == port
    assert http_get(f"{server.url}/again") == "hi from /again"

    server.stop()
    assert not port_accepts(port)


def test_asgi_server_that_cannot_start_reports_its_log() -> None:
    server = AsgiServer("tests.no_such_module:application", start_timeout=15)
    with pytest.raises(ServiceError, match="No module named 'tests.no_such_module'"):
        server.start()
    server.close()


def test_asgi_server_refuses_a_port_someone_else_holds() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = AsgiServer(TRIVIAL_APP, port=sock.getsockname()[1])
        with pytest.raises(ServiceError, match="already in use"):
            server.start()
        server.close()


def test_asgi_server_moves_to_a_new_port_when_its_first_one_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        picks = iter([taken])  # as if another process bound it right after free_port()
        monkeypatch.setattr(services, "free_port", lambda: next(picks, None) or free_port())
        server = AsgiServer(TRIVIAL_APP)
        assert server.port == taken
        try:
            server.start()
            assert server.port != taken
            assert http_get(f"{server.url}/") == "hello from /"
        finally:
            server.close()


@pytest.mark.browser
def test_chromium_reads_a_data_url(chromium_page: Page) -> None:
    chromium_page.goto("data:text/html,<h1 id=title>eventbus</h1>")
    assert chromium_page.text_content("#title") == "eventbus"


@pytest.mark.browser
def test_sync_django_code_may_run_in_a_browser_test(chromium_page: Page) -> None:
    from django.utils.asyncio import async_unsafe

    # Would raise SynchronousOnlyOperation, as the ORM does, without the fixture's opt-out.
    assert async_unsafe(lambda: "ran")() == "ran"


@pytest.mark.redis
async def test_async_tests_still_run_after_a_browser_test(redis_url: str) -> None:
    # Playwright's sync API marks its loop as running while it lives; it must be gone now.
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=2)
    assert await client.ping()
    await client.aclose()


@pytest.mark.browser
def test_chromium_loads_a_page_from_a_local_asgi_server(
    chromium_page: Page, asgi_server_factory: AsgiServerFactory
) -> None:
    server = asgi_server_factory(TRIVIAL_APP)
    chromium_page.goto(f"{server.url}/page")
    assert chromium_page.text_content("body") == "hello from /page"


@pytest.mark.postgres
def test_postgres_marker_runs_only_on_postgresql() -> None:
    from django.db import connection

    assert connection.vendor == "postgresql"


def test_asgi_server_workers_share_one_port(asgi_server_factory: AsgiServerFactory) -> None:
    """uvicorn --workers 2: ready once both workers loaded the app; both answer on the port."""
    server = asgi_server_factory(TRIVIAL_APP, server="uvicorn", workers=2)
    assert server.log_text().count("Started server process") == 2
    assert http_get(f"{server.url}/ping") == "hello from /ping"
    server.stop()
    assert not port_accepts(server.port)


@pytest.mark.parametrize(("server", "workers"), [("daphne", 2), ("uvicorn", 0)])
def test_asgi_server_refuses_workers_it_cannot_run(server: str, workers: int) -> None:
    with pytest.raises(ValueError, match="workers must be 1, or more with uvicorn"):
        AsgiServer(TRIVIAL_APP, server=server, workers=workers)
